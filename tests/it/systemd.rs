//! The shipped `systemd/regkeeper.service` under a real systemd (PID 1 of a
//! `systemd-nspawn` container), with the release binary bound in and a real
//! `docker-registry` running as another unit on the container's loopback.
//! Skipped, with the reason, where nspawn cannot run (not root, no
//! systemd-container, no release binary).

mod container;
mod package;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use container::Container;

use crate::support::registry::write_htpasswd;
use crate::support::{Corpus, ImageSpec, layer, sha256_digest};

const UNIT: &str = include_str!("../../systemd/regkeeper.service");
const REGISTRY: &str = "127.0.0.1:5000";
const CONFIG: &str = "etc/regkeeper/config.toml";
/// The registry asks for this user; regkeeper gets the password through
/// `LoadCredential=` and `password_credential`.
const USER: &str = "mirror";
const PASS: &str = "cred-s3cret-pass";

/// The release binary (`scripts/test.sh` builds it first), or why not.
fn release_dir() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("REGKEEPER_TEST_RELEASE_DIR") {
        return Ok(PathBuf::from(p));
    }
    // CARGO_BIN_EXE is <target>/debug/regkeeper; the release one is a sibling.
    let debug = Path::new(env!("CARGO_BIN_EXE_regkeeper"));
    let dir = debug
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("release"))
        .ok_or("no target dir")?;
    if dir.join("regkeeper").is_file() {
        let age = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        if age(&dir.join("regkeeper")) < age(debug) {
            eprintln!(
                "note: {} is older than the debug build; scripts/test.sh rebuilds it",
                dir.join("regkeeper").display()
            );
        }
        Ok(dir)
    } else {
        Err(format!(
            "no release binary at {}; run `cargo build --release --locked` (scripts/test.sh does)",
            dir.join("regkeeper").display()
        ))
    }
}

/// A container with a registry unit up and the shipped unit installed
/// (a drop-in only points ExecStart at the bound-in binary).
fn setup() -> Result<Container, String> {
    container::preflight()?;
    let bin = release_dir()?;
    let c = Container::boot(&bin)?;
    start_registry(&c);
    let units = c.root().join("etc/systemd/system");
    std::fs::write(units.join("regkeeper.service"), UNIT).unwrap();
    std::fs::create_dir_all(units.join("regkeeper.service.d")).unwrap();
    std::fs::write(
        units.join("regkeeper.service.d/binary.conf"),
        "[Service]\nExecStart=\nExecStart=/opt/regkeeper/regkeeper run -c /etc/regkeeper/config.toml\n\
         LoadCredential=registry-token:/srv/registry-token\n",
    )
    .unwrap();
    c.ok(&["systemctl", "daemon-reload"]);
    Ok(c)
}

/// A `docker-registry` unit on the container's loopback, asking for
/// `USER`/`PASS`; the password also at /srv/registry-token (root only), for
/// `LoadCredential=`.
fn start_registry(c: &Container) {
    let units = c.root().join("etc/systemd/system");
    write_htpasswd(&c.root().join("srv/htpasswd"), USER, PASS);
    std::fs::write(
        c.root().join("srv/registry.yml"),
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: /srv/registry\nhttp:\n  addr: {REGISTRY}\n\
             auth:\n  htpasswd:\n    realm: regkeeper-systemd-test\n    path: /srv/htpasswd\n"
        ),
    )
    .unwrap();
    // Readable by root only: the service sees it as a credential.
    let secret = c.root().join("srv/registry-token");
    std::fs::write(&secret, format!("{PASS}\n")).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(
        units.join("rk-registry.service"),
        "[Service]\nExecStart=/usr/bin/docker-registry serve /srv/registry.yml\n",
    )
    .unwrap();
    c.ok(&["systemctl", "daemon-reload"]);
    c.ok(&["systemctl", "start", "rk-registry.service"]);
    c.sh(&format!(
        "timeout 20 sh -c 'until bash -c \"echo > /dev/tcp/{}/{}\" 2>/dev/null; do sleep 0.1; done'",
        "127.0.0.1", 5000
    ));
}

/// A config mirroring the named source tags, one rule per (name, tag, repo).
fn config(rules: &[(&str, &str, &str)]) -> String {
    let mut s = format!(
        "version = 1\n[registries.\"{REGISTRY}\"]\nplain_http = true\nusername = \"{USER}\"\npassword_credential = \"registry-token\"\n"
    );
    for (name, tag, repo) in rules {
        s += &format!(
            "[[rule]]\nname = \"{name}\"\nsource = \"oci:/srv/src\"\ntargets = [\"{REGISTRY}/{repo}\"]\ntags.include = ['^{tag}$']\nschedule = \"@every 20s\"\n"
        );
    }
    s
}

/// The digest of `repo:tag` in the container's registry, read with skopeo.
fn digest(c: &Container, repo: &str, tag: &str) -> Option<String> {
    let out = c.run(&[
        "skopeo",
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &format!("{USER}:{PASS}"),
        &format!("docker://{REGISTRY}/{repo}:{tag}"),
    ]);
    out.status.success().then(|| sha256_digest(&out.stdout))
}

fn wait_for(what: &str, c: &Container, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < timeout,
            "{what}: not within {timeout:?}\n--- journal ---\n{}",
            c.journal("regkeeper")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write_config(c: &Container, text: &str) {
    let path = c.root().join(CONFIG);
    std::fs::write(&path, text).unwrap();
    // World-readable: the dynamic user reads it through "other".
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
}

fn unit_seconds(key: &str) -> u64 {
    UNIT.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{key}= in the shipped unit"))
}

#[test]
fn shipped_unit_under_a_real_systemd() {
    let c = match setup() {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIPPED systemd::shipped_unit_under_a_real_systemd: {why}");
            return;
        }
    };
    let mut corpus = Corpus::at(&c.root().join("srv/src"));
    let v1 = corpus.image("v1", &ImageSpec::new(&[layer("sd-v1", 40_000)]));
    let v2 = corpus.image("v2", &ImageSpec::new(&[layer("sd-v2", 30_000)]));

    let exposure = security_exposure(&c);
    assert!(
        exposure <= 2.0,
        "systemd-analyze security rates the unit {exposure}"
    );

    configuration_directory_is_readable(&c);
    write_config(&c, &config(&[("app", "v1", "mirror/app")]));
    let started = Instant::now();
    c.ok(&["systemctl", "start", "regkeeper.service"]);
    // Type=notify: start returns after READY=1, sent once the config is valid
    // and the state database is open.
    assert_eq!(c.prop("regkeeper", "ActiveState"), "active");
    assert_eq!(c.prop("regkeeper", "SubState"), "running");
    assert!(
        c.root()
            .join("var/lib/private/regkeeper/regkeeper.db")
            .is_file(),
        "READY=1 came before the state database was open"
    );
    let link = std::fs::read_link(c.root().join("var/lib/regkeeper")).unwrap();
    assert!(
        link.ends_with("private/regkeeper"),
        "StateDirectory with DynamicUser: {link:?}"
    );
    let pid = c.prop("regkeeper", "MainPID");
    let uid = c.sh(&format!("stat -c %u /proc/{pid}"));
    assert_ne!(uid.trim(), "0", "runs as a dynamic user, not root");
    wait_for("v1 mirrored", &c, Duration::from_secs(20), || {
        digest(&c, "mirror/app", "v1").as_deref() == Some(v1.digest.as_str())
    });
    eprintln!("start to first mirrored image: {:?}", started.elapsed());
    assert!(
        c.journal("regkeeper").contains("this is the default"),
        "no word on where the state goes"
    );

    // Reload: a rule added to the file runs, in the same process.
    write_config(
        &c,
        &config(&[("app", "v1", "mirror/app"), ("other", "v2", "mirror/other")]),
    );
    c.ok(&["systemctl", "reload", "regkeeper.service"]);
    wait_for(
        "v2 mirrored after reload",
        &c,
        Duration::from_secs(20),
        || digest(&c, "mirror/other", "v2").as_deref() == Some(v2.digest.as_str()),
    );
    assert_eq!(
        c.prop("regkeeper", "MainPID"),
        pid,
        "reload kept the process"
    );
    assert!(c.journal("regkeeper").contains("configuration reloaded"));

    // `status` and `check` as root, from the state the daemon wrote to
    // /var/lib/regkeeper, without the service's credentials.
    c.ok(&[
        "/opt/regkeeper/regkeeper",
        "check",
        "-c",
        "/etc/regkeeper/config.toml",
    ]);
    let status = c.ok(&[
        "/opt/regkeeper/regkeeper",
        "status",
        "--json",
        "-c",
        "/etc/regkeeper/config.toml",
    ]);
    assert!(
        status.contains("\"other\"") && status.contains("success"),
        "status: {status}"
    );
    assert!(
        !c.journal("regkeeper").contains(PASS),
        "the credential was logged"
    );

    // Stop: well within TimeoutStopSec, by exiting (not by SIGKILL).
    let t = Instant::now();
    c.ok(&["systemctl", "stop", "regkeeper.service"]);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(unit_seconds("TimeoutStopSec")),
        "stop took {took:?}"
    );
    assert_eq!(c.prop("regkeeper", "Result"), "success");
    eprintln!("systemctl stop took {took:?}");

    watchdog_restarts_a_stalled_loop(&c);
}

/// The unit's own rating, read by systemd-analyze inside the container.
fn security_exposure(c: &Container) -> f64 {
    let out = c.run(&[
        "systemd-analyze",
        "security",
        "--no-pager",
        "regkeeper.service",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("systemd-analyze security:\n{text}"));
    eprintln!("{line}");
    line.rsplit(':')
        .next()
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rating in {line:?}"))
}

/// Without /etc/regkeeper, the first start fails on the missing file (exit 2,
/// no restart loop) and systemd creates the directory: with the unit's mode,
/// which must let the dynamic user in.
fn configuration_directory_is_readable(c: &Container) {
    assert!(!c.root().join("etc/regkeeper").exists());
    let out = c.run(&["systemctl", "start", "regkeeper.service"]);
    assert!(!out.status.success(), "started without a config");
    assert_eq!(c.prop("regkeeper", "ExecMainStatus"), "2");
    let mode = c.sh("stat -c %a /etc/regkeeper");
    assert_eq!(
        mode.trim(),
        "755",
        "ConfigurationDirectoryMode locks the dynamic user out"
    );
    c.ok(&["systemctl", "reset-failed", "regkeeper.service"]);
}

/// A short watchdog (drop-in), then a scheduler loop that blocks (its config
/// file became a FIFO nobody writes: the reload's read never returns). The
/// loop's keep-alives stop, systemd kills and restarts the service.
fn watchdog_restarts_a_stalled_loop(c: &Container) {
    let dropin = c
        .root()
        .join("etc/systemd/system/regkeeper.service.d/watchdog.conf");
    std::fs::write(
        &dropin,
        "[Service]\nWatchdogSec=4\nRestartSec=2\nLimitCORE=0\n",
    )
    .unwrap();
    c.ok(&["systemctl", "daemon-reload"]);
    c.ok(&["systemctl", "start", "regkeeper.service"]);
    let pid = c.prop("regkeeper", "MainPID");
    // Keep-alives arrive: it outlives a watchdog period and a half (the
    // period leaves slack for a loaded machine: pings come every 2 s).
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        c.prop("regkeeper", "MainPID"),
        pid,
        "killed although its loop runs"
    );
    assert_eq!(c.prop("regkeeper", "NRestarts"), "0");

    let config = c.root().join(CONFIG);
    let kept = std::fs::read_to_string(&config).unwrap();
    std::fs::remove_file(&config).unwrap();
    c.ok(&["mkfifo", "-m", "0644", "/etc/regkeeper/config.toml"]);
    let t = Instant::now();
    c.ok(&["systemctl", "reload", "regkeeper.service"]);
    wait_for("watchdog kill", c, Duration::from_secs(15), || {
        c.prop("regkeeper", "Result") == "watchdog"
    });
    eprintln!(
        "stalled loop killed by the watchdog after {:?}",
        t.elapsed()
    );
    // Before the restart (RestartSec=2) reads it: a regular file again.
    let fresh = c.root().join("etc/regkeeper/config.new");
    std::fs::write(&fresh, kept).unwrap();
    std::fs::set_permissions(&fresh, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::rename(&fresh, &config).unwrap();
    wait_for(
        "restart after the watchdog",
        c,
        Duration::from_secs(15),
        || c.prop("regkeeper", "NRestarts") == "1" && c.prop("regkeeper", "SubState") == "running",
    );
    assert_ne!(c.prop("regkeeper", "MainPID"), pid);
    assert!(c.journal("regkeeper").contains("Watchdog timeout"));
    c.ok(&["systemctl", "stop", "regkeeper.service"]);
}
