//! Names from the source (tag lists, the catalog, layout ref names) never
//! reach a URL path or a file path unvalidated: a hostile source cannot
//! re-point tags in other repositories of the target, nor write outside its
//! rule's repositories or an `oci:` directory.

use super::common::*;

#[test]
fn a_tag_that_climbs_out_of_its_repository_is_skipped_and_the_rest_copied() {
    let scene = Scene::new(|s| {
        if s.path() == "/v2/app/tags/list" {
            return tag_page(
                "app",
                &[
                    "v1",
                    "../../../victim/app/manifests/prod",
                    "%2e%2e/%2e%2e/%2e%2e/victim/app/manifests/prod2",
                    "v1?x=1",
                    "v1#frag",
                    "sp ace",
                    &"a".repeat(300),
                ],
            );
        }
        // whatever tag is asked for, anywhere, the source answers with v1
        if s.path().contains("/manifests/") && !s.path().contains("/manifests/sha256:") {
            return Reply::ForwardTo("/v2/app/manifests/v1".into());
        }
        Reply::Forward
    });
    let config = scene.config(
        "",
        &scene.rule("app", &format!("{}/mirror/app", scene.dst.host())),
    );
    let m = scene.run(&config, &["sync"], std::time::Duration::from_secs(60));
    let requests = scene.hostile.records().len();
    figures("tag escape", &m, requests, "");
    scene.assert_victim_untouched();
    assert_eq!(m.code, Some(0), "invalid names are skipped, not failures");
    for bad in ["../../../victim/app/manifests/prod", "v1?x=1", "sp ace"] {
        assert!(
            m.stderr.contains(bad) || m.stdout.contains(bad),
            "a warning names {bad:?}"
        );
    }
    assert_eq!(scene.dst.list_tags("mirror/app"), vec!["v1".to_string()]);
    assert_eq!(
        scene.target_repositories(),
        vec!["mirror/app".to_string(), "victim/app".to_string()]
    );
}

/// Answers every repository the way the real `app` does: its tag list
/// (`v1`), its manifests and blobs; the catalog lists `catalog`.
fn every_repo_is_app(catalog: Vec<String>) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    move |s: &Seen| {
        let path = s.path();
        if path == "/v2/_catalog" {
            return Reply::Respond(Canned::json(
                200,
                &serde_json::json!({ "repositories": catalog }),
            ));
        }
        if let Some(name) = path
            .strip_prefix("/v2/")
            .and_then(|p| p.strip_suffix("/tags/list"))
        {
            return tag_page(name, &["v1"]);
        }
        for kind in ["/manifests/", "/blobs/"] {
            if let Some((_, rest)) = path.split_once(kind) {
                return Reply::ForwardTo(format!("/v2/app{kind}{rest}"));
            }
        }
        Reply::Forward
    }
}

/// Every request the source received went to one of `allowed` (path
/// prefixes) or the catalog: no invalid name reached a request path.
fn only_asked_about(scene: &Scene, allowed: &[&str]) {
    for seen in scene.hostile.records() {
        let p = seen.path();
        assert!(
            p == "/v2/" || p == "/v2/_catalog" || allowed.iter().any(|a| p.starts_with(a)),
            "the source was asked for {:?}",
            seen.target
        );
    }
}

/// Every request the target received since `mark` (but `/v2/`) was about
/// `mirror/app`.
fn assert_only_mirror_app(scene: &Scene, mark: Mark) {
    let elsewhere: Vec<String> = scene
        .dst
        .requests_since(mark)
        .into_iter()
        .filter(|r| r.path != "/v2/" && !r.path.starts_with("/v2/mirror/app/"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(elsewhere.is_empty(), "the target was sent {elsewhere:?}");
}

/// Every file and directory under `root`, relative, without following
/// symlinks (a symlink is listed, not entered).
fn tree(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                pending.push(e.path());
            }
            out.push(rel);
        }
    }
    out.sort();
    out
}

/// The ref names of a layout's index.json, sorted.
fn ref_names(layout: &std::path::Path) -> Vec<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index.json is JSON");
    let mut names: Vec<String> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

fn json_rule(m: &Measured) -> serde_json::Value {
    let doc: serde_json::Value = serde_json::from_str(&m.stdout)
        .unwrap_or_else(|e| panic!("--json output is JSON ({e}): {}", m.stdout));
    doc["rules"][0].clone()
}

#[test]
fn catalog_names_that_leave_the_prefix_are_skipped_in_plan_and_sync() {
    let long = format!("team/{}", "a".repeat(300));
    let catalog: Vec<String> = [
        "team/app",
        "team/../victim/app",
        "team/%2e%2e/victim/app",
        "team/%2E%2E/%2e%2e/victim/app",
        "team/ok/../../victim/app",
        "team//etc/x",
        "team/Upper",
        "victim/app",
        "teamx/app",
        long.as_str(),
    ]
    .map(String::from)
    .to_vec();
    let scene = Scene::new(every_repo_is_app(catalog));
    let config = scene.config(
        "",
        &scene.rule("team/*", &format!("{}/mirror/*", scene.dst.host())),
    );
    let deadline = std::time::Duration::from_secs(60);
    let mark = scene.dst.mark();
    let plan = scene.run(&config, &["plan", "--json"], deadline);
    let m = scene.run(&config, &["sync", "--json"], deadline);
    assert_only_mirror_app(&scene, mark);
    figures(
        "catalog escape to a registry",
        &m,
        scene.hostile.records().len(),
        "",
    );
    scene.assert_victim_untouched();
    assert_eq!(
        scene.target_repositories(),
        vec!["mirror/app".to_string(), "victim/app".to_string()]
    );
    assert_eq!(m.code, Some(0), "invalid names are skipped, not failures");
    only_asked_about(&scene, &["/v2/team/app/"]);
    let (planned, synced) = (json_rule(&plan), json_rule(&m));
    assert_eq!(plan.code, Some(0));
    assert_eq!(
        planned["warnings"], synced["warnings"],
        "plan warns as sync"
    );
    assert_eq!(planned["names_skipped"], synced["names_skipped"]);
    assert_eq!(synced["names_skipped"], 7, "{synced}");
    let warnings = synced["warnings"].to_string();
    for bad in [
        "../victim/app",
        "%2e%2e/victim/app",
        "ok/../../victim/app",
        "Upper",
    ] {
        assert!(
            warnings.contains(bad),
            "a warning names {bad:?}: {warnings}"
        );
    }
    assert_eq!(
        synced["copies"].as_array().map(Vec::len),
        Some(1),
        "{synced}"
    );
}

#[test]
fn catalog_names_never_write_outside_an_oci_target_directory() {
    let root = tempfile::tempdir().unwrap();
    let (layouts, outside) = (root.path().join("layouts"), root.path().join("outside"));
    std::fs::create_dir_all(&layouts).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    // planted inside the target directory, pointing out of it
    std::os::unix::fs::symlink(&outside, layouts.join("evil")).unwrap();
    let absolute = outside.join("abs").display().to_string();
    let catalog: Vec<String> = [
        "app",
        "../outside/x",
        "%2e%2e/outside/y",
        "app/../../outside/z",
        absolute.as_str(),
        "evil/app",
        "Upper",
        &"a".repeat(300),
    ]
    .map(String::from)
    .to_vec();
    let scene = Scene::new(every_repo_is_app(catalog));
    let config = scene.config(
        "",
        &scene.rule("*", &format!("oci:{}/*", layouts.display())),
    );
    let m = scene.run(&config, &["sync"], std::time::Duration::from_secs(60));
    let written = tree(root.path());
    figures(
        "catalog escape to an oci: directory",
        &m,
        scene.hostile.records().len(),
        &format!("{} entries under the root", written.len()),
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "written outside the target directory: {written:?}"
    );
    for entry in &written {
        assert!(
            entry == "outside"
                || entry == "layouts"
                || entry.starts_with("layouts/app")
                || entry == "layouts/evil",
            "unexpected {entry:?} in {written:?}"
        );
    }
    assert_eq!(ref_names(&layouts.join("app")), vec!["v1".to_string()]);
    assert_eq!(m.code, Some(0), "invalid names are skipped, not failures");
    for bad in ["../outside/x", "evil/app", "Upper", absolute.as_str()] {
        assert!(m.stdout.contains(bad), "a warning names {bad:?}");
    }
}

#[test]
fn tag_names_that_are_not_tags_never_reach_an_oci_index() {
    let scene = Scene::new(|s| {
        if s.path() == "/v2/app/tags/list" {
            return tag_page(
                "app",
                &[
                    "v1",
                    "v1?x=1",
                    "v1#frag",
                    "sp ace",
                    "../../../escape",
                    "v1/../v2",
                    ".hidden",
                    &"b".repeat(300),
                ],
            );
        }
        if s.path().contains("/manifests/") && !s.path().contains("/manifests/sha256:") {
            return Reply::ForwardTo("/v2/app/manifests/v1".into());
        }
        Reply::Forward
    });
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    let config = scene.config("", &scene.rule("app", &format!("oci:{}", out.display())));
    let m = scene.run(&config, &["sync"], std::time::Duration::from_secs(60));
    figures(
        "tag names to an oci: index",
        &m,
        scene.hostile.records().len(),
        "",
    );
    assert_eq!(ref_names(&out), vec!["v1".to_string()]);
    assert_eq!(
        tree(root.path())
            .iter()
            .filter(|e| !e.starts_with("out"))
            .count(),
        0
    );
    assert_eq!(m.code, Some(0));
    only_asked_about(&scene, &["/v2/app/"]);
    let odd = scene.hostile.count(|seen| {
        seen.path()
            .split_once("/manifests/")
            .is_some_and(|(_, r)| r != "v1" && !r.starts_with("sha256:"))
            || seen
                .query()
                .is_some_and(|q| !q.starts_with("n=") && !q.starts_with("last="))
    });
    assert_eq!(odd, 0, "only valid tags and digests were asked for");
    for bad in ["v1?x=1", "v1#frag", "sp ace", "../../../escape", ".hidden"] {
        assert!(m.stdout.contains(bad), "a warning names {bad:?}");
    }
}

#[test]
fn a_layout_source_with_hostile_ref_names_copies_only_its_tags() {
    let scene = Scene::new(|_| Reply::Forward);
    let root = tempfile::tempdir().unwrap();
    let layout = root.path().join("lay");
    // a layout as skopeo writes it (`oci:DIR:v1`)
    let status = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{}/app:v1", scene.src.host()))
        .arg(format!("oci:{}:v1", layout.display()))
        .status()
        .unwrap();
    assert!(status.success(), "skopeo wrote the layout");
    let path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let entry = index["manifests"][0].clone();
    let hostile = [
        "../../../victim/app/manifests/prod",
        "%2e%2e/%2e%2e/%2e%2e/victim/app/manifests/prod2",
        "sp ace",
        "v1?x=1",
        "/etc/passwd",
        &"c".repeat(300),
    ];
    for name in hostile {
        let mut e = entry.clone();
        e["annotations"]["org.opencontainers.image.ref.name"] = name.into();
        index["manifests"].as_array_mut().unwrap().push(e);
    }
    std::fs::write(&path, serde_json::to_vec(&index).unwrap()).unwrap();
    let rule = format!(
        "[[rule]]\nname = \"r\"\nsource = \"oci:{}\"\ntargets = [\"{}/mirror/app\"]\n",
        layout.display(),
        scene.dst.host()
    );
    let config = scene.config("", &rule);
    let mark = scene.dst.mark();
    let m = scene.run(&config, &["sync"], std::time::Duration::from_secs(60));
    figures("layout source ref names", &m, 0, "");
    assert_only_mirror_app(&scene, mark);
    scene.assert_victim_untouched();
    assert_eq!(scene.dst.list_tags("mirror/app"), vec!["v1".to_string()]);
    assert_eq!(
        scene.target_repositories(),
        vec!["mirror/app".to_string(), "victim/app".to_string()]
    );
    assert_eq!(m.code, Some(0));
    for bad in [
        "../../../victim/app/manifests/prod",
        "sp ace",
        "/etc/passwd",
    ] {
        assert!(m.stdout.contains(bad), "a warning names {bad:?}");
    }
}
