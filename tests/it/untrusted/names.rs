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
