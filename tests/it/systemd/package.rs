//! The Debian package (`packaging/build-deb.sh`) installed with
//! `apt install ./regkeeper_*.deb` in a container with a real systemd and a
//! writable `/usr`: the shipped unit starts from /usr/bin/regkeeper and
//! mirrors; the man pages and completions name the commands; the admin's
//! config.toml is not the package's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::container::{self, Container, Usr};
use super::{config, digest, release_dir, start_registry, wait_for, write_config};
use crate::support::{Corpus, ImageSpec, layer};

const COMMANDS: [&str; 7] = ["sync", "plan", "check", "copy", "run", "status", "prune"];

/// Runs the packaging script on `bin`; the .deb it wrote.
fn build_deb(bin: &Path, out: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/build-deb.sh");
    let t = Instant::now();
    let run = Command::new(&script)
        .arg(bin)
        .arg(out)
        .output()
        .expect("run packaging/build-deb.sh");
    assert!(
        run.status.success(),
        "packaging/build-deb.sh failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!("build-deb.sh took {:?}", t.elapsed());
    PathBuf::from(String::from_utf8_lossy(&run.stdout).trim())
}

fn boot() -> Result<(Container, PathBuf), String> {
    container::preflight()?;
    let bin = release_dir()?;
    let c = Container::boot_with(&bin, Usr::Writable)?;
    Ok((c, bin.join("regkeeper")))
}

#[test]
fn debian_package_installs_and_mirrors() {
    let (c, bin) = match boot() {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIPPED systemd::package::debian_package_installs_and_mirrors: {why}");
            return;
        }
    };
    let deb = build_deb(&bin, &c.root().join("srv"));
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("regkeeper_"), "{name}");
    start_registry(&c);
    let mut corpus = Corpus::at(&c.root().join("srv/src"));
    let v1 = corpus.image("v1", &ImageSpec::new(&[layer("deb-v1", 30_000)]));

    // What an admin does before installing: the config and a drop-in that
    // hands the registry password in as a credential.
    std::fs::create_dir_all(c.root().join("etc/regkeeper")).unwrap();
    write_config(&c, &config(&[("app", "v1", "mirror/app")]));
    let dropin = c.root().join("etc/systemd/system/regkeeper.service.d");
    std::fs::create_dir_all(&dropin).unwrap();
    std::fs::write(
        dropin.join("credential.conf"),
        "[Service]\nLoadCredential=registry-token:/srv/registry-token\n",
    )
    .unwrap();

    let t = Instant::now();
    let out = c.ok(&[
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        &format!("/srv/{name}"),
    ]);
    eprintln!("apt install took {:?}", t.elapsed());
    assert!(out.contains("Setting up regkeeper"), "apt:\n{out}");

    // postinst enabled and started the shipped unit, running /usr/bin/regkeeper.
    assert_eq!(
        c.sh("systemctl is-enabled regkeeper.service").trim(),
        "enabled"
    );
    assert_eq!(c.prop("regkeeper", "ActiveState"), "active");
    assert!(
        c.prop("regkeeper", "ExecStart")
            .contains("path=/usr/bin/regkeeper "),
        "{}",
        c.prop("regkeeper", "ExecStart")
    );
    wait_for(
        "v1 mirrored by the package",
        &c,
        Duration::from_secs(30),
        || digest(&c, "mirror/app", "v1").as_deref() == Some(v1.digest.as_str()),
    );

    man_and_completions(&c);
    config_files(&c);
}

/// The man pages and the bash completion name every command.
fn man_and_completions(c: &Container) {
    let man = c.sh("zcat /usr/share/man/man1/regkeeper.1.gz");
    let bash = c.sh("cat /usr/share/bash-completion/completions/regkeeper");
    for cmd in COMMANDS {
        assert!(
            man.contains(&format!("regkeeper\\-{cmd}")),
            "regkeeper.1 lacks {cmd}:\n{man}"
        );
        assert!(
            is_file(c, &format!("/usr/share/man/man1/regkeeper-{cmd}.1.gz")),
            "no man page for {cmd}"
        );
        assert!(
            bash.contains(&format!("regkeeper,{cmd})")),
            "bash completion lacks {cmd}"
        );
    }
    for f in [
        "/usr/share/zsh/vendor-completions/_regkeeper",
        "/usr/share/fish/vendor_completions.d/regkeeper.fish",
    ] {
        assert!(is_file(c, f), "no {f}");
    }
    let rendered = c.sh("man -l /usr/share/man/man1/regkeeper-sync.1.gz 2>/dev/null | head -5");
    assert!(rendered.contains("regkeeper-sync"), "man -l: {rendered}");
}

/// The example is a conffile; config.toml is the admin's alone, and stays
/// when the package is removed.
fn config_files(c: &Container) {
    let conffiles = c.sh("dpkg-query -W -f '${Conffiles}' regkeeper");
    assert!(
        conffiles.contains("/etc/regkeeper/config.example.toml"),
        "conffiles: {conffiles}"
    );
    assert!(
        !c.run(&["dpkg", "-S", "/etc/regkeeper/config.toml"])
            .status
            .success(),
        "the package owns the admin's config.toml"
    );
    c.ok(&[
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "remove",
        "-y",
        "regkeeper",
    ]);
    assert_eq!(c.prop("regkeeper", "ActiveState"), "inactive");
    assert!(c.root().join("etc/regkeeper/config.toml").is_file());
    assert!(!is_file(c, "/usr/bin/regkeeper"));
}

/// Inside the container: its `/usr` is an overlay the host does not see.
fn is_file(c: &Container, path: &str) -> bool {
    c.run(&["test", "-f", path]).status.success()
}
