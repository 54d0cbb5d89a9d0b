//! An OCI image-layout directory as a repository. (Being written.)

use std::path::{Path, PathBuf};

use super::{ManifestHead, Result};
use crate::oci::{ByteStream, Digest, RawManifest};
use crate::reference::Location;

pub async fn list_repositories(_root: &Path) -> Result<Vec<String>> {
    todo!()
}

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
    pub async fn list_tags(&self) -> Result<Vec<String>> {
        todo!()
    }
    pub async fn resolve(&self, _reference: &str) -> Result<Option<ManifestHead>> {
        todo!()
    }
    pub async fn get_manifest(&self, _reference: &str) -> Result<Option<RawManifest>> {
        todo!()
    }
    pub async fn put_manifest(&self, _reference: &str, _m: &RawManifest) -> Result<()> {
        todo!()
    }
    pub async fn blob_exists(&self, _d: &Digest) -> Result<bool> {
        todo!()
    }
    pub async fn get_blob(&self, _d: &Digest, _size: u64) -> Result<ByteStream> {
        todo!()
    }
    pub async fn put_blob(&self, _d: &Digest, _size: u64, _data: ByteStream) -> Result<()> {
        todo!()
    }
    pub async fn mount_blob(&self, _d: &Digest, _from: &Location) -> Result<bool> {
        todo!()
    }
    pub async fn delete_manifest(&self, _d: &Digest) -> Result<()> {
        todo!()
    }
}
