//! What operators hit: relative paths, secrets under systemd, empty files.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use super::validate::parse_for_test;
use super::*;
use crate::reference::Location;

const RULE: &str = "[[rule]]\nname = \"r\"\nsource = \"oci:./src\"\ntargets = [\"oci:dst\"]\n";

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn layout(c: &Config, i: usize) -> std::path::PathBuf {
    let spec = if i == 0 {
        c.rules[0].source.clone().unwrap()
    } else {
        c.rules[0].targets[i - 1].clone()
    };
    match spec.location {
        Location::Layout { path } => path,
        other => panic!("not a layout: {other:?}"),
    }
}

#[test]
fn relative_paths_start_at_the_config_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "token", "pw\n", 0o600);
    write(dir.path(), "ca.pem", "x", 0o644);
    let text = format!(
        "version = 1\n[daemon]\nstate_dir = \"./state\"\n[registries.\"ghcr.io\"]\nusername = \"u\"\npassword_file = \"token\"\nca_file = \"./ca.pem\"\n{RULE}"
    );
    let path = write(dir.path(), "config.toml", &text, 0o644);
    let c = load(&path).expect("valid");
    let base = std::path::absolute(dir.path()).unwrap();
    assert_eq!(c.daemon.state_dir, base.join("state"));
    assert!(c.daemon.state_dir_given);
    assert_eq!(layout(&c, 0), base.join("src"));
    assert_eq!(layout(&c, 1), base.join("dst"));
    let ghcr = &c.registries["ghcr.io"];
    assert_eq!(ghcr.ca_file.as_deref(), Some(base.join("ca.pem").as_path()));
    assert_eq!(ghcr.password.as_ref().unwrap().expose(), "pw");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn no_state_dir_is_the_default_and_known_as_such() {
    let c = parse(&format!("version = 1\n{RULE}"), Path::new("/etc/x/c.toml")).unwrap();
    assert_eq!(c.daemon.state_dir, Path::new("/var/lib/regkeeper"));
    assert!(!c.daemon.state_dir_given);
}

#[test]
fn world_readable_password_file_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "pw\n", 0o644);
    let text = format!(
        "version = 1\n[registries.\"ghcr.io\"]\nusername = \"u\"\npassword_file = {:?}\n{RULE}",
        token.to_str().unwrap()
    );
    let c = parse(&text, Path::new("c.toml")).expect("a warning, not an error");
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].message.contains("readable by every user"));
    assert_eq!(c.warnings[0].line, 4);
}

#[test]
fn password_credential_reads_the_credentials_directory() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "reg-token", "from-systemd\n", 0o600);
    let text = format!(
        "version = 1\n[registries.\"ghcr.io\"]\nusername = \"u\"\npassword_credential = \"reg-token\"\n{RULE}"
    );
    let c = parse_for_test(&text, Secrets::All, Some(dir.path())).expect("valid");
    assert_eq!(
        c.registries["ghcr.io"].password.as_ref().unwrap().expose(),
        "from-systemd"
    );
    let other = text.replace("reg-token", "other");
    let e = parse_for_test(&other, Secrets::All, Some(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read credential \"other\""), "{e}");
    assert!(e.contains("LoadCredential=other:"), "{e}");
    // Outside systemd: what to do instead.
    let e = parse_for_test(&text, Secrets::All, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("$CREDENTIALS_DIRECTORY is not set"), "{e}");
    // `check` and `status` do not need the service's credentials.
    parse_for_test(&text, Secrets::FilesOnly, None).expect("check");
    parse_for_test(&text, Secrets::None, None).expect("status");
    let e = parse_for_test(&text.replace("reg-token", "a/b"), Secrets::None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no '/'"), "{e}");
}

#[test]
fn status_and_check_do_without_the_services_environment() {
    let text = format!(
        "version = 1\n[registries.\"ghcr.io\"]\nusername = \"u\"\npassword_env = \"REGKEEPER_TEST_SURELY_UNSET_VARIABLE\"\n{RULE}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "c.toml", &text, 0o644);
    assert!(load(&path).is_err(), "sync needs the variable");
    let c = load_with(&path, Secrets::FilesOnly).expect("check does without it");
    assert!(c.registries["ghcr.io"].password.is_none());
    load_with(&path, Secrets::None).expect("status does without it");
    // status reads no password file either (it may be root's only).
    let text = text.replace(
        "password_env = \"REGKEEPER_TEST_SURELY_UNSET_VARIABLE\"",
        "password_file = \"/nonexistent/regkeeper/token\"",
    );
    let path = write(dir.path(), "c2.toml", &text, 0o644);
    assert!(
        load_with(&path, Secrets::FilesOnly).is_err(),
        "check reads files"
    );
    load_with(&path, Secrets::None).expect("status does not");
}

#[test]
fn a_secret_pasted_into_password_env_is_not_printed() {
    for pasted in ["S3cr3t-Passw0rd!", "hunter2", "ghp_abcDEF123"] {
        let text = format!(
            "version = 1\n[registries.\"ghcr.io\"]\nusername = \"u\"\npassword_env = \"{pasted}\"\n{RULE}"
        );
        for secrets in [Secrets::All, Secrets::FilesOnly] {
            let e = match parse_for_test(&text, secrets, None) {
                Ok(_) => panic!("{pasted:?} accepted as a variable name"),
                Err(e) => e.to_string(),
            };
            assert!(!e.contains(pasted), "the secret was printed: {e}");
            assert!(e.contains("not shown"), "{e}");
        }
    }
}

#[test]
fn an_empty_file_or_no_version_is_refused() {
    for text in ["", "\n  \n", "# only a comment\n"] {
        let e = parse(text, Path::new("c.toml"));
        let e = e.expect_err(&format!("{text:?} accepted")).to_string();
        assert!(
            e.contains("empty") || e.contains("no `version`"),
            "{text:?}: {e}"
        );
    }
    let e = parse(RULE, Path::new("c.toml")).unwrap_err();
    assert_eq!(e.diagnostics.len(), 1, "{e}");
    assert!(e.diagnostics[0].message.contains("add version = 1"), "{e}");
}

#[test]
fn repository_names_the_spec_forbids_are_config_errors() {
    let text = "version = 1\n[[rule]]\nname = \"r\"\nsource = \"ghcr.io/o/a_-_b\"\ntargets = [\"ghcr.io/o/b\"]\n";
    let e = parse(text, Path::new("c.toml")).unwrap_err();
    assert_eq!(
        (e.diagnostics[0].line, e.diagnostics[0].column),
        (4, 10),
        "{e}"
    );
    assert!(e.to_string().contains("\"a_-_b\" is not allowed"), "{e}");
    let long = format!(
        "version = 1\n[[rule]]\nname = \"r\"\nsource = \"ghcr.io/o/a\"\ntargets = [\"ghcr.io/{}\"]\n",
        "x".repeat(260)
    );
    let e = parse(&long, Path::new("c.toml")).unwrap_err().to_string();
    assert!(e.contains("at most 255"), "{e}");
}

#[test]
fn misspelt_keys_get_a_suggestion() {
    let e = parse(
        &format!("version = 1\n[daemon]\nstate_dri = \"/x\"\n{RULE}"),
        Path::new("c.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("did you mean `state_dir`"), "{e}");
}

#[test]
fn a_retention_that_deletes_every_matched_tag_must_say_so() {
    let rule = "version = 1\n[[rule]]\nname = \"wipe\"\ntargets = [\"ghcr.io/o/b\"]\n[rule.retention]\nmatch = ['.*']\n";
    let e = parse(&format!("{rule}keep_last = 0\n"), Path::new("c.toml")).unwrap_err();
    assert_eq!(
        (e.diagnostics[0].line, e.diagnostics[0].column),
        (7, 13),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("deletes every tag") && text.contains("delete_all_matched = true"),
        "{text}"
    );
    // said explicitly, or bounded by age, or keeping some: accepted
    for ok in [
        "keep_last = 0\ndelete_all_matched = true\n",
        "keep_last = 0\nolder_than = \"30d\"\n",
        "keep_last = 1\n",
    ] {
        parse(&format!("{rule}{ok}"), Path::new("c.toml")).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn registry_limits_for_untrusted_sources() {
    let text = "version = 1\n[registries.\"ghcr.io\"]\nmin_rate = \"64KiB\"\nmax_pages = 50\ntoken_realms = [\"Auth.Example.com\", \"tok.example:8443\"]\n[[rule]]\nname = \"r\"\nsource = \"ghcr.io/o/a\"\ntargets = [\"ghcr.io/o/b\"]\n";
    let c = parse(text, Path::new("c.toml")).unwrap();
    let r = &c.registries["ghcr.io"];
    assert_eq!(r.min_rate, 64 * 1024);
    assert_eq!(r.max_pages, 50);
    assert_eq!(r.token_realms, ["auth.example.com", "tok.example:8443"]);
    let d = crate::transport::RegistryOptions::default();
    assert_eq!((d.min_rate, d.max_pages), (10 * 1024, 10_000));
    for (bad, says) in [
        ("min_rate = \"fast\"", "min_rate must be a size per second"),
        ("max_pages = 0", "max_pages = 0 is too small"),
        (
            "token_realms = [\"https://auth.example.com\"]",
            "is a URL, not a host",
        ),
    ] {
        let key = bad.split(' ').next().unwrap();
        let line = text.lines().find(|l| l.starts_with(key)).unwrap();
        let e = parse(&text.replace(line, bad), Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}
