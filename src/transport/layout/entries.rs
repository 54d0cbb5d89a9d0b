//! `index.json` entries without a ref name: the untagged top-level
//! manifests other tools leave in a layout (oc-mirror, imgutil,
//! go-containerregistry, sylabs), and the referrers oras, notation and
//! regclient store there (an entry whose manifest has a `subject`). Read as
//! entry points and referrers; written the way those tools write them.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::super::Result;
use super::LayoutRepo;
use super::atomic::write_atomic;
use super::index::{entry_digest, entry_tag, manifests, manifests_mut};
use crate::oci::{Digest, Manifest, RawManifest, is_index};

/// Most manifests read while looking for referrers by subject in one
/// layout (each at most a few KiB; a layout listing more is read that far).
const MAX_SCANNED: usize = 10_000;

impl LayoutRepo {
    /// The descriptors of `index.json`'s entries that carry no ref name, in
    /// their order, each digest once (tagged digests excluded: they are
    /// copied under their tags).
    pub async fn untagged_entries(&self) -> Result<Vec<Value>> {
        let Some(index) = self.read_index().await? else {
            return Ok(Vec::new());
        };
        let list = manifests(&index);
        let tagged: Vec<&str> = list
            .iter()
            .filter(|e| entry_tag(e).is_some())
            .filter_map(entry_digest)
            .collect();
        let mut seen = std::collections::HashSet::new();
        Ok(list
            .iter()
            .filter(|e| entry_tag(e).is_none())
            .filter(|e| entry_digest(e).is_some_and(|d| !tagged.contains(&d)))
            .filter(|e| seen.insert(entry_digest(e).map(str::to_string)))
            .cloned()
            .collect())
    }

    /// Whether `index.json` lists `d` at its top level (tagged or not).
    pub async fn has_entry(&self, d: &Digest) -> Result<bool> {
        let Some(index) = self.read_index().await? else {
            return Ok(false);
        };
        Ok(manifests(&index)
            .iter()
            .any(|e| entry_digest(e) == Some(d.as_str())))
    }

    /// A fallback index (`sha256-<hex>`) just tagged here: the referrers
    /// it lists that this layout holds are listed in `index.json` too,
    /// untagged, the way oras and regclient keep referrers in a layout.
    pub(super) async fn list_fallback_entries(&self, tag: &str, m: &RawManifest) -> Result<()> {
        let fallback = tag.len() == 71
            && tag.starts_with("sha256-")
            && tag[7..].bytes().all(|b| b.is_ascii_hexdigit());
        if !fallback || !is_index(&m.media_type) {
            return Ok(());
        }
        let Ok(Value::Object(index)) = serde_json::from_slice::<Value>(&m.bytes) else {
            return Ok(());
        };
        for entry in manifests(&index) {
            let Some(d) = entry_digest(entry).and_then(|d| Digest::parse(d).ok()) else {
                continue;
            };
            if let Ok(Some(raw)) = self.get_manifest(d.as_str()).await {
                self.list_untagged(&raw, entry).await?;
            }
        }
        Ok(())
    }

    /// Stores `m` and lists it in `index.json` without a ref name, under
    /// `descriptor` (its media type, digest and size, with the
    /// `artifactType` and annotations a referrers list gives it, as oras
    /// writes them); nothing is added when an entry for it is there.
    pub async fn put_entry(&self, m: &RawManifest, descriptor: &Value) -> Result<()> {
        self.put_manifest(m.digest.as_str(), m).await?;
        self.list_untagged(m, descriptor).await
    }

    /// Lists the stored `m` in `index.json` without a ref name (see
    /// [`LayoutRepo::put_entry`]).
    async fn list_untagged(&self, m: &RawManifest, descriptor: &Value) -> Result<()> {
        let mut entry = Map::new();
        entry.insert("mediaType".into(), m.media_type.clone().into());
        entry.insert("digest".into(), m.digest.as_str().into());
        entry.insert("size".into(), m.bytes.len().into());
        for key in ["artifactType", "annotations", "platform"] {
            if let Some(v) = descriptor.get(key).filter(|v| !v.is_null()) {
                entry.insert(key.into(), v.clone());
            }
        }
        if let Some(a) = entry.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove(super::index::REF_NAME);
        }
        let _guard = self.lock_index().await?;
        let mut index = self.read_index().await?.unwrap_or_default();
        let list = manifests_mut(&mut index);
        if list
            .iter()
            .any(|e| entry_digest(e) == Some(m.digest.as_str()))
        {
            return Ok(());
        }
        list.push(Value::Object(entry));
        index
            .entry("schemaVersion")
            .or_insert_with(|| Value::from(2));
        let bytes = serde_json::to_vec(&index).expect("a JSON value always serializes");
        write_atomic(&self.index_path(), &bytes).await?;
        tracing::debug!(layout = %self.root.display(), digest = %m.digest, "listed untagged");
        Ok(())
    }

    /// The referrers this layout lists in `index.json` (at its top level,
    /// or inside an index listed there), by subject: manifests with a
    /// `subject`, as referrers-list descriptors (media type, digest, size,
    /// `artifactType`, annotations). One scan for the whole layout.
    pub async fn referrers_by_subject(&self) -> Result<HashMap<Digest, Vec<Value>>> {
        let Some(index) = self.read_index().await? else {
            return Ok(HashMap::new());
        };
        let mut queue: Vec<Digest> = manifests(&index)
            .iter()
            .filter_map(entry_digest)
            .filter_map(|d| Digest::parse(d).ok())
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut out: HashMap<Digest, Vec<Value>> = HashMap::new();
        let mut scanned = 0;
        while let Some(d) = queue.pop() {
            if !seen.insert(d.clone()) || scanned >= MAX_SCANNED {
                continue;
            }
            scanned += 1;
            let Ok(Some(raw)) = self.get_manifest(d.as_str()).await else {
                continue; // not a manifest this layout holds whole: no referrer
            };
            let Ok((media, m)) = Manifest::parse(&raw.media_type, &raw.bytes) else {
                continue;
            };
            if let Manifest::Index { manifests, .. } = &m {
                queue.extend(manifests.iter().map(|c| c.digest.clone()));
            }
            if let Some(subject) = m.subject() {
                let list = out.entry(subject.digest.clone()).or_default();
                list.push(referrer_descriptor(&raw, &media, &m));
            }
        }
        for list in out.values_mut() {
            list.sort_by(|a, b| entry_digest(a).cmp(&entry_digest(b)));
        }
        Ok(out)
    }
}

/// A referrer as the referrers API lists it: `artifactType` is the
/// manifest's own, else (an image manifest) its config's media type.
fn referrer_descriptor(raw: &RawManifest, media: &str, m: &Manifest) -> Value {
    let body: Value = serde_json::from_slice(&raw.bytes).unwrap_or(Value::Null);
    let artifact_type = body
        .get("artifactType")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| match m {
            Manifest::Image { config, .. } if !is_index(media) => Some(config.media_type.clone()),
            _ => None,
        });
    let mut d = serde_json::json!({
        "mediaType": media,
        "digest": raw.digest.as_str(),
        "size": raw.bytes.len(),
    });
    if let Some(t) = artifact_type {
        d["artifactType"] = t.into();
    }
    if let Some(a) = body.get("annotations").filter(|a| a.is_object()) {
        d["annotations"] = a.clone();
    }
    d
}
