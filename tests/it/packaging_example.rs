//! The example config the Debian package installs works under the shipped
//! unit: `ProtectSystem=strict` leaves only the unit's `StateDirectory`
//! (and `ReadWritePaths=`) writable, and relative paths resolve against the
//! config file's directory (`/etc/regkeeper`, read-only there). So every
//! path regkeeper writes (`state_dir`, `oci:` targets) must resolve inside a
//! writable directory.

use std::path::{Path, PathBuf};

use crate::support::regkeeper_bin;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directories the shipped unit lets the service write.
fn writable_dirs(unit: &str) -> Vec<PathBuf> {
    assert!(
        unit.lines().any(|l| l.trim() == "ProtectSystem=strict"),
        "the unit is no longer ProtectSystem=strict: revisit this test"
    );
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("StateDirectory=") {
            out.extend(v.split_whitespace().map(|d| Path::new("/var/lib").join(d)));
        }
        if let Some(v) = line.strip_prefix("ReadWritePaths=") {
            out.extend(v.split_whitespace().map(PathBuf::from));
        }
    }
    out
}

/// `s` as the config at `/etc/regkeeper/config.toml` resolves it (no `~`
/// under the service: it has no home).
fn resolved(s: &str) -> PathBuf {
    let p = Path::new(s);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        Path::new("/etc/regkeeper").join(p)
    }
}

/// The paths of `config` the service would write and cannot.
fn unwritable(config: &str, writable: &[PathBuf]) -> Vec<String> {
    let doc: toml::Table = toml::from_str(config).expect("the example is TOML");
    let mut written = Vec::new();
    let state = doc
        .get("daemon")
        .and_then(|d| d.get("state_dir"))
        .and_then(|v| v.as_str())
        .unwrap_or("/var/lib/regkeeper"); // the default
    written.push(state.to_string());
    for rule in doc["rule"].as_array().expect("[[rule]]") {
        for t in rule["targets"].as_array().into_iter().flatten() {
            if let Some(dir) = t.as_str().and_then(|t| t.strip_prefix("oci:")) {
                written.push(dir.to_string());
            }
        }
    }
    written
        .into_iter()
        .filter(|p| {
            let p = resolved(p);
            !writable.iter().any(|w| p.starts_with(w))
                || p.components().any(|c| c.as_os_str() == "..")
        })
        .collect()
}

#[test]
fn the_packaged_example_writes_only_where_the_unit_allows() {
    let root = repo_root();
    let unit = std::fs::read_to_string(root.join("systemd/regkeeper.service")).unwrap();
    let writable = writable_dirs(&unit);
    assert_eq!(writable, [PathBuf::from("/var/lib/regkeeper")]);

    // The package installs the service's example, not the quick-start one.
    let deb = std::fs::read_to_string(root.join("packaging/build-deb.sh")).unwrap();
    assert!(
        deb.contains(
            "\"$repo/packaging/config.example.toml\" \"$root/etc/regkeeper/config.example.toml\""
        ),
        "build-deb.sh installs another example"
    );
    let example = root.join("packaging/config.example.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    assert_eq!(unwritable(&text, &writable), Vec::<String>::new());

    // The check sees what it should: the quick-start example (relative
    // paths, for `cargo run` in a checkout) would write into /etc/regkeeper.
    let quick = std::fs::read_to_string(root.join("config.example.toml")).unwrap();
    assert_eq!(
        unwritable(&quick, &writable),
        ["./state", "./mirror/alpine"]
    );

    // And it is a valid config, as installed.
    let dir = tempfile::tempdir().unwrap();
    let installed = dir.path().join("config.toml");
    std::fs::write(&installed, &text).unwrap();
    let out = std::process::Command::new(regkeeper_bin())
        .args(["check", "-c"])
        .arg(&installed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "regkeeper check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
