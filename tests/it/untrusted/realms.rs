//! Credentials and token realms: a registry names its token service in
//! `WWW-Authenticate: Bearer realm=...`, and regkeeper sends that service
//! the registry's credentials. A realm over plain HTTP (on another host, or
//! for an HTTPS registry) gets nothing unless `token_realms` lists it; the
//! run fails with an error that says how to allow it.

use std::time::Duration;

use super::common::*;

const PASSWORD: &str = "realm-test-s3cret";

/// The `username` and `password_file` lines for a registry section.
fn credentials_toml(dir: &std::path::Path, user: &str, pass: &str) -> String {
    let pw = dir.join("password");
    std::fs::write(&pw, pass).unwrap();
    format!(
        "username = \"{user}\"\npassword_file = {:?}\n",
        pw.display().to_string()
    )
}

fn output(m: &Measured) -> String {
    format!("{}{}", m.stdout, m.stderr)
}

#[test]
fn a_source_cannot_lure_credentials_to_a_plain_http_realm_elsewhere() {
    // (HostileRegistry::start builds a reqwest client: it needs the provider.)
    init_crypto();
    // The token service of the hostile source: records what it is sent.
    let realm = HostileRegistry::start(None, |_| {
        Reply::Respond(Canned::json(
            200,
            &serde_json::json!({ "token": "t0ken", "expires_in": 300 }),
        ))
    });
    // Another host name (localhost, not 127.0.0.1), plain HTTP.
    let realm_host = format!("localhost:{}", realm.host().rsplit(':').next().unwrap());
    let challenge = format!("Bearer realm=\"http://{realm_host}/token\",service=\"hostile\"");
    let scene = Scene::new(move |s: &Seen| {
        if s.header("authorization")
            .is_some_and(|a| a.starts_with("Bearer "))
        {
            Reply::Forward
        } else {
            Reply::Respond(Canned::new(401).header("WWW-Authenticate", &challenge))
        }
    });
    let creds = credentials_toml(scene.dir.path(), "mirror", PASSWORD);
    let rule = scene.rule("app", &format!("{}/mirror/app", scene.dst.host()));

    let config = scene.config(&creds, &rule);
    let m = scene.run(&config, &["sync"], Duration::from_secs(120));
    let sent = realm.count(|s| s.header("authorization").is_some());
    figures(
        "plain-HTTP realm on another host",
        &m,
        realm.records().len(),
        &format!("{sent} requests with credentials at the realm"),
    );
    assert_eq!(
        sent,
        0,
        "credentials went to the realm: {:#?}",
        realm.records()
    );
    assert_eq!(m.code, Some(1), "the run fails");
    let out = output(&m);
    assert!(
        out.contains("token_realms") && out.contains(&realm_host),
        "the error names the realm and token_realms:\n{out}"
    );
    assert!(!out.contains(PASSWORD));
    assert!(
        !scene
            .target_repositories()
            .contains(&"mirror/app".to_string())
    );

    // Listed: the realm gets the credentials and the copy happens.
    let allowed = format!("{creds}token_realms = [\"{realm_host}\"]\n");
    let config = scene.config(&allowed, &rule);
    let m = scene.run(&config, &["sync"], Duration::from_secs(120));
    assert_eq!(m.code, Some(0), "{}", output(&m));
    assert!(
        realm.count(|s| s
            .header("authorization")
            .is_some_and(|a| a.starts_with("Basic ")))
            >= 1,
        "a listed realm receives the credentials"
    );
    assert_eq!(scene.dst.digest_of("mirror/app", "v1"), scene.image.digest);
    scene.assert_victim_untouched();
}

#[test]
fn an_https_registry_sends_no_credentials_to_its_plain_http_realm_unless_listed() {
    let src = Registry::start_plain();
    let mut corpus = Corpus::new();
    let image = corpus.image("v1", &ImageSpec::new(&[layer("realm-tls", 3000)]));
    corpus.push(&src, "v1", "app", "v1");
    // TLS registry with token auth; its token server is http://127.0.0.1:PORT.
    let dst = Registry::builder().auth(Auth::Token).tls(true).start();
    let ts = dst.token_server().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (user, pass) = dst.credentials().unwrap();
    let head = format!(
        "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"\"\n[registries.\"{}\"]\nplain_http = true\n",
        dir.path().join("state").display().to_string(),
        src.host()
    );
    let rule = format!(
        "[[rule]]\nname = \"r\"\nsource = \"{}/app\"\ntargets = [\"{}/app\"]\n",
        src.host(),
        dst.host()
    );
    let unlisted = format!(
        "{head}[registries.\"{}\"]\nca_file = {:?}\n{}\n{rule}",
        dst.host(),
        dst.ca_pem_path().unwrap().display().to_string(),
        credentials_toml(dir.path(), user, pass)
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, unlisted).unwrap();
    let run = |path: &std::path::Path| {
        run_measured(
            std::process::Command::new(regkeeper_bin())
                .args(["sync", "-c"])
                .arg(path)
                .env("REGKEEPER_LOG", "info"),
            Duration::from_secs(120),
        )
    };
    let m = run(&path);
    let with_user = ts.requests().iter().filter(|r| r.user.is_some()).count();
    figures(
        "https registry, plain-HTTP realm",
        &m,
        ts.requests().len(),
        &format!("{with_user} token requests with credentials"),
    );
    assert_eq!(
        with_user,
        0,
        "credentials went over plain HTTP: {:#?}",
        ts.requests()
    );
    assert_eq!(m.code, Some(1));
    let out = output(&m);
    assert!(out.contains("token_realms"), "{out}");
    assert!(!out.contains(pass));

    // With the realm listed (what the harness's registry section says).
    let listed = format!("{head}{}\n{rule}", dst.regkeeper_registry_toml());
    assert!(listed.contains("token_realms"));
    std::fs::write(&path, listed).unwrap();
    let m = run(&path);
    assert_eq!(m.code, Some(0), "{}", output(&m));
    assert!(
        ts.requests()
            .iter()
            .any(|r| r.user.as_deref() == Some(user))
    );
    assert_eq!(dst.digest_of("app", "v1"), image.digest);
}
