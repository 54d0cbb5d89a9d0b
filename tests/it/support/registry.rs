//! A real CNCF distribution registry (`/usr/bin/docker-registry serve`) per test.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::accesslog::{self, LoggedRequest, Mark};
use super::http::{self, HttpResponse};
use super::tls::TlsFiles;
use super::token::TokenServer;

/// Path of the registry binary (override with `$REGKEEPER_TEST_REGISTRY_BIN`).
pub fn registry_bin() -> String {
    std::env::var("REGKEEPER_TEST_REGISTRY_BIN")
        .unwrap_or_else(|_| "/usr/bin/docker-registry".into())
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Harness-internal requests (readiness probes, log markers) carry this prefix and are
/// left out of `requests()`.
const INTERNAL_PREFIX: &str = "/v2/?harness-";
const SYNC_PREFIX: &str = "/v2/?harness-sync=";

/// Default credentials of htpasswd and token registries.
pub const DEFAULT_USER: &str = "tester";
pub const DEFAULT_PASS: &str = "s3cret-pass";

/// How the registry authenticates clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Anonymous read/write.
    None,
    /// Basic auth from a bcrypt htpasswd file holding this one user.
    Htpasswd { user: String, pass: String },
    /// Bearer tokens from a harness token server (anonymous: pull only; the builder's
    /// credentials, by default `DEFAULT_USER`/`DEFAULT_PASS`: everything).
    Token,
}

impl Auth {
    /// `Auth::Htpasswd` with the default credentials.
    pub fn htpasswd() -> Auth {
        Auth::Htpasswd {
            user: DEFAULT_USER.into(),
            pass: DEFAULT_PASS.into(),
        }
    }
}

/// Builder for [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryBuilder {
    auth: Auth,
    tls: bool,
    token_user: String,
    token_pass: String,
    token_lifetime: Duration,
    token_strict_expiry: bool,
    notify: Option<Notify>,
}

/// A `notifications.endpoints` entry: where the registry posts its events.
#[derive(Debug, Clone)]
pub struct Notify {
    pub url: String,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: String,
}

impl RegistryBuilder {
    /// Send notifications (manifest and blob events) to `url` with a bearer token.
    pub fn notify(mut self, url: &str, token: &str) -> Self {
        self.notify = Some(Notify {
            url: url.into(),
            token: token.into(),
        });
        self
    }

    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Credentials accepted by the token server (`Auth::Token` only).
    pub fn token_credentials(mut self, user: &str, pass: &str) -> Self {
        self.token_user = user.into();
        self.token_pass = pass.into();
        self
    }

    /// Lifetime of issued tokens (`Auth::Token` only; default 300 s).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// Make the registry refuse tokens as soon as their lifetime is over (`Auth::Token`
    /// only; see `TokenServer::set_strict_expiry`).
    pub fn token_strict_expiry(mut self, strict: bool) -> Self {
        self.token_strict_expiry = strict;
        self
    }

    /// Writes the config and starts the registry; returns once `GET /v2/` answers.
    pub fn start(self) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("regkeeper-it-registry-")
            .tempdir()
            .expect("registry temp dir");
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        fs::create_dir_all(&data).expect("create data dir");

        let tls = self.tls.then(|| TlsFiles::generate(&root.join("tls")));
        let (credentials, token) = match &self.auth {
            Auth::None => (None, None),
            Auth::Htpasswd { user, pass } => {
                write_htpasswd(&root.join("htpasswd"), user, pass);
                (Some((user.clone(), pass.clone())), None)
            }
            Auth::Token => {
                let server = TokenServer::start(
                    &root.join("token"),
                    "regkeeper-test-registry",
                    &self.token_user,
                    &self.token_pass,
                    self.token_lifetime,
                );
                server.set_strict_expiry(self.token_strict_expiry);
                (
                    Some((self.token_user.clone(), self.token_pass.clone())),
                    Some(server),
                )
            }
        };

        let mut reg = Registry {
            port: 0,
            auth: self.auth,
            credentials,
            tls,
            token,
            notify: self.notify,
            child: None,
            root,
            sync_seq: AtomicU64::new(0),
            _dir: dir,
        };
        // A port picked by binding :0 may be taken by someone else before the registry
        // binds it: retry with a new one.
        let mut last_err = String::new();
        for _ in 0..5 {
            reg.port = super::free_port();
            reg.write_config();
            match reg.try_start() {
                Ok(()) => return reg,
                Err(e) if e.contains("address already in use") => last_err = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("registry could not find a free port: {last_err}");
    }
}

/// A running (or stopped) registry instance with its own temp dir. The process is killed
/// and the temp dir removed on drop.
pub struct Registry {
    port: u16,
    auth: Auth,
    credentials: Option<(String, String)>,
    tls: Option<TlsFiles>,
    token: Option<TokenServer>,
    notify: Option<Notify>,
    child: Option<Child>,
    root: PathBuf,
    sync_seq: AtomicU64,
    // Last: removed after the child is gone.
    _dir: TempDir,
}

pub fn write_htpasswd(path: &Path, user: &str, pass: &str) {
    // bcrypt in-process: the registry's htpasswd auth accepts only bcrypt ($2y$/$2b$),
    // and no system tool (apache2-utils) is needed on a fresh machine.
    let hash = bcrypt::hash(pass, 5).expect("bcrypt hash");
    fs::write(path, format!("{user}:{hash}\n")).expect("write htpasswd");
}

/// A YAML-safe double-quoted scalar (JSON strings are valid YAML).
fn yaml_str(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).expect("yaml string")
}

fn yaml_path(p: &Path) -> String {
    yaml_str(p.to_str().expect("utf-8 path"))
}

impl Registry {
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder {
            auth: Auth::None,
            tls: false,
            token_user: DEFAULT_USER.into(),
            token_pass: DEFAULT_PASS.into(),
            token_lifetime: Duration::from_secs(300),
            token_strict_expiry: false,
            notify: None,
        }
    }

    /// A plain-HTTP registry without auth.
    pub fn start_plain() -> Registry {
        Registry::builder().start()
    }

    fn write_config(&self) {
        let mut cfg = format!(
            r#"version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
  secret: regkeeper-harness-fixed-secret
"#,
            data = yaml_path(&self.data_dir()),
            port = self.port,
        );
        if let Some(tls) = &self.tls {
            cfg += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                yaml_path(&tls.cert_pem),
                yaml_path(&tls.key_pem)
            );
        }
        match (&self.auth, &self.token) {
            (Auth::None, _) => {}
            (Auth::Htpasswd { .. }, _) => {
                cfg += &format!(
                    "auth:\n  htpasswd:\n    realm: regkeeper-test-basic\n    path: {}\n",
                    yaml_path(&self.root.join("htpasswd"))
                );
            }
            (Auth::Token, Some(t)) => {
                cfg += &format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    yaml_str(t.realm()),
                    yaml_str(t.service()),
                    yaml_str(t.issuer()),
                    yaml_path(t.rootcertbundle())
                );
            }
            (Auth::Token, None) => unreachable!("token auth without token server"),
        }
        if let Some(n) = &self.notify {
            // Short timeout and backoff: a receiver that is not up yet is
            // retried within a second.
            cfg += &format!(
                "notifications:\n  endpoints:\n    - name: regkeeper\n      url: {}\n      headers:\n        Authorization: [{}]\n      timeout: 2s\n      threshold: 3\n      backoff: 1s\n",
                yaml_str(&n.url),
                yaml_str(format!("Bearer {}", n.token))
            );
        }
        cfg += "health:\n  storagedriver:\n    enabled: false\n";
        fs::write(self.config_path(), cfg).expect("write config.yml");
    }

    fn try_start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "registry already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open registry log");
        let mut marker = log.try_clone().expect("clone log handle");
        let _ = writeln!(marker, "# harness: starting registry on {}", self.host());
        let child = Command::new(registry_bin())
            .arg("serve")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", registry_bin()));
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "registry on {} exited during startup ({status}); log tail:\n{}",
                    self.host(),
                    self.log_tail(30)
                ));
            }
            if TcpStream::connect_timeout(
                &([127, 0, 0, 1], self.port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                match self.get("/v2/?harness-ready") {
                    Ok(r) if r.status == 200 || r.status == 401 => return Ok(()),
                    Ok(r) if Instant::now() > deadline => {
                        self.kill();
                        return Err(format!(
                            "registry on {} answers GET /v2/ with {}; log tail:\n{}",
                            self.host(),
                            r.status,
                            self.log_tail(30)
                        ));
                    }
                    _ => {}
                }
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "registry on {} not ready after {READY_TIMEOUT:?}; log tail:\n{}",
                    self.host(),
                    self.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the registry (SIGKILL + wait). Data, config and log stay.
    pub fn stop(&mut self) {
        assert!(self.child.is_some(), "registry is not running");
        self.kill();
    }

    /// Starts a stopped registry again, same config, port and data. Panics if the port
    /// has been taken meanwhile or the registry does not come up.
    pub fn start(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    /// `stop()` then `start()`.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// PID of the registry process, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// `http(s)://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme(), self.host())
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// `(user, pass)` for htpasswd and token registries.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// TLS files (CA, server cert/key, skopeo cert dir) of a TLS registry.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The CA PEM that signed the server cert (for regkeeper's `ca_file`).
    pub fn ca_pem_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_pem.as_path())
    }

    /// Directory holding only `ca.crt` (skopeo `--cert-dir`/`--src-cert-dir`/`--dest-cert-dir`).
    pub fn cert_dir(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.cert_dir.as_path())
    }

    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }

    /// The instance's temp dir (config.yml, registry.log, data/, tls/, token/...).
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// Storage root (`storage.filesystem.rootdirectory`).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.yml")
    }

    /// Registry stdout+stderr: app log lines and the access log.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("registry.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        super::tail_file(&self.log_path(), lines)
    }

    /// A reqwest client that trusts this registry's CA (no credentials configured).
    pub fn client(&self) -> reqwest::Client {
        http::client(self.tls.as_ref().map(|t| t.ca_pem_bytes()).as_deref())
    }

    /// Blocking anonymous `GET url()+path`.
    pub fn get(&self, path: &str) -> Result<HttpResponse, String> {
        self.request("GET", path, &[], None)
    }

    /// Blocking request to `url()+path` with extra headers (no auth unless given).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<HttpResponse, String> {
        let ca = self.tls.as_ref().map(|t| t.ca_pem_bytes());
        http::request(ca, method, &format!("{}{path}", self.url()), headers, body)
    }

    /// The `Authorization` header value a fully privileged client would send for the
    /// given scopes (`repository:NAME:pull,push,delete`): Basic for htpasswd, a freshly
    /// minted Bearer for token auth, `None` without auth.
    pub fn auth_header(&self, scopes: &[&str]) -> Option<String> {
        use base64::Engine as _;
        match &self.auth {
            Auth::None => None,
            Auth::Htpasswd { user, pass } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            )),
            Auth::Token => {
                let t = self.token.as_ref().expect("token server");
                let user = self.credentials().map(|(u, _)| u);
                Some(format!("Bearer {}", t.issue(user, scopes)))
            }
        }
    }

    // ---------------------------------------------------------------- access log

    /// Makes sure every request answered before this call is in the log file: sends a
    /// marker request and waits until its line shows up. No-op when stopped.
    fn sync_log(&self) {
        let running = self.child.is_some();
        if !running {
            return;
        }
        let n = self.sync_seq.fetch_add(1, Ordering::Relaxed);
        let path = format!("{SYNC_PREFIX}{n}");
        let _ = self.get(&path);
        let needle = format!(" {path} ");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let text = fs::read_to_string(self.log_path()).unwrap_or_default();
            if text.contains(&needle) {
                // Lines of requests completed just before the marker are written by
                // other goroutines; give them a moment.
                std::thread::sleep(Duration::from_millis(5));
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn read_requests(&self) -> Vec<LoggedRequest> {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        accesslog::parse_log(&text)
            .into_iter()
            .filter(|r| !r.path.starts_with(INTERNAL_PREFIX))
            .collect()
    }

    /// Every request in the access log so far (harness probes and markers excluded),
    /// across restarts.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.sync_log();
        self.read_requests()
    }

    /// Number of logged requests matching `pred`.
    pub fn count(&self, pred: impl Fn(&LoggedRequest) -> bool) -> usize {
        self.requests().iter().filter(|r| pred(r)).count()
    }

    /// The current end of the access log.
    pub fn mark(&self) -> Mark {
        Mark(self.requests().len())
    }

    /// Requests logged after `mark`.
    pub fn requests_since(&self, mark: Mark) -> Vec<LoggedRequest> {
        self.requests().into_iter().skip(mark.0).collect()
    }

    /// Number of requests after `mark` matching `pred`.
    pub fn count_since(&self, mark: Mark, pred: impl Fn(&LoggedRequest) -> bool) -> usize {
        self.requests_since(mark).iter().filter(|r| pred(r)).count()
    }

    /// POST/PUT/PATCH/DELETE requests after `mark`.
    pub fn writes_since(&self, mark: Mark) -> Vec<LoggedRequest> {
        self.requests_since(mark)
            .into_iter()
            .filter(|r| r.is_write())
            .collect()
    }

    // ---------------------------------------------------------------- storage

    /// Path of a blob's bytes in filesystem storage
    /// (`docker/registry/v2/blobs/sha256/XX/HEX/data`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
        self.data_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Whether the blob (or manifest) is present in storage.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Overwrites a stored blob with different bytes of the same length, so the registry
    /// serves content that no longer matches its digest.
    pub fn corrupt_blob(&self, digest: &str) {
        let path = self.blob_path(digest);
        let mut bytes =
            fs::read(&path).unwrap_or_else(|e| panic!("read blob {}: {e}", path.display()));
        assert!(!bytes.is_empty(), "cannot corrupt an empty blob");
        for b in &mut bytes {
            *b ^= 0xA5;
        }
        fs::write(&path, bytes).expect("write corrupted blob");
    }

    /// Repositories present in storage (directory walk, no HTTP).
    pub fn stored_repos(&self) -> Vec<String> {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
            let Ok(rd) = fs::read_dir(dir) else { return };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !e.path().is_dir() || name.starts_with('_') {
                    continue;
                }
                let full = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                };
                if e.path().join("_manifests").is_dir() {
                    out.push(full.clone());
                }
                walk(&e.path(), &full, out);
            }
        }
        let mut out = Vec::new();
        walk(
            &self.data_dir().join("docker/registry/v2/repositories"),
            "",
            &mut out,
        );
        out.sort();
        out
    }

    /// Offline garbage collection (`docker-registry garbage-collect`, never
    /// `--delete-untagged`). Stops the registry if running and starts it again after.
    /// Returns the command's output.
    pub fn garbage_collect(&mut self) -> String {
        let was_running = self.child.is_some();
        if was_running {
            self.stop();
        }
        let out = Command::new(registry_bin())
            .arg("garbage-collect")
            .arg(self.config_path())
            .output()
            .expect("run garbage-collect");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "garbage-collect failed:\n{text}");
        if was_running {
            self.start();
        }
        text
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &self.url())
            .field("auth", &self.auth)
            .field("root", &self.root)
            .finish()
    }
}

impl Registry {
    /// A `[registries."127.0.0.1:PORT"]` section of a regkeeper config (SPEC §3) that
    /// reaches this registry: `plain_http = true` or `ca_file`, and for auth registries
    /// `username` plus a `password_file` written into the registry's temp dir.
    pub fn regkeeper_registry_toml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("toml string");
        let mut out = format!("[registries.{}]\n", q(&self.host()));
        match &self.tls {
            Some(t) => out += &format!("ca_file = {}\n", q(&t.ca_pem.display().to_string())),
            None => out += "plain_http = true\n",
        }
        // The harness's token server speaks plain HTTP: a TLS registry must
        // allow it by name to send it credentials.
        if let (Some(_), Some(ts)) = (&self.tls, self.token_server()) {
            let realm = url::Url::parse(&ts.realm()).expect("token realm URL");
            let port = realm.port_or_known_default().expect("realm port");
            let host = format!("{}:{port}", realm.host_str().expect("realm host"));
            out += &format!("token_realms = [{}]\n", q(&host));
        }
        if let Some((user, pass)) = self.credentials() {
            let pw = self.root.join("regkeeper-password");
            fs::write(&pw, pass).expect("write password file");
            out += &format!(
                "username = {}\npassword_file = {}\n",
                q(user),
                q(&pw.display().to_string())
            );
        }
        out
    }
}
