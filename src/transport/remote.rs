//! A repository in a registry, over HTTP(S). (Being written.)

use std::sync::Arc;

use super::{ManifestHead, RegistryOptions, Result};
use crate::oci::{ByteStream, Digest, RawManifest};
use crate::reference::Location;

#[derive(Debug)]
pub struct Registry {
    host: String,
}

impl Registry {
    pub fn new(host: &str, _opts: &RegistryOptions, _read_only: bool) -> Result<Self> {
        Ok(Registry {
            host: host.to_string(),
        })
    }
    pub async fn list_repositories(&self, _prefix: &str) -> Result<Vec<String>> {
        todo!()
    }
}

#[derive(Clone, Debug)]
pub struct RemoteRepo {
    registry: Arc<Registry>,
    location: Location,
}

impl RemoteRepo {
    pub fn new(registry: Arc<Registry>, repo: &str) -> Self {
        let location = Location::Registry {
            host: registry.host.clone(),
            repo: repo.to_string(),
        };
        RemoteRepo { registry, location }
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
