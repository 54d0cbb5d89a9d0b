//! Bounded time and one attempt budget: a source that trickles a body or
//! its headers, stalls, fails forever or redirects in circles holds a rule
//! for a bounded time and is asked a bounded number of times (the
//! documented 6 attempts, not a product of retry layers); deterministic
//! failures are not retried; a redirect host learns nothing of the source
//! (no `Referer`, no `Authorization`).
//!
//! Every scene has `app:v1` (the image attacked: its own layer) and
//! `app:v2` (untouched): the attacked image fails, v2 is copied, and the run
//! ends with exit 1 well before the bound the bug would exceed.

use std::time::Duration;

use super::common::*;

/// The documented number of attempts of one blob (README, "Faults").
const ATTEMPTS: usize = 6;
/// Past this the attack held the rule: without the fix these runs take
/// minutes (each is killed at `KILL`).
const BOUND: Duration = Duration::from_secs(60);
const KILL: Duration = Duration::from_secs(120);

struct Attack {
    scene: Scene,
    /// `/v2/app/blobs/<digest of v1's own layer>`
    blob_path: String,
    blob: Vec<u8>,
}

impl Attack {
    /// The scene plus `app:v2` at the source; the hostile registry forwards
    /// everything until a test sets its handler.
    fn new() -> Attack {
        let scene = Scene::new(|_| Reply::Forward);
        let mut corpus = Corpus::new();
        corpus.image(
            "v2",
            &ImageSpec::new(&[layer("time-v2", 3000)]).label("name", "v2"),
        );
        corpus.push(&scene.src, "v2", "app", "v2");
        let digest = scene.image.layers[1].digest.clone();
        let blob_path = format!("/v2/app/blobs/{digest}");
        let blob = scene.src.get(&blob_path).expect("blob").body;
        assert_eq!(blob.len() as u64, scene.image.layers[1].size);
        Attack {
            scene,
            blob_path,
            blob,
        }
    }

    /// The blob's bytes as the registry would answer them.
    fn blob_reply(&self) -> Canned {
        Canned::new(200)
            .header("Content-Type", "application/octet-stream")
            .body(self.blob.clone())
    }

    /// Sets the handler: `reply` for GETs of the attacked blob, the rest forwarded.
    fn on_blob(&self, reply: impl Fn() -> Reply + Send + Sync + 'static) {
        let path = self.blob_path.clone();
        self.scene.hostile.set_handler(move |s| {
            if s.method == "GET" && s.path() == path {
                reply()
            } else {
                Reply::Forward
            }
        });
    }

    /// `sync` with `read_timeout = "2s"` (and `extra` source lines).
    fn sync(&self, extra: &str) -> Measured {
        let s = &self.scene;
        let config = s.config(
            &format!("read_timeout = \"2s\"\n{extra}"),
            &s.rule("app", &format!("{}/mirror/app", s.dst.host())),
        );
        s.run(&config, &["sync"], KILL)
    }

    fn blob_gets(&self) -> usize {
        let path = self.blob_path.clone();
        self.scene
            .hostile
            .count(move |s| s.method == "GET" && s.path() == path)
    }

    /// v1 failed (exit 1, untagged), v2 arrived, in bounded time.
    fn assert_v1_failed_rest_copied(&self, m: &Measured) {
        assert!(m.wall < BOUND, "the attack held the run for {:?}", m.wall);
        assert_eq!(m.code, Some(1), "the attacked image fails the rule");
        assert_eq!(
            self.scene.dst.list_tags("mirror/app"),
            vec!["v2".to_string()],
            "the rest of the rule is copied, the attacked image is not tagged"
        );
        self.scene.assert_victim_untouched();
    }
}

#[test]
fn a_blob_body_trickled_at_one_byte_a_second_is_abandoned_within_the_budget() {
    let a = Attack::new();
    let canned = a.blob_reply();
    a.on_blob(move || Reply::TrickleBody(canned.clone(), 1, Duration::from_secs(1)));
    let m = a.sync("");
    let gets = a.blob_gets();
    figures(
        "blob body 1 B/s",
        &m,
        a.scene.hostile.records().len(),
        &format!("{gets} blob GETs"),
    );
    a.assert_v1_failed_rest_copied(&m);
    assert_eq!(gets, ATTEMPTS, "one budget for the blob's GETs and resumes");
    assert!(m.stderr.contains("min_rate"), "the log says why");
}

#[test]
fn a_manifest_body_trickled_at_one_byte_a_second_is_abandoned() {
    let a = Attack::new();
    let manifest = a.scene.image.manifest.clone();
    let media_type = a.scene.image.descriptor.media_type.clone();
    a.scene.hostile.set_handler(move |s| {
        if s.method == "GET" && s.path() == "/v2/app/manifests/v1" {
            let c = Canned::new(200)
                .header("Content-Type", &media_type)
                .body(manifest.clone());
            return Reply::TrickleBody(c, 1, Duration::from_secs(1));
        }
        Reply::Forward
    });
    let m = a.sync("");
    let gets = a
        .scene
        .hostile
        .count(|s| s.method == "GET" && s.path() == "/v2/app/manifests/v1");
    figures(
        "manifest body 1 B/s",
        &m,
        a.scene.hostile.records().len(),
        &format!("{gets} manifest GETs"),
    );
    a.assert_v1_failed_rest_copied(&m);
    assert!((1..=ATTEMPTS).contains(&gets), "{gets} manifest GETs");
}

#[test]
fn response_headers_trickled_at_one_byte_a_second_meet_a_deadline() {
    let a = Attack::new();
    let canned = a.blob_reply();
    a.on_blob(move || Reply::TrickleHead(canned.clone(), Duration::from_secs(1)));
    let m = a.sync("");
    let gets = a.blob_gets();
    figures(
        "headers 1 B/s",
        &m,
        a.scene.hostile.records().len(),
        &format!("{gets} blob GETs"),
    );
    a.assert_v1_failed_rest_copied(&m);
    assert_eq!(gets, ATTEMPTS);
    assert!(
        m.stderr.contains("gave up after 6 attempts"),
        "the error says so"
    );
}

#[test]
fn a_silent_stall_is_asked_the_documented_number_of_times() {
    let a = Attack::new();
    a.on_blob(|| Reply::Stall);
    let m = a.sync("");
    let gets = a.blob_gets();
    figures(
        "silent stall",
        &m,
        a.scene.hostile.records().len(),
        &format!("{gets} blob GETs"),
    );
    a.assert_v1_failed_rest_copied(&m);
    assert_eq!(gets, ATTEMPTS);
}

#[test]
fn a_body_that_stalls_part_way_resumes_within_the_same_budget() {
    let a = Attack::new();
    let canned = a.blob_reply();
    a.on_blob(move || Reply::StallBody(canned.clone(), 100));
    let m = a.sync("");
    let gets = a.blob_gets();
    figures(
        "body stall",
        &m,
        a.scene.hostile.records().len(),
        &format!("{gets} blob GETs"),
    );
    a.assert_v1_failed_rest_copied(&m);
    assert_eq!(gets, ATTEMPTS, "first GET and resumes share one budget");
}

#[test]
fn a_blob_that_answers_500_forever_is_asked_six_times() {
    let a = Attack::new();
    a.on_blob(|| Reply::Respond(Canned::new(500)));
    let m = a.sync("");
    let gets = a.blob_gets();
    figures(
        "blob 500 forever",
        &m,
        a.scene.hostile.records().len(),
        &format!("{gets} blob GETs"),
    );
    a.assert_v1_failed_rest_copied(&m);
    assert_eq!(gets, ATTEMPTS, "6 attempts, not 6 x 6");
}

#[test]
fn a_manifest_that_answers_500_forever_is_asked_six_times() {
    let a = Attack::new();
    a.scene.hostile.set_handler(|s| {
        if s.path() == "/v2/app/manifests/v1" && s.method == "GET" {
            return Reply::Respond(Canned::new(500));
        }
        Reply::Forward
    });
    let m = a.sync("");
    let gets = a
        .scene
        .hostile
        .count(|s| s.method == "GET" && s.path() == "/v2/app/manifests/v1");
    figures(
        "manifest 500 forever",
        &m,
        a.scene.hostile.records().len(),
        &format!("{gets} manifest GETs"),
    );
    a.assert_v1_failed_rest_copied(&m);
    assert_eq!(gets, ATTEMPTS);
}

#[test]
fn a_redirect_loop_is_not_retried() {
    let a = Attack::new();
    let path = a.blob_path.clone();
    a.on_blob(move || Reply::Respond(Canned::new(302).header("Location", &path)));
    let m = a.sync("");
    let gets = a.blob_gets();
    figures(
        "redirect loop",
        &m,
        a.scene.hostile.records().len(),
        &format!("{gets} blob GETs"),
    );
    a.assert_v1_failed_rest_copied(&m);
    assert!(gets <= 11, "{gets} GETs: the loop is followed at most once");
    assert!(
        m.stderr.contains("redirected in a loop"),
        "the error says why"
    );
}

#[test]
fn a_redirect_to_another_scheme_is_one_attempt() {
    for target in ["ftp://127.0.0.1/blob", "file:///etc/passwd"] {
        let a = Attack::new();
        let location = target.to_string();
        a.on_blob(move || Reply::Respond(Canned::new(307).header("Location", &location)));
        let m = a.sync("");
        let gets = a.blob_gets();
        figures(
            &format!("redirect to {target}"),
            &m,
            a.scene.hostile.records().len(),
            &format!("{gets} blob GETs"),
        );
        a.assert_v1_failed_rest_copied(&m);
        assert_eq!(gets, 1, "{target}: a deterministic failure is not retried");
    }
}

#[test]
fn a_redirect_host_sees_neither_referer_nor_authorization() {
    let a = Attack::new();
    // object storage: another host (port) that serves the blob
    let storage = HostileRegistry::start(Some(&a.scene.src.url()), |_| Reply::Forward);
    let location = format!("{}{}", storage.url(), a.blob_path);
    let path = a.blob_path.clone();
    // the source wants credentials on every request, then redirects the blob
    a.scene.hostile.set_handler(move |s| {
        if s.header("authorization") != Some(BASIC) {
            return Reply::Respond(
                Canned::new(401).header("WWW-Authenticate", "Basic realm=\"hostile\""),
            );
        }
        if s.method == "GET" && s.path() == path {
            return Reply::Respond(Canned::new(307).header("Location", &location));
        }
        Reply::Forward
    });
    let pw = a.scene.dir.path().join("password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let m = a.sync(&format!(
        "username = \"mirror\"\npassword_file = {:?}\n",
        pw.display().to_string()
    ));
    let seen: Vec<Seen> = storage
        .records()
        .into_iter()
        .filter(|s| s.path() == a.blob_path)
        .collect();
    figures(
        "redirect headers",
        &m,
        a.scene.hostile.records().len(),
        &format!("{} storage GETs", seen.len()),
    );
    assert_eq!(m.code, Some(0));
    assert_eq!(
        a.scene.dst.list_tags("mirror/app"),
        vec!["v1".to_string(), "v2".to_string()]
    );
    assert!(
        !seen.is_empty(),
        "the blob was fetched from the redirect host"
    );
    for s in &seen {
        assert_eq!(
            s.header("referer"),
            None,
            "Referer sent to the redirect host"
        );
        assert_eq!(
            s.header("authorization"),
            None,
            "credentials sent to the redirect host"
        );
    }
}

/// `Basic base64("mirror:s3cret")`
const BASIC: &str = "Basic bWlycm9yOnMzY3JldA==";
