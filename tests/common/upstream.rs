//! The test upstream: a small HTTP/1.1 server inside the test process that
//! records every request Envoy forwards to it.
//!
//! * `GET /anything` → `200`, `content-type: application/json`,
//!   body `{"upstream":"ok","path":"<path as received>"}`.
//! * `/status/<code>` (200..=599, query ignored) → that status, body
//!   `{"upstream":"status","detail":"Traceback (most recent call last): internal secret db=10.0.0.5"}`
//!   (later tests check such details never reach the client).
//! * `/large-status/<code>/<bytes>` (200..=599) → that status with a body of
//!   exactly `<bytes>` bytes (at most 64 MiB) that starts with
//!   `LEAKY_DETAIL_BODY`, written in 64 KiB pieces: a large error body that a
//!   filter must stream, not buffer.
//! * `/slow/<ms>` → `200` after `<ms>` milliseconds (at most 60 s): for route
//!   timeouts.
//! * Any request header `x-test-response-header: <name>: <value>` (repeatable)
//!   makes the upstream add `<name>: <value>` to its response: for headers a
//!   real backend sends (`server`, `x-powered-by`, its own CORS headers, ...).
//!   `%XX` in the value is sent as the byte 0xXX: for bytes that are not UTF-8.
//!
//! Keep-alive (Envoy pools connections), Content-Length and chunked request
//! bodies, `Expect: 100-continue`. One thread per connection.

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::http::{content_length, find_header, is_chunked, read_head};

/// The body the upstream sends for `/status/<code>`: something a real backend
/// might leak, which must never reach the client.
pub const LEAKY_DETAIL_BODY: &str = r#"{"upstream":"status","detail":"Traceback (most recent call last): internal secret db=10.0.0.5"}"#;

/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A request as it reached the upstream.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target exactly as received.
    pub path: String,
    /// Header names lower-cased; duplicates kept, in wire order.
    pub headers: Vec<(String, String)>,
    /// The body (chunked encoding removed).
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive), in wire order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text (lossy UTF-8).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Upstream {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<Vec<RecordedRequest>>) -> MutexGuard<'_, Vec<RecordedRequest>> {
    // A panic elsewhere must not hide what was recorded.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("test upstream: cannot bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("test upstream: local_addr: {e}"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let requests = Arc::clone(&requests);
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name(format!("upstream-accept-{}", addr.port()))
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = conn else { continue };
                        let requests = Arc::clone(&requests);
                        let _ = thread::Builder::new()
                            .name(format!("upstream-conn-{}", addr.port()))
                            .spawn(move || {
                                let _ = serve_connection(stream, &requests);
                            });
                    }
                })
                .unwrap_or_else(|e| panic!("test upstream: cannot spawn thread: {e}"))
        };
        Upstream {
            addr,
            requests,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    pub fn clear(&self) {
        lock(&self.requests).clear();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        // Connection threads end when their peer (Envoy, killed before this
        // runs) closes, or after IDLE_TIMEOUT at the latest.
    }
}

fn serve_connection(stream: TcpStream, requests: &Mutex<Vec<RecordedRequest>>) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some((request_line, headers)) = read_head(&mut reader)? else {
            return Ok(()); // peer closed between requests
        };
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("HTTP/1.1").to_string();

        if find_header(&headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = if is_chunked(&headers) {
            super::http::read_chunked(&mut reader)?
        } else if let Some(n) = content_length(&headers)? {
            let mut b = vec![0; n];
            reader.read_exact(&mut b)?;
            b
        } else {
            Vec::new()
        };

        let connection = find_header(&headers, "connection").map(str::to_ascii_lowercase);
        let close = match connection.as_deref() {
            Some(c) if c.split(',').any(|t| t.trim() == "close") => true,
            Some(c) if c.split(',').any(|t| t.trim() == "keep-alive") => false,
            _ => version == "HTTP/1.0",
        };

        let (status, resp_body) = respond_to(&path);
        let extra_headers: Vec<Vec<u8>> = headers
            .iter()
            .filter(|(k, _)| k == RESPONSE_HEADER_REQUEST)
            .filter_map(|(_, v)| v.split_once(':'))
            .map(|(n, v)| percent_decoded(&format!("{}: {}\r\n", n.trim(), v.trim())))
            .collect();
        // Record before answering, so a test that got its response always
        // finds the request recorded.
        lock(requests).push(RecordedRequest {
            method: method.clone(),
            path,
            headers,
            body,
        });

        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            reason(status),
            resp_body.len()
        );
        let mut head = head.into_bytes();
        for h in &extra_headers {
            head.extend_from_slice(h);
        }
        if close {
            head.extend_from_slice(b"connection: close\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let bodiless = method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304;
        writer.write_all(&head)?;
        if !bodiless {
            // In pieces, so a large body reaches Envoy as many reads, as from a real backend.
            for piece in resp_body.as_bytes().chunks(64 * 1024) {
                writer.write_all(piece)?;
            }
        }
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// The request header that asks the upstream to add a response header
/// (`<name>: <value>`).
pub const RESPONSE_HEADER_REQUEST: &str = "x-test-response-header";

/// `%XX` (two hex digits) as the byte 0xXX; anything else as it is.
fn percent_decoded(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// Largest body `/large-status/<code>/<bytes>` sends.
const MAX_LARGE_BODY: usize = 64 * 1024 * 1024;

/// Longest delay `/slow/<ms>` takes.
const MAX_SLOW_MS: u64 = 60_000;

/// Status and body for a request target (may sleep, for `/slow/<ms>`).
fn respond_to(path: &str) -> (u16, String) {
    let no_query = path.split(['?', '#']).next().unwrap_or("");
    if let Some(rest) = no_query.strip_prefix("/large-status/") {
        let mut parts = rest.splitn(2, '/');
        let code = parts.next().and_then(|c| c.parse::<u16>().ok());
        let bytes = parts.next().and_then(|b| b.parse::<usize>().ok());
        return match (code, bytes) {
            (Some(c), Some(n)) if (200..=599).contains(&c) && n <= MAX_LARGE_BODY => {
                let mut body = String::with_capacity(n);
                body.push_str(LEAKY_DETAIL_BODY);
                while body.len() < n {
                    body.push_str("\n    at internal.secret.Frame(db=10.0.0.5)");
                }
                body.truncate(n);
                (c, body)
            }
            _ => (
                400,
                r#"{"upstream":"bad large-status request"}"#.to_string(),
            ),
        };
    }
    if let Some(ms) = no_query.strip_prefix("/slow/") {
        return match ms.parse::<u64>() {
            Ok(ms) if ms <= MAX_SLOW_MS => {
                thread::sleep(Duration::from_millis(ms));
                (200, r#"{"upstream":"slow"}"#.to_string())
            }
            _ => (400, r#"{"upstream":"bad slow request"}"#.to_string()),
        };
    }
    if let Some(code) = no_query.strip_prefix("/status/") {
        return match code.parse::<u16>() {
            Ok(c) if (200..=599).contains(&c) => (c, LEAKY_DETAIL_BODY.to_string()),
            _ => (400, r#"{"upstream":"bad status code"}"#.to_string()),
        };
    }
    let path_json = serde_json::to_string(path).unwrap_or_else(|_| "\"\"".to_string());
    (200, format!(r#"{{"upstream":"ok","path":{path_json}}}"#))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
