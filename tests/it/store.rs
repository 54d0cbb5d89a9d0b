//! One test suite for the one transport interface, run against both
//! implementations: a real registry and an OCI image-layout directory.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::StreamExt;
use regkeeper::oci::{ByteStream, Digest, OCI_MANIFEST, RawManifest, Verified};
use regkeeper::reference::Location;
use regkeeper::transport::{RegistryOptions, Store, TransportError, Transports};

use crate::support::*;

fn chunks(data: &[u8]) -> ByteStream {
    let parts: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures_util::stream::iter(parts))
}

async fn read_all(mut s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.expect("blob bytes"));
    }
    out
}

fn pseudo_random(seed: u8, len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9 ^ seed as u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x & 0xff) as u8
        })
        .collect()
}

fn manifest(config: (&Digest, usize), layer: (&Digest, usize)) -> RawManifest {
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.0, "size": layer.1}],
    });
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap());
    RawManifest {
        media_type: OCI_MANIFEST.into(),
        digest: Digest::of(&bytes),
        bytes,
    }
}

/// The contract of `Store`, checked the same way on every implementation.
/// `store` and `sibling` are two repositories of one registry (or two
/// layouts), so mounting can be checked too.
async fn store_contract(store: Store, sibling: Store) {
    assert_eq!(
        store.list_tags().await.unwrap(),
        Vec::<String>::new(),
        "a new repository has no tags"
    );
    assert_eq!(store.resolve("v1").await.unwrap(), None);

    // Blobs: streamed in, streamed out, byte for byte.
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let layer = pseudo_random(1, 700_000);
    let (cd, ld) = (Digest::of(&config), Digest::of(&layer));
    for (d, data) in [(&cd, &config), (&ld, &layer)] {
        assert!(!store.blob_exists(d).await.unwrap());
        store
            .put_blob(d, data.len() as u64, chunks(data))
            .await
            .unwrap();
        assert!(store.blob_exists(d).await.unwrap());
        assert_eq!(
            &read_all(store.get_blob(d, data.len() as u64).await.unwrap()).await,
            data
        );
    }

    // Bytes that do not match their digest are never committed, whether the
    // verifying stream catches it or the store does.
    let wrong = pseudo_random(2, 300_000);
    let claimed = Digest::of(&pseudo_random(3, 300_000));
    let verified: ByteStream = Box::pin(Verified::new(
        chunks(&wrong),
        claimed.clone(),
        Some(300_000),
    ));
    assert!(store.put_blob(&claimed, 300_000, verified).await.is_err());
    assert!(
        store
            .put_blob(&claimed, 300_000, chunks(&wrong))
            .await
            .is_err()
    );
    assert!(
        !store.blob_exists(&claimed).await.unwrap(),
        "a mismatching blob is not visible"
    );

    // Manifests: byte for byte, by tag and by digest.
    let m1 = manifest((&cd, config.len()), (&ld, layer.len()));
    store.put_manifest("v1", &m1).await.unwrap();
    let head = store.resolve("v1").await.unwrap().expect("tag resolves");
    assert_eq!(
        (head.digest.clone(), head.media_type.as_str(), head.size),
        (m1.digest.clone(), OCI_MANIFEST, m1.bytes.len() as u64)
    );
    assert_eq!(
        store.get_manifest("v1").await.unwrap().unwrap().bytes,
        m1.bytes
    );
    assert_eq!(
        store
            .get_manifest(m1.digest.as_str())
            .await
            .unwrap()
            .unwrap()
            .bytes,
        m1.bytes
    );
    assert_eq!(store.list_tags().await.unwrap(), vec!["v1".to_string()]);

    let other_layer = pseudo_random(4, 50_000);
    let od = Digest::of(&other_layer);
    store
        .put_blob(&od, other_layer.len() as u64, chunks(&other_layer))
        .await
        .unwrap();
    let m2 = manifest((&cd, config.len()), (&od, other_layer.len()));
    store.put_manifest(m2.digest.as_str(), &m2).await.unwrap();
    assert_eq!(
        store
            .resolve(m2.digest.as_str())
            .await
            .unwrap()
            .map(|h| h.digest),
        Some(m2.digest.clone())
    );
    assert_eq!(
        store.list_tags().await.unwrap(),
        vec!["v1".to_string()],
        "a push by digest adds no tag"
    );

    // Moving a tag.
    store.put_manifest("v1", &m2).await.unwrap();
    assert_eq!(
        store.resolve("v1").await.unwrap().map(|h| h.digest),
        Some(m2.digest.clone())
    );

    // Mounting into a sibling repository.
    assert!(!sibling.blob_exists(&ld).await.unwrap());
    assert!(
        sibling.mount_blob(&ld, store.location()).await.unwrap(),
        "mount from a sibling"
    );
    assert!(sibling.blob_exists(&ld).await.unwrap());

    // Deleting a manifest removes it and the tags pointing at it.
    store.delete_manifest(&m2.digest).await.unwrap();
    assert_eq!(store.resolve("v1").await.unwrap(), None);
    assert!(
        store
            .get_manifest(m2.digest.as_str())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get_manifest(m1.digest.as_str())
            .await
            .unwrap()
            .is_some(),
        "other manifests stay"
    );
}

async fn read_only_contract(store: Store) {
    let data = b"read only".to_vec();
    let d = Digest::of(&data);
    let err = store
        .put_blob(&d, data.len() as u64, chunks(&data))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::ReadOnly { .. }), "{err}");
    let m = manifest((&d, data.len()), (&d, data.len()));
    assert!(matches!(
        store.put_manifest("x", &m).await.unwrap_err(),
        TransportError::ReadOnly { .. }
    ));
    assert!(matches!(
        store.delete_manifest(&m.digest).await.unwrap_err(),
        TransportError::ReadOnly { .. }
    ));
}

fn registry_transports(reg: &Registry, read_only: bool) -> Transports {
    init_crypto();
    let opts = RegistryOptions {
        plain_http: true,
        ..Default::default()
    };
    Transports::new(HashMap::from([(reg.host(), opts)]), read_only)
}

#[tokio::test]
async fn registry_store_contract() {
    let reg = Registry::start_plain();
    let t = registry_transports(&reg, false);
    let open = |repo: &str| {
        t.open(&Location::Registry {
            host: reg.host(),
            repo: repo.into(),
        })
        .unwrap()
    };
    store_contract(open("contract/one"), open("contract/two")).await;

    let ro = registry_transports(&reg, true);
    let mark = reg.mark();
    read_only_contract(
        ro.open(&Location::Registry {
            host: reg.host(),
            repo: "contract/ro".into(),
        })
        .unwrap(),
    )
    .await;
    assert_eq!(
        reg.requests_since(mark),
        vec![],
        "refused before anything is sent"
    );
}

#[tokio::test]
async fn layout_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let t = Transports::new(HashMap::new(), false);
    let open = |name: &str| {
        t.open(&Location::Layout {
            path: dir.path().join(name),
        })
        .unwrap()
    };
    store_contract(open("one"), open("two")).await;

    let ro = Transports::new(HashMap::new(), true);
    read_only_contract(
        ro.open(&Location::Layout {
            path: dir.path().join("ro"),
        })
        .unwrap(),
    )
    .await;
    assert!(
        !dir.path().join("ro").exists(),
        "refused before anything is written"
    );
}
