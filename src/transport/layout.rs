//! An OCI image-layout directory as a repository.
//!
//! One directory is one repository: `oci-layout`, `index.json` and
//! `blobs/sha256/<hex>`. Manifests and blobs share `blobs/`; a tag is an entry
//! of `index.json` whose `org.opencontainers.image.ref.name` annotation is the
//! tag. Layouts written by skopeo (`oci:DIR:TAG`) and umoci store the bare tag
//! there too, so the annotation is taken as the tag as is when it is a tag of
//! the distribution grammar; any other ref name (`alpine:3.19`, a path) is
//! skipped by the inventory and refused here (`parse_ref`).
//!
//! Crash safety: every file is written under a temporary name in its final
//! directory, fsynced, then renamed into place, so a reader (or a later run)
//! sees either the old or the new complete file, never a partial one. That is
//! also why [`LayoutRepo::blob_exists`] can trust a file's presence.
//!
//! Concurrency: tasks of one process may write the same layout at once. Blob
//! writes need no coordination (unique temporary names, identical content under
//! one final name); the read-modify-write of `index.json` is serialized by an
//! async lock keyed by the layout's canonical path. Two *processes* writing the
//! same layout at once are not supported: the lock is process-local, and one
//! process's index update could silently drop the other's.
//!
//! What is where: `index.rs` is `index.json` (tags as annotations, its lock,
//! creating the layout skeleton); `blobs.rs` reads, writes (size and digest
//! checked) and mounts blobs; `manifests.rs` is the manifest operations of a
//! `Store` (by tag or digest); `atomic.rs` is the temporary-file-and-rename
//! write and the shared I/O error helpers; `entries.rs` the entries
//! without a ref name (untagged entry points, referrers by subject);
//! `discover.rs` finds the layouts under a directory; `sweep.rs` removes
//! temporary files a killed writer left. This file holds the repository type and what they all
//! share.

use std::path::{Path, PathBuf};

use super::{Result, TransportError};
use crate::reference::Location;

mod atomic;
mod blobs;
mod confine;
mod discover;
mod entries;
mod index;
mod manifests;
mod sweep;
#[cfg(test)]
mod tests;

pub(crate) use confine::confined;
pub use discover::list_repositories;
pub use sweep::{Owner, sweep_temp_files};

const OCI_LAYOUT_FILE: &str = "oci-layout";
const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

#[derive(Clone, Debug)]
pub struct LayoutRepo {
    location: Location,
    root: PathBuf,
    read_only: bool,
}

impl LayoutRepo {
    pub fn new(root: &Path, read_only: bool) -> Self {
        LayoutRepo {
            location: Location::Layout {
                path: root.to_path_buf(),
            },
            root: root.to_path_buf(),
            read_only,
        }
    }
    pub fn location(&self) -> &Location {
        &self.location
    }

    fn protocol(&self, detail: impl Into<String>) -> TransportError {
        TransportError::Protocol {
            location: self.location.to_string(),
            detail: detail.into(),
        }
    }
    fn integrity(&self, what: impl Into<String>, detail: impl Into<String>) -> TransportError {
        TransportError::Integrity {
            location: self.location.to_string(),
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// Refuses a write in a read-only run, before anything touches the disk.
    fn check_writable(&self, method: &str, path: impl Into<String>) -> Result<()> {
        if self.read_only {
            return Err(TransportError::ReadOnly {
                registry: self.root.display().to_string(),
                method: method.to_string(),
                path: path.into(),
            });
        }
        Ok(())
    }
}
