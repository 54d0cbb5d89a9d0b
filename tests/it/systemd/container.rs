//! A real systemd as PID 1 of a `systemd-nspawn` container, for tests of the
//! shipped unit. The container uses the host's `/usr` read-only and a copy of
//! its `/etc`; it has a network namespace of its own (only its own loopback),
//! a private mount namespace with a tmpfs on `/run` (nspawn's scratch state
//! stays off the host), and a cgroup subtree of its own, removed on drop.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Why the container cannot run here (the test is skipped, not failed).
pub type Skip = String;

/// How the container sees the host's `/usr`.
#[derive(Clone, Copy, PartialEq)]
pub enum Usr {
    /// Bound read-only.
    ReadOnly,
    /// An overlay whose writes stay in the container's temp dir, with a copy
    /// of the host's dpkg database: packages can be installed (`apt install`).
    Writable,
}

pub struct Container {
    _tmp: TempDir,
    root: PathBuf,
    nspawn: Child,
    /// Host pid of the container's PID 1 (systemd).
    leader: u32,
    cgroups: Vec<PathBuf>,
    log: PathBuf,
}

/// What the host must have; `Err` names what is missing.
pub fn preflight() -> Result<(), Skip> {
    if !is_root() {
        return Err("not running as root (systemd-nspawn needs it)".into());
    }
    for tool in [
        "systemd-nspawn",
        "nsenter",
        "unshare",
        "systemd-machine-id-setup",
    ] {
        if !on_path(tool) {
            return Err(format!(
                "{tool} is not installed (Debian: systemd-container, util-linux; scripts/test.sh installs them)"
            ));
        }
    }
    if !Path::new("/lib/systemd/systemd").exists() {
        return Err("no /lib/systemd/systemd to boot (Debian package systemd)".into());
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// The cgroup directories one subtree needs on this host's hierarchy.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("unified").is_dir() {
        // Hybrid: the named systemd v1 hierarchy plus the v2 one.
        vec![
            base.join("systemd").join(name),
            base.join("unified").join(name),
        ]
    } else if base.join("systemd").is_dir() {
        vec![base.join("systemd").join(name)]
    } else {
        vec![base.join(name)]
    }
}

/// A root tree: `/usr` comes from the host at boot, the rest is ours.
fn build_root(root: &Path, machine: &str) -> std::io::Result<()> {
    for d in [
        "usr",
        "etc",
        "var/lib",
        "tmp",
        "root",
        "dev",
        "proc",
        "sys",
        "run",
        "opt/regkeeper",
        "srv",
        "home",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    for l in ["bin", "lib", "lib64", "sbin"] {
        std::os::unix::fs::symlink(format!("usr/{l}"), root.join(l))?;
    }
    let status = Command::new("cp")
        .args(["-a", "/etc/."])
        .arg(root.join("etc"))
        .status()?;
    assert!(status.success(), "copy /etc into the container root");
    // nspawn checks os-release before it binds /usr, so it must be a real file.
    let _ = std::fs::remove_file(root.join("etc/os-release"));
    std::fs::copy("/usr/lib/os-release", root.join("etc/os-release"))?;
    // Nothing of the host is enabled or configured in the container.
    for d in ["etc/systemd/system", "etc/init.d", "etc/regkeeper"] {
        let _ = std::fs::remove_dir_all(root.join(d));
    }
    for n in 0..=6 {
        let _ = std::fs::remove_dir_all(root.join(format!("etc/rc{n}.d")));
    }
    let _ = std::fs::remove_dir_all(root.join("etc/rcS.d"));
    let _ = std::fs::remove_file(root.join("etc/machine-id"));
    std::fs::create_dir_all(root.join("etc/systemd/system"))?;
    std::fs::write(root.join("etc/fstab"), "# empty\n")?;
    std::fs::write(root.join("etc/hostname"), format!("{machine}\n"))?;
    Command::new("systemd-machine-id-setup")
        .arg(format!("--root={}", root.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    Ok(())
}

/// What dpkg and apt need besides `/usr`: the host's package database (it
/// describes the `/usr` the overlay starts from) and apt's working dirs.
fn add_dpkg_state(root: &Path) -> std::io::Result<()> {
    for d in ["var/lib/dpkg", "var/cache/debconf"] {
        if Path::new("/").join(d).is_dir() {
            std::fs::create_dir_all(root.join(d))?;
            let status = Command::new("cp")
                .arg("-a")
                .arg(Path::new("/").join(d).join("."))
                .arg(root.join(d))
                .status()?;
            assert!(status.success(), "copy /{d} into the container root");
        }
    }
    // Minimal images leave out man pages and docs (`path-exclude`): the
    // package's must arrive.
    if let Ok(entries) = std::fs::read_dir(root.join("etc/dpkg/dpkg.cfg.d")) {
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if text.contains("path-exclude") {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    for d in [
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/log/apt",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    Ok(())
}

/// The direct child of `parent` whose command is `comm`.
fn child_named(parent: u32, comm: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if &stat[open + 1..close] == comm && ppid == Some(&parent.to_string()) {
            return Some(pid);
        }
    }
    None
}

impl Container {
    /// Boots systemd with `bin_dir` bound read-only at `/opt/regkeeper` and
    /// waits until the system is `running`.
    pub fn boot(bin_dir: &Path) -> Result<Container, Skip> {
        Self::boot_with(bin_dir, Usr::ReadOnly)
    }

    /// `boot`, with `/usr` as `usr` says.
    pub fn boot_with(bin_dir: &Path, usr: Usr) -> Result<Container, Skip> {
        let tmp = tempfile::Builder::new()
            .prefix("regkeeper-nspawn-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let root = tmp.path().join("root");
        // Unique per container: the tests of one process boot theirs at once.
        static BOOTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = BOOTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let machine = format!("rk{}-{n}", std::process::id());
        build_root(&root, &machine).map_err(|e| format!("container root: {e}"))?;
        let usr_mount = match usr {
            Usr::ReadOnly => "--bind-ro=/usr".to_string(),
            Usr::Writable => {
                add_dpkg_state(&root).map_err(|e| format!("dpkg state: {e}"))?;
                let upper = tmp.path().join("usr-upper");
                std::fs::create_dir(&upper).map_err(|e| format!("overlay dir: {e}"))?;
                format!("--overlay=/usr:{}:/usr", upper.display())
            }
        };
        let cgroups = cgroup_dirs(&format!("regkeeper-it-{}-{n}", std::process::id()));
        for d in &cgroups {
            std::fs::create_dir(d).map_err(|e| format!("cgroup {}: {e}", d.display()))?;
        }
        let log = tmp.path().join("nspawn.log");
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let cg: Vec<String> = cgroups.iter().map(|d| d.display().to_string()).collect();
        // The shell moves itself into the cgroup, then execs (same pid) into
        // unshare and nspawn: the child's pid is nspawn's.
        let nspawn = Command::new("sh")
            .arg("-c")
            .arg(
                r#"for d in $RK_CGROUPS; do echo $$ > "$d/cgroup.procs"; done
exec unshare --mount --propagation private sh -c 'mount -t tmpfs -o mode=755 tmpfs /run &&
  exec systemd-nspawn --quiet --register=no --keep-unit --private-network \
    --system-call-filter=bpf --machine="$RK_MACHINE" -D "$RK_ROOT" "$RK_USR" \
    --bind-ro="$RK_BIN":/opt/regkeeper --console=pipe -b'"#,
            )
            .env("RK_CGROUPS", cg.join(" "))
            .env("RK_MACHINE", &machine)
            .env("RK_ROOT", &root)
            .env("RK_USR", &usr_mount)
            .env("RK_BIN", bin_dir)
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("start systemd-nspawn: {e}"))?;
        let mut c = Container {
            _tmp: tmp,
            root,
            leader: 0,
            nspawn,
            cgroups,
            log,
        };
        c.wait_for_leader()?;
        c.wait_running()?;
        Ok(c)
    }

    fn wait_for_leader(&mut self) -> Result<(), Skip> {
        let t = Instant::now();
        let pid = self.nspawn.id();
        while t.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                return Err(format!(
                    "systemd-nspawn exited ({status}) before booting:\n{}",
                    self.nspawn_log()
                ));
            }
            if let Some(leader) = child_named(pid, "systemd") {
                self.leader = leader;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "no systemd in the container after 15 s:\n{}",
            self.nspawn_log()
        ))
    }

    fn wait_running(&self) -> Result<(), Skip> {
        let t = Instant::now();
        while !self
            .run(&["test", "-S", "/run/systemd/private"])
            .status
            .success()
        {
            if t.elapsed() > Duration::from_secs(15) {
                return Err(format!(
                    "PID 1 never opened its bus:\n{}",
                    self.nspawn_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = self.run(&["timeout", "60", "systemctl", "is-system-running", "--wait"]);
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // "degraded": some unit of the host's /etc failed in the container;
        // PID 1 works, and the test's units do not depend on it.
        if state == "degraded" {
            let failed = self.run(&["systemctl", "--failed", "--no-pager"]);
            eprintln!(
                "container degraded:\n{}",
                String::from_utf8_lossy(&failed.stdout)
            );
        } else if state != "running" {
            let failed = self.run(&["systemctl", "--failed", "--no-pager"]);
            return Err(format!(
                "system state {state:?}:\n{}",
                String::from_utf8_lossy(&failed.stdout)
            ));
        }
        Ok(())
    }

    /// The container's root as seen from the host (to write files into it).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn nspawn_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a command in all of the container's namespaces.
    pub fn run(&self, argv: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a"])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Runs a command in the container; panics unless it succeeds; its stdout.
    pub fn ok(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        assert!(
            out.status.success(),
            "{argv:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sh -c SCRIPT` in the container; its stdout.
    pub fn sh(&self, script: &str) -> String {
        self.ok(&["sh", "-c", script])
    }

    /// One property of a unit (`systemctl show -P`).
    pub fn prop(&self, unit: &str, name: &str) -> String {
        self.ok(&["systemctl", "show", "-P", name, unit])
            .trim()
            .to_string()
    }

    /// The unit's journal, messages only.
    pub fn journal(&self, unit: &str) -> String {
        String::from_utf8_lossy(
            &self
                .run(&["journalctl", "-u", unit, "-o", "cat", "--no-pager"])
                .stdout,
        )
        .into_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.leader != 0 {
            let _ = self.run(&["systemctl", "poweroff", "--no-block"]);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if matches!(self.nspawn.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if matches!(self.nspawn.try_wait(), Ok(None)) {
            // SIGKILL to nspawn takes the whole pid namespace with it.
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        for d in &self.cgroups {
            remove_cgroup(d);
        }
    }
}

/// cgroup directories go away with rmdir only, deepest first.
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
