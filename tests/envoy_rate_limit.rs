//! Rate limiting (issue 5) through a real Envoy: the filter built as wasm, loaded by Envoy 1.40,
//! in front of the harness's recording upstream. What a client sees is checked: statuses,
//! envelopes, rate-limit headers, what reached the upstream, the security events in Envoy's log,
//! and Envoy's resident memory.
//!
//! - `limits_are_exact_across_four_workers_and_slide`: `--concurrency 4`. The first requests of
//!   600 new keys, each sent by 32 threads at the same moment (limit 1: exactly one admitted, so
//!   the first insert of a counter does not race); then 32 threads on their own keep-alive
//!   connections (spread over all four workers) send 4 × L requests on one key, then on two keys
//!   interleaved: exactly L admitted per key, and exactly L upstream; a 2 s window admits again
//!   after Retry-After, and fully after two windows.
//! - `rate_limit_headers_on_every_response_of_a_limited_route_only`
//! - `limits_are_keyed_by_ip_principal_api_key_and_header`: `ip` is the connection's address
//!   (another source address, another counter); `principal` is the JWT `sub` or the API key id,
//!   anonymous falls back to the address; `api_key` is the key id; `header:<name>`.
//! - `x_forwarded_for_gives_no_fresh_ip_limit`
//! - `refused_credentials_count_against_the_client_ip`: brute force on a login route.
//! - `distinct_keys_flood_leaves_memory_bounded_and_limits_intact`: `max_tracked_keys: 1000`,
//!   200,000 distinct 1 KiB client keys (`make flood`: a million), at most 240 s, over keep-alive
//!   connections.
//!
//! Clients connect from chosen loopback addresses (127.0.0.x, bound before connecting), so that
//! `ip` keys can differ without trusting any header.
//!
//! How sensitive the races are was measured with a build whose shared-data `set` ignored the CAS
//! token: with L = 50 and fresh connections per request it still admitted exactly L; with
//! L = 2000 on keep-alive connections it admitted L + 2 to L + 12 in every run, and the
//! simultaneous first requests admitted two on 1 to 4 keys in 300.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use api_guard_core::authn::jwt::alg::Alg;
use api_guard_core::support::mint;
use common::{bearer, claims, sign, test_key, unix_now, Envoy, EnvoyOptions, Response};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "https://api.test";
const RATE_LIMIT_HEADERS: [&str; 6] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit-policy",
    "ratelimit",
    "retry-after",
];
const LOCALHOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client: keep-alive, and a chosen source address
// ---------------------------------------------------------------------------------------------

/// `connect(2)` from a chosen local address: std cannot bind a client socket before connecting,
/// and the whole 127.0.0.0/8 is loopback on Linux, so `127.0.0.x` are distinct client IPs to
/// Envoy.
mod bound_socket {
    use std::io;
    use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
    use std::os::fd::FromRawFd;

    /// `struct sockaddr_in` (Linux).
    #[repr(C)]
    struct SockaddrIn {
        sin_family: u16,
        /// Network byte order.
        sin_port: u16,
        /// Network byte order.
        sin_addr: u32,
        sin_zero: [u8; 8],
    }

    const AF_INET: i32 = 2;
    const SOCK_STREAM: i32 = 1;
    const SOCK_CLOEXEC: i32 = 0o2_000_000;

    extern "C" {
        fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
        fn bind(fd: i32, address: *const SockaddrIn, length: u32) -> i32;
        fn connect(fd: i32, address: *const SockaddrIn, length: u32) -> i32;
    }

    fn sockaddr(address: SocketAddrV4) -> SockaddrIn {
        SockaddrIn {
            sin_family: AF_INET as u16,
            sin_port: address.port().to_be(),
            sin_addr: u32::from_ne_bytes(address.ip().octets()),
            sin_zero: [0; 8],
        }
    }

    pub fn connect_from(source: Ipv4Addr, destination: SocketAddrV4) -> io::Result<TcpStream> {
        let length = std::mem::size_of::<SockaddrIn>() as u32;
        // SAFETY: plain socket syscalls on a descriptor this function owns; the stream takes
        // ownership right away, so every error path closes it.
        unsafe {
            let fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let stream = TcpStream::from_raw_fd(fd);
            let local = sockaddr(SocketAddrV4::new(source, 0));
            if bind(fd, &local, length) != 0 {
                return Err(io::Error::last_os_error());
            }
            let remote = sockaddr(destination);
            if connect(fd, &remote, length) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(stream)
        }
    }
}

const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP/1.1 client of the filter listener that keeps its connection alive between requests
/// (reconnecting when Envoy closes it) and connects from `source`.
struct Client {
    destination: SocketAddrV4,
    source: Ipv4Addr,
    connection: Option<BufReader<TcpStream>>,
}

impl Client {
    fn keep_alive(envoy: &Envoy, source: Ipv4Addr) -> Client {
        Client {
            destination: SocketAddrV4::new(LOCALHOST, envoy.port()),
            source,
            connection: None,
        }
    }

    /// One GET; panics on a transport error.
    fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.try_get(path, headers)
            .unwrap_or_else(|e| panic!("GET {path} from {}: {e}", self.source))
    }

    fn try_get(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
        self.start_request(path, headers)?;
        self.finish_request()
    }

    /// Writes a request without its final empty line: Envoy has parsed it but cannot act on it
    /// yet. [`Client::finish_request`] sends the rest, so that requests from many threads can
    /// reach Envoy's workers at the same moment.
    fn start_request(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<()> {
        if self.connection.is_none() {
            let stream = bound_socket::connect_from(self.source, self.destination)?;
            stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
            stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
            stream.set_nodelay(true)?;
            self.connection = Some(BufReader::new(stream));
        }
        let mut request = format!("GET {path} HTTP/1.1\r\nhost: api.test\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        let connection = self.connection.as_mut().expect("connected above");
        let written = connection.get_mut().write_all(request.as_bytes());
        if written.is_err() {
            self.connection = None;
        }
        written
    }

    fn finish_request(&mut self) -> io::Result<Response> {
        let connection = self
            .connection
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no request started"))?;
        let outcome = connection
            .get_mut()
            .write_all(b"\r\n")
            .and_then(|()| read_response(connection));
        match outcome {
            Ok(response) => {
                let closing = response
                    .header("connection")
                    .is_some_and(|c| c.eq_ignore_ascii_case("close"));
                if closing {
                    self.connection = None;
                }
                Ok(response)
            }
            Err(e) => {
                self.connection = None;
                Err(e)
            }
        }
    }
}

fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed mid-response",
        ));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// One response (Content-Length or chunked body; no 1xx, no HEAD).
fn read_response(reader: &mut impl BufRead) -> io::Result<Response> {
    let status_line = read_line(reader)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad header {line:?}"))
        })?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
    if chunked {
        loop {
            let size_line = read_line(reader)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                while !read_line(reader)?.is_empty() {}
                break;
            }
            let start = response.body.len();
            response.body.resize(start + size, 0);
            reader.read_exact(&mut response.body[start..])?;
            read_line(reader)?;
        }
    } else if let Some(length) = response.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        response.body = body;
    }
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Distinguishes the keys of one test run from any other (all counters are per Envoy anyway).
fn nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}", nanos % 0xffff_ffff_ffff)
}

fn header_u64(case: &str, response: &Response, name: &str) -> u64 {
    let value = response
        .header(name)
        .unwrap_or_else(|| panic!("{case}: no {name} header; headers {:?}", response.headers));
    value
        .parse()
        .unwrap_or_else(|_| panic!("{case}: {name} is not a number: {value:?}"))
}

/// A 429 exactly as the spec words it: the `rate_limited` envelope with the request id,
/// `Retry-After` ≥ 1, `X-RateLimit-Remaining: 0`. Returns Retry-After.
fn assert_rate_limited(case: &str, response: &Response) -> u64 {
    assert_eq!(
        response.status,
        429,
        "{case}: status; body {}",
        response.body_str()
    );
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{case}: content-type"
    );
    let request_id = response
        .header("x-request-id")
        .unwrap_or_else(|| panic!("{case}: x-request-id header"));
    let body = response.json();
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("{case}: body not an object: {body}"));
    assert_eq!(object.len(), 3, "{case}: envelope has three fields: {body}");
    assert_eq!(body["code"], "rate_limited", "{case}: code");
    assert_eq!(body["request_id"], request_id, "{case}: request_id");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{case}: error sentence"
    );
    let retry_after = header_u64(case, response, "retry-after");
    assert!(retry_after >= 1, "{case}: Retry-After {retry_after} ≥ 1");
    assert_eq!(
        header_u64(case, response, "x-ratelimit-remaining"),
        0,
        "{case}: X-RateLimit-Remaining on a 429"
    );
    retry_after
}

/// A JWT for `sub` that the provider of [`jwt_section`] accepts (HS256).
fn token_for(sub: &str) -> String {
    sign(
        "hs512",
        Alg::HS256,
        &claims(ISSUER, AUDIENCE, sub, json!({})),
    )
}

fn jwt_section() -> Value {
    json!({ "providers": [{
        "name": "main",
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "algorithms": ["HS256"],
        "jwks": { "inline": { "keys": [ mint::public_jwk(&test_key("hs512")) ] } }
    }]})
}

/// Every security event `rate_limited` in the log.
fn rate_limited_events(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| {
            line.find("{\"type\":\"security_event\"")
                .map(|i| &line[i..])
        })
        .filter_map(|json| serde_json::from_str::<Value>(json).ok())
        .filter(|event| event["event"] == "rate_limited")
        .collect()
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Connections each Envoy worker accepted on the filter listener (admin per-worker stats).
fn connections_per_worker(envoy: &Envoy) -> BTreeMap<String, u64> {
    let stats = envoy.admin("/stats?filter=downstream_cx_total").body_str();
    let listener = format!("listener.127.0.0.1_{}.worker_", envoy.port());
    stats
        .lines()
        .filter_map(|line| line.strip_prefix(&listener))
        .filter_map(|rest| rest.split_once(".downstream_cx_total: "))
        .map(|(worker, count)| {
            (
                format!("worker_{worker}"),
                count.trim().parse().unwrap_or(0),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Exactness across workers, and the sliding window
// ---------------------------------------------------------------------------------------------

const BURST_LIMIT: u64 = 2000;
const BURST_THREADS: usize = 32;

/// What a burst of requests from many threads produced.
#[derive(Default)]
struct BurstTally {
    admitted: BTreeMap<String, u64>,
    refused: BTreeMap<String, u64>,
    other: Vec<String>,
}

/// `per_key` requests on each of `keys`, from `BURST_THREADS` threads released together, each on
/// its own keep-alive connection (the kernel spreads them over Envoy's four workers), keys
/// interleaved. Keep-alive keeps the workers busy with the burst rather than with handshakes.
fn burst(envoy: &Envoy, path: &str, keys: &[String], per_key: u64) -> BurstTally {
    let total = per_key as usize * keys.len();
    let next = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(BURST_THREADS));
    let results: Vec<Vec<(String, Response)>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..BURST_THREADS)
            .map(|_| {
                let next = Arc::clone(&next);
                let start = Arc::clone(&start);
                scope.spawn(move || {
                    let mut client = Client::keep_alive(envoy, LOCALHOST);
                    let mut seen = Vec::new();
                    // Connected before the start, so that the burst is all requests.
                    let warm = client.get("/unlimited", &[]);
                    assert_eq!(warm.status, 404, "connection warm-up");
                    start.wait();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                        if i >= total {
                            break;
                        }
                        let key = &keys[i % keys.len()];
                        let response = client
                            .try_get(path, &[("x-client", key)])
                            .unwrap_or_else(|e| panic!("burst on {path}: {e}"));
                        seen.push((key.clone(), response));
                    }
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut tally = BurstTally::default();
    for (key, response) in results.into_iter().flatten() {
        match response.status {
            200 => *tally.admitted.entry(key).or_default() += 1,
            429 => {
                assert_rate_limited(&format!("burst on {key}"), &response);
                *tally.refused.entry(key).or_default() += 1;
            }
            other => tally
                .other
                .push(format!("{key}: {other} {}", response.body_str())),
        }
    }
    tally
}

const FIRST_RACE_ROUNDS: usize = 600;

/// `rounds` new keys under the `single` limit (1 request): for each, `BURST_THREADS` threads
/// send its first request all but the final empty line, wait for each other, then complete it,
/// so that the requests reach Envoy's workers at the same moment. Returns the admissions per
/// key.
fn first_requests_race(envoy: &Envoy, label: &str, rounds: usize) -> BTreeMap<String, u64> {
    let start = Barrier::new(BURST_THREADS);
    let statuses: Vec<Vec<(String, u16)>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..BURST_THREADS)
            .map(|_| {
                let start = &start;
                scope.spawn(move || {
                    let mut client = Client::keep_alive(envoy, LOCALHOST);
                    assert_eq!(client.get("/unlimited", &[]).status, 404);
                    (0..rounds)
                        .map(|round| {
                            let key = format!("{label}-{round}");
                            client
                                .start_request("/single/x", &[("x-client", &key)])
                                .unwrap_or_else(|e| panic!("first request of {key}: {e}"));
                            start.wait();
                            let response = client
                                .finish_request()
                                .unwrap_or_else(|e| panic!("first request of {key}: {e}"));
                            (key, response.status)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut admitted = BTreeMap::new();
    for (key, status) in statuses.into_iter().flatten() {
        assert!(
            status == 200 || status == 429,
            "first request of {key}: {status}"
        );
        *admitted.entry(key).or_insert(0) += u64::from(status == 200);
    }
    admitted
}

#[test]
fn limits_are_exact_across_four_workers_and_slide() {
    let config = json!({
        "rate_limits": {
            // A year: a burst that straddled a fixed-window boundary would rightly be admitted a
            // little more (the previous window's weight shrinks as the window slides), which is
            // not what these exactness checks are about.
            "burst": { "requests": BURST_LIMIT, "window_seconds": 31536000, "key": "header:x-client" },
            "short": { "requests": 5, "window_seconds": 2, "key": "header:x-client" },
            "single": { "requests": 1, "window_seconds": 31536000, "key": "header:x-client" }
        },
        "routes": [
            { "name": "burst", "match": { "path_prefix": "/burst/" }, "auth": "none", "rate_limit": "burst" },
            { "name": "short", "match": { "path_prefix": "/short/" }, "auth": "none", "rate_limit": "short" },
            { "name": "single", "match": { "path_prefix": "/single/" }, "auth": "none", "rate_limit": "single" }
        ]
    });
    let envoy = Envoy::start(EnvoyOptions {
        plugin_config: Some(config.to_string()),
        concurrency: 4,
        ..Default::default()
    });
    let run = nonce();

    // The first request of a key creates its counter: many at once, on several workers, all
    // find no counter; exactly one may create it (insert-if-absent), the others decide again.
    let first_keys = first_requests_race(&envoy, &format!("single-{run}"), FIRST_RACE_ROUNDS);
    let wrong: Vec<_> = first_keys.iter().filter(|(_, &n)| n != 1).collect();
    println!(
        "first requests: {} keys, each hit by {BURST_THREADS} simultaneous requests; \
         admissions per key other than 1: {wrong:?}",
        first_keys.len()
    );
    assert!(
        wrong.is_empty(),
        "limit 1: exactly one of the simultaneous first requests of a key is admitted: {wrong:?}"
    );

    // One key, 4 × L requests from 32 threads at once: exactly L admitted.
    let one = format!("one-{run}");
    let tally = burst(
        &envoy,
        "/burst/one",
        std::slice::from_ref(&one),
        4 * BURST_LIMIT,
    );
    let workers = connections_per_worker(&envoy);
    println!(
        "one key: {:?} admitted, {:?} refused; connections per worker {workers:?}",
        tally.admitted, tally.refused
    );
    assert!(
        tally.other.is_empty(),
        "unexpected statuses: {:?}",
        tally.other
    );
    let contention = envoy.log().matches("retries exhausted").count();
    assert_eq!(
        tally.admitted.get(&one).copied().unwrap_or(0),
        BURST_LIMIT,
        "exactly L admitted on one key ({contention} contention refusals in the log)"
    );
    assert_eq!(
        tally.refused.get(&one).copied().unwrap_or(0),
        3 * BURST_LIMIT,
        "the rest refused"
    );
    let upstream_one = envoy
        .upstream_requests()
        .iter()
        .filter(|r| r.header("x-client") == Some(one.as_str()))
        .count() as u64;
    assert_eq!(upstream_one, BURST_LIMIT, "exactly L reached the upstream");
    assert_eq!(
        workers.len(),
        4,
        "per-worker listener stats for four workers: {workers:?}"
    );
    // 32 connections over 4 workers: all four almost always; three leave no doubt that the
    // count was shared between workers.
    assert!(
        workers.values().filter(|&&n| n > 0).count() >= 3,
        "the workers took connections, so the limit was shared across workers: {workers:?}"
    );

    // Two keys at once, interleaved over the same threads: each exactly L.
    let keys = [format!("a-{run}"), format!("b-{run}")];
    envoy.clear_upstream_requests();
    let tally = burst(&envoy, "/burst/two", &keys, 4 * BURST_LIMIT);
    println!(
        "two keys: {:?} admitted, {:?} refused",
        tally.admitted, tally.refused
    );
    assert!(
        tally.other.is_empty(),
        "unexpected statuses: {:?}",
        tally.other
    );
    let upstream = envoy.upstream_requests();
    for key in &keys {
        assert_eq!(
            tally.admitted.get(key).copied().unwrap_or(0),
            BURST_LIMIT,
            "{key}: exactly L admitted with another key racing"
        );
        assert_eq!(
            tally.refused.get(key).copied().unwrap_or(0),
            3 * BURST_LIMIT,
            "{key}: the rest refused"
        );
        let reached = upstream
            .iter()
            .filter(|r| r.header("x-client") == Some(key.as_str()))
            .count() as u64;
        assert_eq!(reached, BURST_LIMIT, "{key}: exactly L upstream");
    }

    // The first key is still refused: its counter was neither reset nor shared with the others.
    let mut client = Client::keep_alive(&envoy, LOCALHOST);
    assert_rate_limited(
        "first key after the others",
        &client.get("/burst/one", &[("x-client", &one)]),
    );

    // Sliding: 5 per 2 s. Burst, refused; admitted again after Retry-After; after two whole
    // windows the full budget is back.
    let slider = format!("slide-{run}");
    let headers = [("x-client", slider.as_str())];
    let admitted_in_burst = |client: &mut Client| -> (u64, u64) {
        let mut admitted = 0;
        loop {
            let response = client.get("/short/x", &headers);
            if response.status == 429 {
                return (admitted, assert_rate_limited("short window", &response));
            }
            assert_eq!(
                response.status,
                200,
                "short window: {}",
                response.body_str()
            );
            admitted += 1;
            assert!(admitted <= 5, "short window admitted more than 5");
        }
    };
    let (first, retry_after) = admitted_in_burst(&mut client);
    assert_eq!(first, 5, "short window: a burst admits exactly 5");
    assert!(
        retry_after <= 4,
        "short window: Retry-After {retry_after} within two windows"
    );
    thread::sleep(Duration::from_secs(retry_after) + Duration::from_millis(100));
    let after_retry = client.get("/short/x", &headers);
    assert_eq!(
        after_retry.status,
        200,
        "admitted once Retry-After ({retry_after} s) has passed: {}",
        after_retry.body_str()
    );
    let _ = admitted_in_burst(&mut client);
    // Two whole windows (4 s) plus a generous margin for a loaded machine.
    thread::sleep(Duration::from_millis(5_500));
    let (again, _) = admitted_in_burst(&mut client);
    assert_eq!(
        again, 5,
        "short window: after the window slid, exactly 5 admitted again"
    );
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

#[test]
fn rate_limit_headers_on_every_response_of_a_limited_route_only() {
    let config = json!({
        "rate_limits": {
            "reads": { "requests": 5, "window_seconds": 60, "key": "header:x-client" }
        },
        "routes": [
            { "name": "limited", "match": { "path_prefix": "/limited/" }, "auth": "none", "rate_limit": "reads" },
            { "name": "limited-errors", "match": { "path_prefix": "/status/" }, "auth": "none", "rate_limit": "reads" },
            { "name": "free", "match": { "path_prefix": "/free/" }, "auth": "none" }
        ]
    });
    let envoy = Envoy::with_plugin(&config.to_string());
    let mut client = Client::keep_alive(&envoy, LOCALHOST);
    let key = format!("headers-{}", nonce());
    let headers = [("x-client", key.as_str())];

    for expected_remaining in (0..5).rev() {
        let case = format!("admitted, remaining {expected_remaining}");
        let response = client.get("/limited/doc", &headers);
        assert_eq!(response.status, 200, "{case}: {}", response.body_str());
        assert_eq!(
            header_u64(&case, &response, "x-ratelimit-limit"),
            5,
            "{case}"
        );
        assert_eq!(
            header_u64(&case, &response, "x-ratelimit-remaining"),
            expected_remaining,
            "{case}: remaining decreases by one per admission"
        );
        let reset = header_u64(&case, &response, "x-ratelimit-reset");
        assert!(
            (1..=120).contains(&reset),
            "{case}: X-RateLimit-Reset {reset} within two windows"
        );
        assert_eq!(
            response.header("ratelimit-policy"),
            Some("\"reads\";q=5;w=60"),
            "{case}: RateLimit-Policy"
        );
        assert_eq!(
            response.header("ratelimit"),
            Some(format!("\"reads\";r={expected_remaining};t={reset}").as_str()),
            "{case}: RateLimit agrees with the X- headers"
        );
        assert_eq!(
            response.header("retry-after"),
            None,
            "{case}: no Retry-After"
        );
        for name in RATE_LIMIT_HEADERS {
            assert!(
                response.header_all(name).len() <= 1,
                "{case}: {name} appears once"
            );
        }
    }

    let refused = client.get("/limited/doc", &headers);
    let retry_after = assert_rate_limited("over the limit", &refused);
    assert!(
        retry_after <= 120,
        "Retry-After {retry_after} within two windows"
    );
    assert_eq!(header_u64("429", &refused, "x-ratelimit-limit"), 5);
    assert_eq!(
        header_u64("429", &refused, "x-ratelimit-reset"),
        retry_after,
        "on a 429 the window frees a request exactly when Retry-After says"
    );
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"reads\";q=5;w=60")
    );
    assert_eq!(
        refused.header("ratelimit"),
        Some(format!("\"reads\";r=0;t={retry_after}").as_str())
    );

    // An upstream error on a limited route (rewritten to the envelope) keeps the headers.
    let other_key = format!("errors-{}", nonce());
    let upstream_error = client.get("/status/503", &[("x-client", &other_key)]);
    assert_eq!(upstream_error.status, 503, "{}", upstream_error.body_str());
    assert_eq!(upstream_error.json()["code"], "upstream_error");
    assert_eq!(header_u64("503", &upstream_error, "x-ratelimit-limit"), 5);
    assert_eq!(
        header_u64("503", &upstream_error, "x-ratelimit-remaining"),
        4
    );
    assert!(
        upstream_error.header("ratelimit").is_some(),
        "503: RateLimit"
    );

    // A route without a limit carries none of them, even for a client over another limit.
    for (case, response) in [
        ("free route", client.get("/free/doc", &headers)),
        ("free route, other client", client.get("/free/doc", &[])),
    ] {
        assert_eq!(response.status, 200, "{case}: {}", response.body_str());
        for name in RATE_LIMIT_HEADERS {
            assert_eq!(response.header(name), None, "{case}: no {name}");
        }
    }
    // And neither does a request that matches no route.
    let unrouted = client.get("/nowhere", &headers);
    assert_eq!(unrouted.status, 404);
    for name in RATE_LIMIT_HEADERS {
        assert_eq!(unrouted.header(name), None, "404: no {name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// Requests until the first non-200; returns how many were admitted and the first refusal.
fn admitted_until_refused(
    client: &mut Client,
    path: &str,
    headers: &[(&str, &str)],
    at_most: u64,
) -> (u64, Response) {
    let mut admitted = 0;
    loop {
        let response = client.get(path, headers);
        if response.status != 200 {
            return (admitted, response);
        }
        admitted += 1;
        assert!(
            admitted <= at_most,
            "{path} {headers:?}: more than {at_most} admitted"
        );
    }
}

#[test]
fn limits_are_keyed_by_ip_principal_api_key_and_header() {
    let key_a = mint::generate_api_key("ag_test_").unwrap();
    let key_b = mint::generate_api_key("ag_test_").unwrap();
    let snippet = |key: &str, id: &str| {
        serde_json::to_value(mint::api_key_snippet(key, "ag_test_", Some(id), &[], None).unwrap())
            .unwrap()
    };
    let config = json!({
        "jwt": jwt_section(),
        "api_keys": { "header": "x-api-key", "keys": [snippet(&key_a, "svc-a"), snippet(&key_b, "svc-b")] },
        "rate_limits": {
            "per_ip": { "requests": 3, "window_seconds": 600, "key": "ip" },
            "per_user": { "requests": 3, "window_seconds": 600, "key": "principal" },
            "per_caller": { "requests": 2, "window_seconds": 600, "key": "principal" },
            "per_key": { "requests": 3, "window_seconds": 600, "key": "api_key" },
            "per_tenant": { "requests": 2, "window_seconds": 600, "key": "header:X-Tenant" }
        },
        "routes": [
            { "name": "by-ip", "match": { "path_prefix": "/by-ip/" }, "auth": "none", "rate_limit": "per_ip" },
            { "name": "me", "match": { "path_prefix": "/me/" }, "auth": "jwt", "rate_limit": "per_user" },
            { "name": "anon", "match": { "path_prefix": "/anon/" }, "auth": "none", "rate_limit": "per_caller" },
            { "name": "mixed", "match": { "path_prefix": "/mixed/" }, "auth": "jwt_or_api_key", "rate_limit": "per_caller" },
            { "name": "svc", "match": { "path_prefix": "/svc/" }, "auth": "api_key", "rate_limit": "per_key" },
            { "name": "tenant", "match": { "path_prefix": "/tenant/" }, "auth": "none", "rate_limit": "per_tenant" }
        ]
    });
    let envoy = Envoy::with_plugin(&config.to_string());
    let mut from_1 = Client::keep_alive(&envoy, LOCALHOST);
    let mut from_2 = Client::keep_alive(&envoy, Ipv4Addr::new(127, 0, 0, 2));
    let mut from_3 = Client::keep_alive(&envoy, Ipv4Addr::new(127, 0, 0, 3));

    // `ip`: the connection's address; another address has another counter. (That a client's
    // X-Forwarded-For is no way to a fresh counter: `x_forwarded_for_gives_no_fresh_ip_limit`.)
    let (admitted, refusal) = admitted_until_refused(&mut from_1, "/by-ip/x", &[], 3);
    assert_eq!(admitted, 3, "ip: 3 admitted from 127.0.0.1");
    assert_rate_limited("ip: 4th from 127.0.0.1", &refusal);
    let (admitted, refusal) = admitted_until_refused(&mut from_2, "/by-ip/x", &[], 3);
    assert_eq!(admitted, 3, "ip: another address has its own counter");
    assert_rate_limited("ip: 4th from 127.0.0.2", &refusal);

    // `principal` = JWT `sub`: each user their own counter, whatever the address.
    let alice = bearer(&token_for("alice"));
    let bob = bearer(&token_for("bob"));
    let carol = bearer(&token_for("carol"));
    let (admitted, refusal) =
        admitted_until_refused(&mut from_1, "/me/x", &[("authorization", &alice)], 3);
    assert_eq!(admitted, 3, "principal: alice admitted 3 times");
    assert_rate_limited("principal: alice 4th", &refusal);
    assert_rate_limited(
        "principal: alice from another address is still alice",
        &from_2.get("/me/x", &[("authorization", &alice)]),
    );
    let (admitted, refusal) =
        admitted_until_refused(&mut from_1, "/me/x", &[("authorization", &bob)], 3);
    assert_eq!(
        admitted, 3,
        "principal: bob has his own counter, same address"
    );
    assert_rate_limited("principal: bob 4th", &refusal);
    // Anonymous (refused) requests on the principal limit count against the address...
    for i in 0..3 {
        let response = from_3.get("/me/x", &[]);
        assert_eq!(
            response.status,
            401,
            "anonymous #{i}: {}",
            response.body_str()
        );
    }
    assert_rate_limited("anonymous 4th from 127.0.0.3", &from_3.get("/me/x", &[]));
    // ...and not against a user on that address.
    let (admitted, refusal) =
        admitted_until_refused(&mut from_3, "/me/x", &[("authorization", &carol)], 3);
    assert_eq!(admitted, 3, "principal: carol on the exhausted address");
    assert_rate_limited("principal: carol 4th", &refusal);

    // `principal` on a route without authentication: every request is anonymous, keyed by IP.
    let (admitted, refusal) = admitted_until_refused(&mut from_1, "/anon/x", &[], 2);
    assert_eq!(admitted, 2, "anonymous principal falls back to the IP");
    assert_rate_limited("anonymous principal 3rd", &refusal);
    assert_eq!(
        from_2.get("/anon/x", &[]).status,
        200,
        "anonymous principal: another IP, another counter"
    );
    // The same limit on a route with API keys: the principal is the key id, not the address
    // that just exhausted it.
    let (admitted, refusal) =
        admitted_until_refused(&mut from_1, "/mixed/x", &[("x-api-key", &key_a)], 2);
    assert_eq!(admitted, 2, "principal = API key id");
    assert_rate_limited("principal svc-a 3rd", &refusal);
    let (admitted, refusal) =
        admitted_until_refused(&mut from_1, "/mixed/x", &[("authorization", &alice)], 2);
    assert_eq!(admitted, 2, "principal = JWT sub on the same limit");
    assert_rate_limited("principal alice on per_caller 3rd", &refusal);

    // `api_key`: the key id. Two keys from one address, two counters; one key from two
    // addresses, one counter.
    let (admitted, refusal) =
        admitted_until_refused(&mut from_1, "/svc/x", &[("x-api-key", &key_a)], 3);
    assert_eq!(admitted, 3, "api_key: svc-a");
    assert_rate_limited("api_key: svc-a 4th", &refusal);
    assert_rate_limited(
        "api_key: svc-a from another address",
        &from_2.get("/svc/x", &[("authorization", &format!("ApiKey {key_a}"))]),
    );
    let (admitted, refusal) =
        admitted_until_refused(&mut from_1, "/svc/x", &[("x-api-key", &key_b)], 3);
    assert_eq!(admitted, 3, "api_key: svc-b has its own counter");
    assert_rate_limited("api_key: svc-b 4th", &refusal);
    let svc = envoy
        .upstream_requests()
        .iter()
        .filter(|r| r.path == "/svc/x")
        .map(|r| r.header("x-api-key-id").unwrap_or("").to_string())
        .collect::<Vec<_>>();
    assert_eq!(svc, ["svc-a", "svc-a", "svc-a", "svc-b", "svc-b", "svc-b"]);

    // `header:<name>` (configured with upper-case letters: header names are case-insensitive).
    let run = nonce();
    let acme = format!("acme-{run}");
    let globex = format!("globex-{run}");
    let (admitted, refusal) =
        admitted_until_refused(&mut from_1, "/tenant/x", &[("x-tenant", &acme)], 2);
    assert_eq!(admitted, 2, "header: acme");
    assert_rate_limited("header: acme 3rd", &refusal);
    assert_rate_limited(
        "header: acme from another address",
        &from_2.get("/tenant/x", &[("X-Tenant", &acme)]),
    );
    let (admitted, refusal) =
        admitted_until_refused(&mut from_1, "/tenant/x", &[("x-tenant", &globex)], 2);
    assert_eq!(admitted, 2, "header: globex has its own counter");
    assert_rate_limited("header: globex 3rd", &refusal);
}

/// The `ip` key is the downstream address Envoy computed, never what a client writes into
/// X-Forwarded-For: a client rotating X-Forwarded-For values must stay on its one counter.
///
/// This holds only when the Envoy in front is the edge (`use_remote_address: true`): with the
/// connection manager's default (`use_remote_address: false`, no trusted hops), Envoy takes the
/// last X-Forwarded-For address as the downstream address, and `source.address` with it.
#[test]
fn x_forwarded_for_gives_no_fresh_ip_limit() {
    let config = json!({
        "rate_limits": {
            "per_ip": { "requests": 3, "window_seconds": 600, "key": "ip" },
            "per_caller": { "requests": 2, "window_seconds": 600, "key": "principal" }
        },
        "routes": [
            { "name": "by-ip", "match": { "path_prefix": "/by-ip/" }, "auth": "none", "rate_limit": "per_ip" },
            { "name": "anon", "match": { "path_prefix": "/anon/" }, "auth": "none", "rate_limit": "per_caller" }
        ]
    });
    let envoy = Envoy::with_plugin(&config.to_string());
    let mut client = Client::keep_alive(&envoy, LOCALHOST);
    let (admitted, refusal) = admitted_until_refused(&mut client, "/by-ip/x", &[], 3);
    assert_eq!(admitted, 3, "ip: 3 admitted from 127.0.0.1");
    assert_rate_limited("ip: 4th from 127.0.0.1", &refusal);
    let (admitted, refusal) = admitted_until_refused(&mut client, "/anon/x", &[], 2);
    assert_eq!(
        admitted, 2,
        "anonymous principal: 2 admitted from 127.0.0.1"
    );
    assert_rate_limited("anonymous principal: 3rd", &refusal);

    let mut fresh_limits = Vec::new();
    for i in 0..5 {
        let spoofed = format!("203.0.113.{}", 10 + i);
        let chained = format!("{spoofed}, 198.51.100.{}", 10 + i);
        for (path, headers) in [
            ("/by-ip/x", vec![("x-forwarded-for", spoofed.as_str())]),
            ("/by-ip/x", vec![("x-forwarded-for", chained.as_str())]),
            ("/by-ip/x", vec![("x-real-ip", spoofed.as_str())]),
            ("/anon/x", vec![("x-forwarded-for", spoofed.as_str())]),
        ] {
            let response = client.get(path, &headers);
            if response.status != 429 {
                fresh_limits.push(format!("{path} {headers:?}: {}", response.status));
            } else {
                assert_rate_limited(&format!("{path} {headers:?}"), &response);
            }
        }
    }
    assert!(
        fresh_limits.is_empty(),
        "127.0.0.1, over its limits, got fresh ones by writing X-Forwarded-For: {fresh_limits:#?}\n\
         (the upstream saw x-forwarded-for {:?})",
        envoy
            .upstream_requests()
            .iter()
            .map(|r| r.header("x-forwarded-for").unwrap_or("-").to_string())
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Brute force
// ---------------------------------------------------------------------------------------------

#[test]
fn refused_credentials_count_against_the_client_ip() {
    let config = json!({
        "jwt": jwt_section(),
        "rate_limits": {
            "login": { "requests": 3, "window_seconds": 900, "key": "ip" }
        },
        "routes": [
            { "name": "login", "match": { "path_exact": "/login" }, "auth": "jwt", "rate_limit": "login" }
        ]
    });
    let envoy = Envoy::with_plugin(&config.to_string());
    let mut attacker = Client::keep_alive(&envoy, Ipv4Addr::new(127, 0, 0, 7));
    // Signed with a secret the provider does not have (same kid): a wrong password, in effect.
    let wrong_secret = json!({
        "kty": "oct",
        "kid": "test-hmac",
        "k": "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZy1zZWNyZXQtd3Jvbmctc2VjcmV0LXdyb25n"
    });
    let forged = {
        let claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": unix_now(), "exp": unix_now() + 600
        });
        bearer(&mint::sign(&wrong_secret, Alg::HS256, claims.as_object().unwrap()).unwrap())
    };

    for (i, expected_remaining) in [2u64, 1, 0].into_iter().enumerate() {
        let case = format!("bad token #{}", i + 1);
        let response = attacker.get("/login", &[("authorization", &forged)]);
        assert_eq!(response.status, 401, "{case}: {}", response.body_str());
        assert_eq!(response.json()["code"], "invalid_token", "{case}");
        assert_eq!(
            header_u64(&case, &response, "x-ratelimit-remaining"),
            expected_remaining,
            "{case}: the refused attempt was counted"
        );
    }
    let limited = attacker.get("/login", &[("authorization", &forged)]);
    assert_rate_limited("4th bad token", &limited);
    // The limit holds for the address: a right guess now is refused too, and nothing went up.
    let valid = bearer(&token_for("alice"));
    assert_rate_limited(
        "valid token after the brute force",
        &attacker.get("/login", &[("authorization", &valid)]),
    );
    assert_rate_limited(
        "no token after the brute force",
        &attacker.get("/login", &[]),
    );
    assert!(envoy.upstream_requests().is_empty(), "nothing upstream");
    // Another address is not punished.
    let mut other = Client::keep_alive(&envoy, Ipv4Addr::new(127, 0, 0, 8));
    assert_eq!(
        other.get("/login", &[("authorization", &valid)]).status,
        200,
        "another address logs in"
    );

    let request_id = limited.header("x-request-id").unwrap().to_string();
    assert!(
        envoy.wait_for_log(&request_id, Duration::from_secs(5)),
        "the 429 is logged"
    );
    let events = rate_limited_events(&envoy.log());
    let event = events
        .iter()
        .find(|e| e["request_id"] == request_id.as_str())
        .unwrap_or_else(|| panic!("security event rate_limited for {request_id}: {events:?}"));
    assert_eq!(event["code"], "rate_limited");
    assert_eq!(event["status"], 429);
    assert_eq!(event["route"], "login");
    assert_eq!(event["client"], "127.0.0.7");
    assert!(
        event["reason"].as_str().unwrap_or("").contains("login"),
        "the event names the limit: {event}"
    );
    assert!(
        !envoy.log().contains(forged.trim_start_matches("Bearer ")),
        "the token never reaches the log"
    );
}

// ---------------------------------------------------------------------------------------------
// Bounded memory
// ---------------------------------------------------------------------------------------------

/// 200,000 distinct client keys in `make test`: kept at even 170 bytes each they would exceed
/// [`RSS_GROWTH_BOUND_KIB`], so the bound is already shown. `API_GUARD_FLOOD_KEYS=1000000`
/// (`make flood`) runs issue 5's million. Bounded in time as every load test here is.
const FLOOD_DEFAULT_REQUESTS: u64 = 200_000;
const FLOOD_MAX_TIME: Duration = Duration::from_secs(240);

fn flood_max_requests() -> u64 {
    std::env::var("API_GUARD_FLOOD_KEYS")
        .ok()
        .map(|keys| {
            keys.parse()
                .expect("API_GUARD_FLOOD_KEYS: a number of keys")
        })
        .unwrap_or(FLOOD_DEFAULT_REQUESTS)
}
const FLOOD_THREADS: usize = 8;
/// Each client key is this long: an implementation that kept anything of the key per client
/// would hold at least this much per key, far beyond the bound below.
const FLOOD_KEY_BYTES: usize = 1024;
/// Envoy's RSS may grow at most this much over the flood, measured after a warm-up that has
/// already sent 20,000 distinct keys. 200,000 keys kept at even 170 bytes each (a hashed key in
/// Envoy's shared-data map, with its value) would exceed it; a build with one shared-data key
/// per client (the table's size ignored) grew by 71 MiB over this flood.
const RSS_GROWTH_BOUND_KIB: u64 = 32 * 1024;
/// The flood alternates between these routes: `/flood/` has a long window (its entries stay
/// live, so new keys end up on the shared overflow counters and are refused), `/churn/` a 1 s
/// window (its entries go idle after 2 s and are taken over by new keys: the table's storage is
/// reused, and written, all the time).
const FLOOD_PATHS: [&str; 2] = ["/flood/x", "/churn/x"];

#[derive(Default, Clone, Copy)]
struct FloodTally {
    sent: u64,
    /// Per route of [`FLOOD_PATHS`].
    admitted: [u64; 2],
    refused: [u64; 2],
    other: u64,
    transport_errors: u64,
}

impl FloodTally {
    fn add(self, other: FloodTally) -> FloodTally {
        FloodTally {
            sent: self.sent + other.sent,
            admitted: [
                self.admitted[0] + other.admitted[0],
                self.admitted[1] + other.admitted[1],
            ],
            refused: [
                self.refused[0] + other.refused[0],
                self.refused[1] + other.refused[1],
            ],
            other: self.other + other.other,
            transport_errors: self.transport_errors + other.transport_errors,
        }
    }
}

/// Distinct `x-client` keys (1 KiB each), alternately on the routes of [`FLOOD_PATHS`], over
/// keep-alive connections from `FLOOD_THREADS` threads, until `max_requests` or `max_time`.
fn flood(envoy: &Envoy, label: &str, max_requests: u64, max_time: Duration) -> FloodTally {
    let issued = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + max_time;
    let padding = "k".repeat(FLOOD_KEY_BYTES);
    let tallies: Vec<FloodTally> = thread::scope(|scope| {
        let handles: Vec<_> = (0..FLOOD_THREADS)
            .map(|t| {
                let (issued, stop, padding) = (&issued, &stop, &padding);
                scope.spawn(move || {
                    let source = Ipv4Addr::new(127, 0, 1, t as u8 + 1);
                    let mut client = Client::keep_alive(envoy, source);
                    let mut tally = FloodTally::default();
                    while !stop.load(Ordering::Relaxed) {
                        let i = issued.fetch_add(1, Ordering::Relaxed);
                        if i >= max_requests || Instant::now() >= deadline {
                            stop.store(true, Ordering::Relaxed);
                            break;
                        }
                        let route = (i % 2) as usize;
                        let prefix = format!("{label}-{i}-");
                        let key = format!("{prefix}{}", &padding[prefix.len()..]);
                        tally.sent += 1;
                        match client.try_get(FLOOD_PATHS[route], &[("x-client", &key)]) {
                            Ok(r) if r.status == 200 => tally.admitted[route] += 1,
                            Ok(r) if r.status == 429 => tally.refused[route] += 1,
                            Ok(_) => tally.other += 1,
                            Err(_) => tally.transport_errors += 1,
                        }
                    }
                    tally
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    tallies
        .into_iter()
        .fold(FloodTally::default(), FloodTally::add)
}

#[test]
fn distinct_keys_flood_leaves_memory_bounded_and_limits_intact() {
    let config = json!({
        "rate_limits": {
            "max_tracked_keys": 1000,
            // Long enough that the victims' entries stay live through the whole flood.
            "flood": { "requests": 3, "window_seconds": 600, "key": "header:x-client" },
            "churn": { "requests": 1, "window_seconds": 1, "key": "header:x-client" }
        },
        "routes": [
            { "name": "flood", "match": { "path_prefix": "/flood/" }, "auth": "none", "rate_limit": "flood" },
            { "name": "churn", "match": { "path_prefix": "/churn/" }, "auth": "none", "rate_limit": "churn" }
        ]
    });
    let envoy = Envoy::with_plugin(&config.to_string());
    let run = nonce();
    let mut client = Client::keep_alive(&envoy, LOCALHOST);
    let within = format!("within-{run}");
    let over = format!("over-{run}");

    // Before the flood: one key has used 1 of 3, another is over its limit.
    let response = client.get("/flood/x", &[("x-client", &within)]);
    assert_eq!(response.status, 200);
    assert_eq!(header_u64("within", &response, "x-ratelimit-remaining"), 2);
    let (admitted, refusal) =
        admitted_until_refused(&mut client, "/flood/x", &[("x-client", &over)], 3);
    assert_eq!(admitted, 3);
    assert_rate_limited("over, before the flood", &refusal);

    // Warm-up: the tables, the VMs' heaps and Envoy's connection buffers reach their working
    // size.
    let warm_up = flood(
        &envoy,
        &format!("warm-{run}"),
        20_000,
        Duration::from_secs(15),
    );
    let rss_before = rss_kib(envoy.pid());
    let started = Instant::now();
    let tally = flood(
        &envoy,
        &format!("flood-{run}"),
        flood_max_requests(),
        FLOOD_MAX_TIME,
    );
    let elapsed = started.elapsed();
    let rss_after = rss_kib(envoy.pid());
    println!(
        "flood: warm-up {} requests; then {} requests with distinct {FLOOD_KEY_BYTES}-byte keys in \
         {:.1} s ({:.0} req/s) over {FLOOD_THREADS} keep-alive connections: \
         {FLOOD_PATHS:?} admitted {:?}, refused {:?}, {} other, {} transport errors; \
         Envoy VmRSS {} KiB after warm-up, {} KiB after the flood \
         (growth {} KiB, bound {RSS_GROWTH_BOUND_KIB} KiB)",
        warm_up.sent,
        tally.sent,
        elapsed.as_secs_f64(),
        tally.sent as f64 / elapsed.as_secs_f64(),
        tally.admitted,
        tally.refused,
        tally.other,
        tally.transport_errors,
        rss_before,
        rss_after,
        rss_after.saturating_sub(rss_before),
    );
    assert_eq!(tally.other, 0, "only 200 and 429 during the flood");
    assert!(
        tally.transport_errors * 1000 <= tally.sent,
        "transport errors are rare: {} of {}",
        tally.transport_errors,
        tally.sent
    );
    // The test must be able to tell: the keys alone are more than twice the bound.
    assert!(
        tally.sent * FLOOD_KEY_BYTES as u64 / 1024 > 2 * RSS_GROWTH_BOUND_KIB,
        "too few distinct keys ({}) to show a bound of {RSS_GROWTH_BOUND_KIB} KiB",
        tally.sent
    );
    // Idle entries were taken over by new keys through the flood, not only before it: at least
    // one admission per bucket (250 of them) and per 2 s would be far more than this.
    assert!(
        tally.admitted[1] >= 1000,
        "the 1 s table kept admitting new keys as entries went idle: {} admitted",
        tally.admitted[1]
    );
    assert!(
        rss_after <= rss_before + RSS_GROWTH_BOUND_KIB,
        "Envoy's RSS grew from {rss_before} KiB to {rss_after} KiB over {} distinct keys \
         (bound: +{RSS_GROWTH_BOUND_KIB} KiB)",
        tally.sent
    );

    // After the flood: the key within its limit is still admitted, with its own count...
    let response = client.get("/flood/x", &[("x-client", &within)]);
    assert_eq!(
        response.status,
        200,
        "the key within its limit is still admitted: {}",
        response.body_str()
    );
    assert_eq!(
        header_u64("within, after", &response, "x-ratelimit-remaining"),
        1,
        "its counter survived the flood"
    );
    // ...the key over its limit is still refused...
    assert_rate_limited(
        "over, after the flood",
        &client.get("/flood/x", &[("x-client", &over)]),
    );
    // ...and a new key is held to the limit or stricter, never looser.
    let (admitted, _) = admitted_until_refused(
        &mut client,
        "/flood/x",
        &[("x-client", &format!("newcomer-{run}"))],
        3,
    );
    println!("a new key after the flood: {admitted} admitted (limit 3; fewer = stricter)");
}
