//! The closing table of issue 22 (ignored by default: a report, not a check).

use serde_json::json;

use super::*;

/// The closing table of issue 22: one layout per shape mirrored to a
/// registry (and to a layout), the outcome per shape printed as a row. Run
/// with `REGKEEPER_TEST_BIN` set to an older build for the "before" column:
/// `cargo test --test integration shape_table -- --ignored --nocapture`.
#[test]
#[ignore]
fn shape_table() {
    let reg = Registry::start_plain();
    let mut rows = Vec::new();
    let mut run = |name: &str,
                   w: &World,
                   extra: &str,
                   check: &dyn Fn(&Registry, &str, &Path, &str) -> bool| {
        let dir = tempfile::tempdir().unwrap();
        let repo = format!("t/{}", rows.len());
        let out_dir = dir.path().join("out");
        let targets = [
            format!("{}/{repo}", reg.host()),
            format!("oci:{}", out_dir.display()),
        ];
        let cfg = rule(
            dir.path(),
            &[&reg],
            &format!("oci:{}", w.dir().display()),
            &targets,
            extra,
        );
        let out = regkeeper(dir.path(), &cfg, &["sync", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let ok = check(&reg, &repo, &out_dir, &text);
        rows.push(format!(
            "| {name} | exit {:?} | {} |",
            out.status.code(),
            if ok { "as it should" } else { "WRONG" }
        ));
    };
    let present = |reg: &Registry, repo: &str, d: &str| get(reg, repo, d).status == 200;

    let mut w = World::new();
    let a = w.image("n-a", "linux", "amd64");
    let inner = w.index(vec![on(&a.descriptor, "linux", "amd64")], true);
    let outer = w.index(vec![desc(&inner)], true);
    w.entry(desc(&outer), Some("v"));
    let (o, i) = (outer.digest.clone(), inner.digest.clone());
    run(
        "nested index (regclient, ggcr, buildx)",
        &w,
        "",
        &|r, repo, _, _| present(r, repo, &o) && present(r, repo, &i),
    );

    let mut w = World::new();
    let d = w.docker_image("dk");
    w.entry(
        json!({"mediaType": MT_MANIFEST, "digest": d.digest, "size": d.size}),
        Some("v"),
    );
    let dd = d.digest.clone();
    run(
        "Docker body under an OCI descriptor (ggcr fixtures)",
        &w,
        "",
        &|r, repo, _, _| present(r, repo, &dd),
    );

    let mut w = World::new();
    let u = w.image("un", "linux", "amd64");
    w.entry(desc(&u.descriptor), None);
    let ud = u.digest.clone();
    run(
        "untagged image entry (oc-mirror, imgutil, sylabs)",
        &w,
        "",
        &|r, repo, out, _| present(r, repo, &ud) && entry_of(&index_json(out), &ud).is_some(),
    );

    let mut w = World::new();
    let c = w.image("ui", "linux", "amd64");
    let ix = w.index(vec![on(&c.descriptor, "linux", "amd64")], false);
    w.entry(desc(&ix), None);
    let xd = ix.digest.clone();
    run(
        "untagged index without mediaType",
        &w,
        "",
        &|r, repo, _, _| present(r, repo, &xd),
    );

    let mut w = World::new();
    let t = w.image("sg", "linux", "amd64");
    w.entry(desc(&t.descriptor), Some("v"));
    let sig = w.notation_signature(&t.descriptor, "x");
    let e = w.referrer_entry(&sig);
    w.entry(e, None);
    let sd = sig.digest.clone();
    run(
        "notation signature as an untagged entry with subject (oras-go store)",
        &w,
        "",
        &|r, repo, out, _| present(r, repo, &sd) && entry_of(&index_json(out), &sd).is_some(),
    );

    let mut w = World::new();
    let g = w.image("ef", "linux", "amd64");
    w.entry(desc(&g.descriptor), Some("v"));
    let empty = w.corpus.write_blob(
        MT_INDEX,
        format!(r#"{{"schemaVersion":2,"mediaType":"{MT_INDEX}","manifests":null}}"#).as_bytes(),
    );
    w.entry(desc(&empty), Some(&format!("sha256-{}", &g.digest[7..])));
    let gd = g.digest.clone();
    run(
        "emptied fallback index (manifests null)",
        &w,
        "",
        &|r, repo, _, text| present(r, repo, &gd) && !text.contains("\"errors\": [\n        {"),
    );

    let mut w = World::new();
    let g = w.image("cs", "linux", "amd64");
    w.entry(desc(&g.descriptor), Some("v"));
    let s = w.image("cs2", "linux", "amd64");
    w.entry(
        desc(&s.descriptor),
        Some(&format!("_cosign:sha256-{}.sig", &g.digest[7..])),
    );
    let gd = g.digest.clone();
    run(
        "ref name that is no tag (sylabs _cosign:…)",
        &w,
        "",
        &|r, repo, _, text| present(r, repo, &gd) && text.contains("_cosign"),
    );

    let mut w = World::new();
    let sh = w.short_config_image("sz");
    w.entry(desc(&sh), Some("v"));
    run(
        "config 1 byte short of its descriptor",
        &w,
        "",
        &|r, repo, _, _| get(r, repo, "v").status == 404,
    );

    let mut w = World::new();
    let d1 = w.image("d1", "linux", "amd64");
    let d2 = w.image("d2", "linux", "amd64");
    w.entry(desc(&d1.descriptor), Some("v"));
    w.entry(desc(&d2.descriptor), Some("v"));
    run(
        "two entries with the same ref name",
        &w,
        "",
        &|r, repo, _, text| get(r, repo, "v").status == 404 && text.contains("twice"),
    );

    let mut w = World::new();
    let v1 = w.corpus.write_blob(
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        br#"{"schemaVersion":1,"name":"a","tag":"v","fsLayers":[]}"#,
    );
    w.entry(desc(&v1), Some("v"));
    run("Docker schema 1", &w, "", &|_, _, _, text| {
        text.contains("schema 1") && text.contains("re-push")
    });

    let mut w = World::new();
    let (img, base, _) = w.foreign_image("fl");
    w.entry(desc(&img), Some("v"));
    let bd = base.digest.clone();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let cfg = rule(
        dir.path(),
        &[&reg],
        &format!("oci:{}", w.dir().display()),
        &[format!("oci:{}", out_dir.display())],
        "",
    );
    let out = regkeeper(dir.path(), &cfg, &["sync"]);
    let ok = out.status.code() == Some(0) && !out_dir.join("blobs/sha256").join(&bd[7..]).exists();
    let foreign_row = format!(
        "| foreign layer, layout target | exit {:?} | {} |",
        out.status.code(),
        if ok { "as it should" } else { "WRONG" }
    );

    let mut w = World::new();
    let amd = w.image("pl", "linux", "amd64");
    w.entry(desc(&amd.descriptor), Some("v"));
    run(
        "single-platform image of another platform",
        &w,
        "platforms = [\"linux/arm64\"]\n",
        &|r, repo, _, text| get(r, repo, "v").status == 404 && text.contains("linux/amd64"),
    );

    rows.push(foreign_row);
    eprintln!("SHAPES\n{}", rows.join("\n"));
}
