//! Blobs under `blobs/sha256/<hex>`: streaming reads, writes that check size
//! and digest before the rename into place, and mounts from another layout
//! (a hard link, or a verified copy across filesystems).

use std::io;
use std::path::PathBuf;

use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio_util::io::ReaderStream;

use super::super::{Result, TransportError};
use super::LayoutRepo;
use super::atomic::{TempFile, io_err, is_absent, sync_dir, temp_suffix};
use crate::oci::{ByteStream, Digest};
use crate::reference::Location;

/// Read/write buffer for blob streams: large enough that the per-operation
/// cost of tokio's blocking-pool file I/O is negligible, small enough to keep
/// many parallel copies cheap.
const IO_BUFFER: usize = 256 * 1024;

impl LayoutRepo {
    pub(super) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }
    pub(super) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }

    pub async fn blob_exists(&self, d: &Digest) -> Result<bool> {
        let path = self.blob_path(d);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(m.is_file()),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The size of the blob's file; `None` when there is none.
    pub async fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(d);
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    pub async fn get_blob(&self, d: &Digest, _size: u64) -> Result<ByteStream> {
        let path = self.blob_path(d);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if is_absent(&e) => {
                return Err(TransportError::NotFound {
                    location: self.location.to_string(),
                    what: format!("blob {d}"),
                });
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        // Read errors name the file: the consumer only sees an io::Error.
        let stream = ReaderStream::with_capacity(file, IO_BUFFER).map(move |r| {
            r.map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))
        });
        Ok(Box::pin(stream))
    }

    pub async fn put_blob(&self, d: &Digest, size: u64, mut data: ByteStream) -> Result<()> {
        self.check_writable("write", format!("blobs/sha256/{}", d.hex()))?;
        let path = self.blob_path(d);
        if self.blob_exists(d).await? {
            return Ok(());
        }
        self.ensure_layout().await?;
        let dir = self.blobs_dir();
        let mut tmp = TempFile::new(dir.join(format!(".tmp-{}-{}", d.hex(), temp_suffix())));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp.path)
            .await
            .map_err(io_err(&tmp.path))?;
        let mut out = BufWriter::with_capacity(IO_BUFFER, file);
        let mut hasher = Sha256::new();
        let mut seen: u64 = 0;
        // On every early return below, `tmp` is dropped armed and removes the
        // partial file.
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| TransportError::Io {
                path: path.clone(),
                source: io::Error::new(e.kind(), format!("source of blob {d} failed: {e}")),
            })?;
            seen += chunk.len() as u64;
            if seen > size {
                return Err(self.integrity(
                    format!("blob {d}"),
                    format!("more than the expected {size} bytes"),
                ));
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(io_err(&tmp.path))?;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != d.as_str() {
            return Err(self.integrity(
                format!("blob {d}"),
                format!("received content has digest {actual}"),
            ));
        }
        if seen != size {
            return Err(self.integrity(
                format!("blob {d}"),
                format!("received {seen} bytes, expected {size}"),
            ));
        }
        out.flush().await.map_err(io_err(&tmp.path))?;
        let file = out.into_inner();
        file.sync_all().await.map_err(io_err(&tmp.path))?;
        drop(file);
        tokio::fs::rename(&tmp.path, &path)
            .await
            .map_err(io_err(&path))?;
        tmp.disarm();
        sync_dir(&dir).await;
        Ok(())
    }

    pub async fn mount_blob(&self, d: &Digest, from: &Location) -> Result<bool> {
        self.check_writable("link", format!("blobs/sha256/{}", d.hex()))?;
        let Location::Layout { path: from_root } = from else {
            return Ok(false);
        };
        let source = LayoutRepo::new(from_root, true);
        let src_path = source.blob_path(d);
        let src_size = match tokio::fs::metadata(&src_path).await {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Ok(false),
            Err(e) if is_absent(&e) => return Ok(false),
            Err(e) => return Err(io_err(&src_path)(e)),
        };
        if self.blob_exists(d).await? {
            return Ok(true);
        }
        self.ensure_layout().await?;
        let dest = self.blob_path(d);
        // The source file is complete (only ever renamed into place), so a
        // link straight to the final name is as atomic as a rename.
        match tokio::fs::hard_link(&src_path, &dest).await {
            Ok(()) => {
                sync_dir(&self.blobs_dir()).await;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(true),
            Err(e) => {
                // Another filesystem, or one without hard links: copy, and
                // verify on the way since the bytes pass through anyway.
                tracing::debug!(from = %src_path.display(), to = %dest.display(), error = %e, "hard link failed, copying");
                let stream = source.get_blob(d, src_size).await?;
                self.put_blob(d, src_size, stream).await?;
                Ok(true)
            }
        }
    }
}
