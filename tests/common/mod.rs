//! Real-Envoy integration-test harness.
//!
//! Use from an integration test with `mod common;` then e.g.
//!
//! ```ignore
//! let envoy = common::Envoy::with_plugin(r#"{"routes": []}"#);
//! let resp = envoy.request("GET", "/a/../b", &[("x-test", "1")]);
//! assert_eq!(resp.status, 200);
//! let seen = envoy.upstream_requests();
//! ```
//!
//! Each `Envoy` gets its own temp dir, ports, base id and in-process
//! upstream, so tests can run in parallel. Dropping it SIGKILLs Envoy (and
//! waits for it) and stops the upstream; on a panicking test the tail of
//! Envoy's log is printed. Set `KEEP_ENVOY_TMP=1` to keep the temp dirs
//! (config, log, stdout, stderr).
//!
//! Environment:
//! * `ENVOY` — Envoy binary (default `<crate>/.venv/bin/envoy`).
//! * `API_GUARD_WASM` — wasm module (default
//!   `<crate>/target/wasm32-wasip1/release/api_guard.wasm`).
//! * `API_GUARD_ADAPTER` — `wasm` (default): the proxy-wasm filter; `module`: the same tests
//!   against the Envoy dynamic module (`make test-module`), loaded from `API_GUARD_MODULE_DIR`
//!   (default `<crate>/target/release`, `make module`) as module `api_guard`.
//! * `KEEP_ENVOY_TMP` — keep per-Envoy temp dirs.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod checks;
mod config;
mod http;
pub mod idp;
mod upstream;

pub use checks::{
    assert_envelope, bearer, claims, event_line_with_id, event_of, log_thread,
    only_upstream_request, security_events, sign, wait_for_event, EVENT_START, EVENT_WAIT,
};
pub use config::{
    render as render_config, render_with as render_config_with, yaml_quote, ConfigParams,
    RenderExtras,
};
pub use http::{send_h2c, send_raw, send_request, H2Outcome, H2Request, Response};
pub use upstream::{RecordedRequest, LEAKY_DETAIL_BODY, RESPONSE_HEADER_REQUEST};

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use upstream::Upstream;

/// How long Envoy may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-process counter: unique temp dirs and base ids.
static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// The repository root (the workspace's Cargo.toml; this crate is `tests/`): `target/`,
/// `envoy/`, `.venv/` and `tests/keys/` are found from here.
pub fn crate_root() -> PathBuf {
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    tests.parent().map(PathBuf::from).unwrap_or(tests)
}

/// The test process's self-signed certificate and key for `127.0.0.1` and `api.test` (P-256,
/// made once with `openssl` in a temporary directory), for listeners with `EnvoyOptions::tls`.
pub fn tls_files() -> &'static (PathBuf, PathBuf) {
    static FILES: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("api-guard-tls-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=api.test"])
            .args(["-addext", "subjectAltName=DNS:api.test,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("openssl (for the test certificate) cannot run: {e}"));
        assert!(
            status.success(),
            "openssl could not make the test certificate"
        );
        (cert, key)
    })
}

/// `$ENVOY` if set, else `<crate root>/.venv/bin/envoy`.
pub fn envoy_path() -> PathBuf {
    match std::env::var_os("ENVOY") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate_root().join(".venv/bin/envoy"),
    }
}

/// `$API_GUARD_WASM` if set, else
/// `<crate root>/target/wasm32-wasip1/release/api_guard.wasm`.
pub fn wasm_path() -> PathBuf {
    match std::env::var_os("API_GUARD_WASM") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate_root().join("target/wasm32-wasip1/release/api_guard.wasm"),
    }
}

/// Which build of api-guard the harness loads into Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    /// The proxy-wasm filter (`envoy.filters.http.wasm`, V8).
    Wasm,
    /// The dynamic module (`envoy.filters.http.dynamic_modules`, module `api_guard`).
    Module,
}

/// `API_GUARD_ADAPTER`: `module` for the dynamic module, anything else the wasm filter.
pub fn adapter() -> Adapter {
    match std::env::var("API_GUARD_ADAPTER").as_deref() {
        Ok("module") => Adapter::Module,
        _ => Adapter::Wasm,
    }
}

/// The line Envoy 1.40 logs when the module's ABI version is its own. On a mismatch it only
/// warns and loads the module anyway, so every Envoy the harness starts with the module must
/// have logged it.
pub const MODULE_ABI_MATCHED: &str = "Dynamic module ABI version v0.2.0 matched";

/// `$API_GUARD_MODULE_DIR` if set, else `<crate root>/target/release` (where `make module`
/// puts `libapi_guard.so`).
pub fn module_dir() -> PathBuf {
    match std::env::var_os("API_GUARD_MODULE_DIR") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate_root().join("target/release"),
    }
}

/// Panics unless the dynamic module exists; returns its directory (absolute).
fn require_module() -> PathBuf {
    let dir = module_dir();
    let file = dir.join("libapi_guard.so");
    if !file.is_file() {
        panic!(
            "dynamic module {} not found: run `make module`",
            file.display()
        );
    }
    dir.canonicalize().unwrap_or(dir)
}

/// What the filter entry of the config loads: the wasm file, or the module's directory.
fn require_filter_build() -> PathBuf {
    match adapter() {
        Adapter::Wasm => require_wasm(),
        Adapter::Module => require_module(),
    }
}

/// Panics unless the Envoy binary exists.
fn require_envoy() -> PathBuf {
    let p = envoy_path();
    if !p.is_file() {
        panic!(
            "Envoy not found at {}: run `make envoy` (or set ENVOY=/path/to/envoy)",
            p.display()
        );
    }
    p
}

/// Panics unless the wasm module exists; returns its absolute path.
fn require_wasm() -> PathBuf {
    let p = wasm_path();
    if !p.is_file() {
        panic!("wasm module {} not found: run `make build`", p.display());
    }
    p.canonicalize().unwrap_or(p)
}

#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// The plugin configuration (JSON). `None` = no wasm filter ("bare").
    pub plugin_config: Option<String>,
    /// Envoy worker threads (`--concurrency`). Default 2.
    pub concurrency: u32,
    /// Raw YAML list items appended to `static_resources.clusters`, written
    /// as at top level (`- name: foo\n  type: STATIC\n  ...`); the harness
    /// re-indents them.
    pub extra_clusters_yaml: Option<String>,
    /// The `upstream` cluster points at a loopback port nothing listens on,
    /// so Envoy answers every routed request itself (503, connection
    /// failure). The recording upstream still runs but receives nothing.
    pub upstream_down: bool,
    /// The route's upstream timeout (Envoy answers 504 past it); `None` =
    /// 5 s. Pair with the upstream's `/slow/<ms>`.
    pub route_timeout_ms: Option<u64>,
    /// Render the wasm filter without `allow_on_headers_stop_iteration: true`.
    pub omit_allow_on_headers_stop_iteration: bool,
    /// The listener's `per_connection_buffer_limit_bytes`; `None` = Envoy's 1 MiB.
    pub per_connection_buffer_limit_bytes: Option<u64>,
    /// The listener also accepts TLS on the same port ([`Envoy::https_request`]).
    pub tls: bool,
    /// An `http_filters` entry (YAML, as at top level) in place of the api-guard wasm filter
    /// the harness writes; `plugin_config` is then unused. In it and in `extra_files`,
    /// `@WASM@` stands for the wasm module's path and `@DIR@` for this Envoy's temp dir.
    pub wasm_filter_yaml: Option<String>,
    /// Files written into the temp dir before Envoy starts: (file name, contents), e.g. the
    /// extension config a `config_discovery` filter reads from a path.
    pub extra_files: Vec<(String, String)>,
    /// Top-level YAML appended to the bootstrap, e.g. `node: { id: ..., cluster: ... }`.
    pub extra_bootstrap_yaml: Option<String>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            plugin_config: None,
            concurrency: 2,
            extra_clusters_yaml: None,
            upstream_down: false,
            route_timeout_ms: None,
            omit_allow_on_headers_stop_iteration: false,
            per_connection_buffer_limit_bytes: None,
            tls: false,
            wasm_filter_yaml: None,
            extra_files: Vec::new(),
            extra_bootstrap_yaml: None,
        }
    }
}

/// Why Envoy did not become ready (see `Envoy::try_start`).
#[derive(Debug)]
pub struct StartError {
    pub reason: String,
    /// Envoy's whole log file.
    pub log: String,
    pub stderr: String,
    pub stdout: String,
    /// The config Envoy was given.
    pub config_yaml: String,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.reason)?;
        writeln!(f, "--- tail of Envoy log ---\n{}", tail(&self.log, 40))?;
        if !self.stderr.trim().is_empty() {
            writeln!(
                f,
                "--- tail of Envoy stderr ---\n{}",
                tail(&self.stderr, 20)
            )?;
        }
        if !self.stdout.trim().is_empty() {
            writeln!(
                f,
                "--- tail of Envoy stdout ---\n{}",
                tail(&self.stdout, 20)
            )?;
        }
        Ok(())
    }
}

/// A running Envoy with its own upstream. Killed (SIGKILL + wait) on drop.
pub struct Envoy {
    child: Child,
    port: u16,
    admin_port: u16,
    dir: PathBuf,
    startup: Duration,
    // Dropped after `Drop::drop` has killed Envoy.
    upstream: Upstream,
}

impl Envoy {
    /// Starts Envoy and waits until it is ready; panics with Envoy's log on
    /// failure.
    pub fn start(opts: EnvoyOptions) -> Envoy {
        Envoy::try_start(opts).unwrap_or_else(|e| panic!("Envoy failed to start: {e}"))
    }

    /// No wasm filter, concurrency 2.
    pub fn bare() -> Envoy {
        Envoy::start(EnvoyOptions::default())
    }

    /// The api-guard filter with `config_json`, concurrency 2.
    pub fn with_plugin(config_json: &str) -> Envoy {
        Envoy::start(EnvoyOptions {
            plugin_config: Some(config_json.to_string()),
            ..Default::default()
        })
    }

    /// Like `start`, but a config Envoy refuses (e.g. a plugin config the
    /// filter rejects) is an `Err` carrying Envoy's log. A missing Envoy or
    /// wasm file still panics.
    pub fn try_start(opts: EnvoyOptions) -> Result<Envoy, StartError> {
        let envoy_bin = require_envoy();
        let wasm = if opts.wasm_filter_yaml.is_some() {
            // A filter entry of the test's own (ECDS, an Istio-shaped config): proxy-wasm.
            Some(require_wasm())
        } else {
            opts.plugin_config.is_some().then(require_filter_build)
        };
        let upstream = Upstream::start();
        // A port that was free a moment ago and that nothing here listens on.
        let dead_port = opts.upstream_down.then(|| free_port_pair().0);

        // Ports are picked by binding :0 and releasing, so another process
        // may grab one before Envoy binds it: retry on a bind failure.
        const ATTEMPTS: usize = 3;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (port, admin_port) = free_port_pair();
            let yaml = config::render_with(
                &ConfigParams {
                    listener_port: port,
                    admin_port,
                    upstream_port: dead_port.unwrap_or(upstream.port()),
                    plugin: opts.plugin_config.as_deref().zip(wasm.as_deref()),
                    extra_clusters_yaml: opts.extra_clusters_yaml.as_deref(),
                },
                &RenderExtras {
                    route_timeout_ms: opts.route_timeout_ms,
                    omit_allow_on_headers_stop_iteration: opts.omit_allow_on_headers_stop_iteration,
                    per_connection_buffer_limit_bytes: opts.per_connection_buffer_limit_bytes,
                    tls: opts.tls,
                    wasm_filter_yaml: opts.wasm_filter_yaml.as_deref(),
                    extra_bootstrap_yaml: opts.extra_bootstrap_yaml.as_deref(),
                },
            );
            let instance = INSTANCE.fetch_add(1, Ordering::SeqCst);
            let dir = make_temp_dir(instance);
            let placeholders = |text: &str| {
                let wasm = wasm
                    .as_deref()
                    .map(Path::to_string_lossy)
                    .unwrap_or_default();
                text.replace("@WASM@", &wasm)
                    .replace("@DIR@", &dir.to_string_lossy())
            };
            let yaml = placeholders(&yaml);
            for (name, contents) in &opts.extra_files {
                let path = dir.join(name);
                fs::write(&path, placeholders(contents))
                    .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            }
            let started = Instant::now();
            match launch(
                &envoy_bin,
                &dir,
                &yaml,
                opts.concurrency,
                instance,
                admin_port,
            ) {
                Ok(child) => {
                    let startup = started.elapsed();
                    return Ok(Envoy {
                        child,
                        port,
                        admin_port,
                        dir,
                        startup,
                        upstream,
                    });
                }
                Err(e) => {
                    let bind_race =
                        e.log.contains("Address already in use") || e.log.contains("cannot bind");
                    if !keep_tmp() {
                        let _ = fs::remove_dir_all(&dir);
                    }
                    if bind_race && attempt < ATTEMPTS {
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// One request over TLS to the listener (started with `EnvoyOptions::tls`).
    pub fn https_request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        http::send_https(self.port, method, path, headers)
    }

    /// The listener with the filter chain.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port of the in-process upstream.
    pub fn upstream_port(&self) -> u16 {
        self.upstream.port()
    }

    /// This Envoy's temp dir (envoy.yaml, envoy.log, stdout.log, stderr.log).
    pub fn tmp_dir(&self) -> &Path {
        &self.dir
    }

    /// The YAML Envoy was started with.
    pub fn config_yaml(&self) -> String {
        fs::read_to_string(self.dir.join("envoy.yaml")).unwrap_or_default()
    }

    /// Time from spawning Envoy until it was ready.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Sends a request (path and headers verbatim; see `send_request`) to
    /// the filter listener. Panics on a transport error (with Envoy's log).
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        self.try_request(method, path, headers, None)
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {path} via Envoy failed: {e}\n--- tail of Envoy log ---\n{}",
                    tail(&self.log(), 30)
                )
            })
    }

    /// Like `request`, with a body (`Content-Length` added unless the
    /// caller supplies `content-length` or `transfer-encoding`).
    pub fn request_with_body(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.try_request(method, path, headers, Some(body))
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {path} via Envoy failed: {e}\n--- tail of Envoy log ---\n{}",
                    tail(&self.log(), 30)
                )
            })
    }

    /// Like `request`/`request_with_body` but returns transport errors
    /// (e.g. Envoy resetting the connection) instead of panicking.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        send_request(self.addr(), method, path, headers, body)
    }

    /// Writes `raw` bytes verbatim to the filter listener and reads one
    /// response: for malformed requests.
    pub fn request_raw(&self, raw: &[u8]) -> io::Result<Response> {
        send_raw(self.addr(), raw, false)
    }

    /// `GET` on the admin interface, e.g. `admin("/stats?filter=wasm")`.
    pub fn admin(&self, path: &str) -> Response {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.admin_port));
        send_request(addr, "GET", path, &[], None)
            .unwrap_or_else(|e| panic!("admin GET {path} failed: {e}"))
    }

    /// Everything that reached the upstream so far, in arrival order.
    pub fn upstream_requests(&self) -> Vec<RecordedRequest> {
        self.upstream.requests()
    }

    pub fn clear_upstream_requests(&self) {
        self.upstream.clear()
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.join("envoy.log"))
    }

    /// Polls the log until it contains `needle`; false on timeout.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- tail of Envoy log ({}) ---\n{}",
                self.dir.join("envoy.log").display(),
                tail(&self.log(), 40)
            );
        }
        if keep_tmp() {
            eprintln!("KEEP_ENVOY_TMP: Envoy files kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
        // `self.upstream` drops next and stops its accept thread.
    }
}

fn keep_tmp() -> bool {
    std::env::var_os("KEEP_ENVOY_TMP").is_some_and(|v| !v.is_empty())
}

fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `s`.
/// The test key `tests/keys/<name>.json`: a JWK, private members included.
pub fn test_key(name: &str) -> serde_json::Value {
    let path = crate_root().join(format!("tests/keys/{name}.json"));
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("test key {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("test key {}: {e}", path.display()))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A free loopback port (released again: the caller binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
        .port()
}

/// Two distinct free ports (both held while picking, then released).
fn free_port_pair() -> (u16, u16) {
    let bind = || {
        TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"))
    };
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| {
        l.local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"))
            .port()
    };
    (port(&a), port(&b))
}

fn make_temp_dir(instance: u32) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "api-guard-envoy-{}-{instance}-{nanos}",
        std::process::id()
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// A base id unique among concurrently running test processes and Envoys:
/// pid (mod 100000) * 100 + instance (mod 100) < 10^7, well inside u32
/// (Envoy derives further ids from it).
fn base_id(instance: u32) -> u32 {
    (std::process::id() % 100_000) * 100 + instance % 100
}

/// Writes the config, spawns Envoy and waits for readiness.
fn launch(
    envoy_bin: &Path,
    dir: &Path,
    yaml: &str,
    concurrency: u32,
    instance: u32,
    admin_port: u16,
) -> Result<Child, StartError> {
    let config_path = dir.join("envoy.yaml");
    let log_path = dir.join("envoy.log");
    let stdout_path = dir.join("stdout.log");
    let stderr_path = dir.join("stderr.log");
    fs::write(&config_path, yaml)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
    let out = File::create(&stdout_path).unwrap_or_else(|e| panic!("stdout file: {e}"));
    let err = File::create(&stderr_path).unwrap_or_else(|e| panic!("stderr file: {e}"));

    let mut cmd = Command::new(envoy_bin);
    cmd.arg("-c")
        .arg(&config_path)
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .arg("--base-id")
        .arg(base_id(instance).to_string())
        // No shared memory / domain sockets: nothing left behind by SIGKILL,
        // nothing shared between parallel Envoys.
        .arg("--disable-hot-restart")
        .arg("--log-path")
        .arg(&log_path)
        .arg("--log-level")
        .arg("info")
        .arg("--component-log-level")
        .arg("wasm:debug,dynamic_modules:debug")
        // Flush the log file promptly so `log()` / `wait_for_log` see recent lines.
        .arg("--file-flush-interval-msec")
        .arg("50")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if adapter() == Adapter::Module {
        // Envoy finds module `api_guard` as `lib api_guard.so` on this path.
        cmd.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", require_module());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", envoy_bin.display()));

    let fail = |reason: String| StartError {
        reason,
        log: read_lossy(&log_path),
        stderr: read_lossy(&stderr_path),
        stdout: read_lossy(&stdout_path),
        config_yaml: yaml.to_string(),
    };

    let ready = wait_ready(&mut child, admin_port).and_then(|()| {
        if yaml.contains("dynamic_module_config") {
            wait_for_abi_match(&log_path)
        } else {
            Ok(())
        }
    });
    match ready {
        Ok(()) => Ok(child),
        Err(reason) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(fail(format!("{reason} (files in {})", dir.display())))
        }
    }
}

/// Envoy loaded the module and said its ABI version matched (the log is flushed every 50 ms).
fn wait_for_abi_match(log_path: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if read_lossy(log_path).contains(MODULE_ABI_MATCHED) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "Envoy loaded the dynamic module without logging \"{MODULE_ABI_MATCHED}\": the \
                 module's ABI version is not this Envoy's"
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `GET /ready` until `200 LIVE` and the workers are started.
fn wait_ready(child: &mut Child, admin_port: u16) -> Result<(), String> {
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(format!("Envoy exited during startup: {}", describe(status)))
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot poll the Envoy process: {e}")),
        }
        if let Ok(r) = send_request(admin, "GET", "/ready", &[], None) {
            if r.status == 200 && r.body_str().trim() == "LIVE" {
                let workers =
                    send_request(admin, "GET", "/stats?filter=workers_started", &[], None);
                if workers
                    .is_ok_and(|w| w.body_str().contains("listener_manager.workers_started: 1"))
                {
                    return Ok(());
                }
            }
        }
        if start.elapsed() > READY_TIMEOUT {
            return Err(format!("Envoy not ready after {READY_TIMEOUT:?}"));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// The exact refusal a client sees from the filter: status, the three-field envelope whose
/// `request_id` matches the `x-request-id` header, and the `WWW-Authenticate` challenge (or none).
pub fn assert_refusal(
    case: &str,
    response: &Response,
    status: u16,
    code: &str,
    challenge: Option<&str>,
) {
    let body = assert_envelope(case, response, status, code);
    assert!(
        body.get("details").is_none(),
        "{case}: envelope has exactly three fields: {body}"
    );
    assert_eq!(
        response.header("www-authenticate"),
        challenge,
        "{case}: WWW-Authenticate"
    );
}
