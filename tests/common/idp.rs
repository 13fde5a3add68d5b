//! A test identity provider: a small HTTP/1.1 server on 127.0.0.1 inside the test process that
//! serves a JWKS the test controls, can be told to misbehave, and counts what it was asked.
//!
//! ```ignore
//! let idp = common::idp::Idp::start(json!({"keys": [..]}));
//! let envoy = Envoy::start(EnvoyOptions {
//!     extra_clusters_yaml: Some(idp.cluster_yaml("idp")),
//!     ..
//! });
//! idp.set_behavior(Behavior::Status(500));
//! assert_eq!(idp.request_count(), 1);
//! ```
//!
//! Every request is recorded (method, path, `host`) when its head has been read, whatever the
//! behaviour then does with it. Keep-alive, like a real server: Envoy pools the connections of
//! its clusters.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::http::{content_length, find_header, read_head};

/// What the identity provider does with the next requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// 200 with the current JWKS.
    Serve,
    /// 200 with the current JWKS, after this delay.
    Delay(Duration),
    /// Reads the request, then closes the connection without a byte of answer.
    Close,
    /// Reads the request and never answers (until the client gives up).
    Stall,
    /// This status with a short text body.
    Status(u16),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with a JSON body of about this many bytes: the current JWKS padded with a
    /// `padding` member (a valid JWKS if it were not that large).
    Huge(usize),
}

/// A request as the identity provider saw it.
#[derive(Debug, Clone)]
pub struct IdpRequest {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub at: Instant,
}

struct State {
    jwks: Vec<u8>,
    behavior: Behavior,
    requests: Vec<IdpRequest>,
}

pub struct Idp {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Idp {
    /// Starts serving `jwks` (a JSON value) with [`Behavior::Serve`].
    pub fn start(jwks: serde_json::Value) -> Idp {
        Idp::start_with(jwks, Behavior::Serve)
    }

    pub fn start_with(jwks: serde_json::Value, behavior: Behavior) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("test IdP: cannot bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("test IdP: local_addr: {e}"));
        let state = Arc::new(Mutex::new(State {
            jwks: serde_json::to_vec(&jwks).unwrap_or_default(),
            behavior,
            requests: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name(format!("idp-accept-{}", addr.port()))
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = conn else { continue };
                        let state = Arc::clone(&state);
                        let stop = Arc::clone(&stop);
                        let _ = thread::Builder::new()
                            .name(format!("idp-conn-{}", addr.port()))
                            .spawn(move || {
                                let _ = serve_connection(stream, &state, &stop);
                            });
                    }
                })
                .unwrap_or_else(|e| panic!("test IdP: cannot spawn thread: {e}"))
        };
        Idp {
            addr,
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A STATIC Envoy cluster named `name` pointing here, for `EnvoyOptions::extra_clusters_yaml`.
    pub fn cluster_yaml(&self, name: &str) -> String {
        format!(
            "- name: {name}\n  type: STATIC\n  connect_timeout: 1s\n  load_assignment:\n    cluster_name: {name}\n    endpoints:\n    - lb_endpoints:\n      - endpoint:\n          address:\n            socket_address: {{ address: 127.0.0.1, port_value: {port} }}\n",
            port = self.port()
        )
    }

    /// Replaces the JWKS served from now on.
    pub fn set_jwks(&self, jwks: serde_json::Value) {
        lock(&self.state).jwks = serde_json::to_vec(&jwks).unwrap_or_default();
    }

    pub fn set_behavior(&self, behavior: Behavior) {
        lock(&self.state).behavior = behavior;
    }

    /// Requests received so far.
    pub fn request_count(&self) -> usize {
        lock(&self.state).requests.len()
    }

    pub fn requests(&self) -> Vec<IdpRequest> {
        lock(&self.state).requests.clone()
    }

    /// Polls until at least `n` requests were received; false on timeout.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.request_count() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn serve_connection(stream: TcpStream, state: &Mutex<State>, stop: &AtomicBool) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let Some((request_line, headers)) = read_head(&mut reader)? else {
            return Ok(());
        };
        if let Some(n) = content_length(&headers)? {
            let mut body = vec![0; n];
            reader.read_exact(&mut body)?;
        }
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let (behavior, jwks) = {
            let mut state = lock(state);
            state.requests.push(IdpRequest {
                method,
                path,
                host: find_header(&headers, "host").map(str::to_string),
                at: Instant::now(),
            });
            (state.behavior.clone(), state.jwks.clone())
        };
        let (status, content_type, body) = match behavior {
            Behavior::Serve => (200, "application/json", jwks),
            Behavior::Delay(delay) => {
                thread::sleep(delay);
                (200, "application/json", jwks)
            }
            Behavior::Close => {
                let _ = stream.shutdown(Shutdown::Both);
                return Ok(());
            }
            Behavior::Stall => {
                // Hold the connection open, answering nothing, until the client closes it.
                stream.set_read_timeout(Some(Duration::from_millis(100)))?;
                let mut byte = [0u8; 1];
                while !stop.load(Ordering::SeqCst) {
                    match reader.read(&mut byte) {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e)
                            if e.kind() == io::ErrorKind::WouldBlock
                                || e.kind() == io::ErrorKind::TimedOut => {}
                        Err(_) => return Ok(()),
                    }
                }
                return Ok(());
            }
            Behavior::Status(code) => (code, "text/plain", b"identity provider error".to_vec()),
            Behavior::Garbage => (200, "text/html", b"<html>not a key set</html>".to_vec()),
            Behavior::Huge(size) => {
                let mut body = jwks;
                // `{"keys":[...]}` becomes `{"keys":[...],"padding":"xxx..."}`.
                body.pop();
                body.extend_from_slice(b",\"padding\":\"");
                body.resize(size.max(body.len()), b'x');
                body.extend_from_slice(b"\"}");
                (200, "application/json", body)
            }
        };
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            if status == 200 { "OK" } else { "Error" },
            body.len()
        );
        writer.write_all(head.as_bytes())?;
        writer.write_all(&body)?;
        writer.flush()?;
    }
}
