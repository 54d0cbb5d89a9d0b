//! Referrers pushed by digest (OCI 1.1) are not tagged, so a tag reading
//! does not see them. At a target with the referrers API they are read
//! through it, recursively, into the reading's manifests: their `subject`
//! then ties them to their image exactly like a tag-schema referrer (kept
//! with a kept subject; deleted before a deleted one). Where there is no
//! API (the first answer says so, and the registry remembers it for the
//! run) this costs one request.

use std::collections::HashMap;

use super::error::ReadError;
use super::facts::FactReader;
use crate::oci::Digest;
use crate::retention::ManifestInfo;
use crate::transport::Store;

/// Adds the referrers of every manifest in `manifests` (and theirs) that the
/// target's referrers API lists. A failure leaves the reading incomplete
/// (an error: nothing is deleted), never silently short.
pub(super) async fn read_api_referrers(
    store: &Store,
    facts: &FactReader<'_>,
    manifests: &mut HashMap<Digest, ManifestInfo>,
) -> Result<(), ReadError> {
    let mut frontier: Vec<Digest> = manifests.keys().cloned().collect();
    frontier.sort();
    while let Some(subject) = frontier.pop() {
        let Some(list) = store.referrers(&subject, None).await? else {
            return Ok(()); // no API: the tag reading is the whole picture
        };
        for entry in list {
            let Some(d) = entry
                .get("digest")
                .and_then(|d| d.as_str())
                .and_then(|d| Digest::parse(d).ok())
            else {
                continue;
            };
            if manifests.contains_key(&d) {
                continue;
            }
            let info = facts.info_if_present(&d).await?.ok_or_else(|| {
                ReadError::Inconsistent(format!("referrer {d} of {subject} is listed but absent"))
            })?;
            manifests.insert(d.clone(), info);
            frontier.push(d);
        }
    }
    Ok(())
}
