//! Minimal HTTP/1.1 plumbing shared by the test client and the test upstream.
//!
//! Hand-written on purpose: the client must send paths and headers exactly as
//! given (unnormalised paths, duplicate headers, odd casing), which ordinary
//! HTTP client libraries refuse to do.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// Read timeout of the test client.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest head (request/status line plus headers) either side accepts.
const MAX_HEAD_BYTES: usize = 1024 * 1024;

/// A response as seen by the downstream client.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased; duplicates kept, in wire order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
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

    /// The body parsed as JSON; panics (with the body) if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body: {:?}",
                self.status,
                self.body_str()
            )
        })
    }
}

pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn has_header(headers: &[(&str, &str)], name: &str) -> bool {
    headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
}

/// Sends one request on a fresh connection and reads the response.
///
/// * The request target `path` is sent verbatim.
/// * `headers` are sent verbatim and in order (duplicates allowed).
/// * `Host: <addr>` is added unless the caller supplies `host`;
///   `Connection: close` unless the caller supplies `connection`.
/// * With `body = Some(..)`, `Content-Length` is added unless the caller
///   supplies `content-length` or `transfer-encoding` (then the body bytes
///   are sent as they are, e.g. already chunk-encoded).
pub fn send_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<Response> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !has_header(headers, "host") {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        if !has_header(headers, "content-length") && !has_header(headers, "transfer-encoding") {
            head.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
    }
    if !has_header(headers, "connection") {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    if let Some(b) = body {
        raw.extend_from_slice(b);
    }
    send_raw(addr, &raw, method.eq_ignore_ascii_case("HEAD"))
}

/// Writes `raw` bytes as they are on a fresh connection, then reads one
/// response. For malformed-request tests. `head_request` = the response
/// carries no body.
pub fn send_raw(addr: SocketAddr, raw: &[u8], head_request: bool) -> io::Result<Response> {
    let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_nodelay(true)?;
    // Envoy may answer (e.g. 413, 400) and close before reading everything we
    // send; a failed write is not the end of the story, the response may
    // still be readable.
    let write_result = (&stream).write_all(raw).and_then(|()| (&stream).flush());
    let mut reader = BufReader::new(&stream);
    match read_response(&mut reader, head_request) {
        Ok(resp) => {
            let _ = stream.shutdown(Shutdown::Both);
            Ok(resp)
        }
        Err(read_err) => match write_result {
            Err(write_err) => Err(io::Error::new(
                read_err.kind(),
                format!("write failed ({write_err}), then read failed ({read_err})"),
            )),
            Ok(()) => Err(read_err),
        },
    }
}

/// Reads one line terminated by LF (CRLF or bare LF), without the terminator.
/// `Ok(None)` on EOF before any byte.
pub(crate) fn read_line<R: BufRead>(r: &mut R, budget: &mut usize) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "HTTP head too large",
        ));
    }
    *budget -= n;
    if buf.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "connection closed mid-line: {:?}",
                String::from_utf8_lossy(&buf)
            ),
        ));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// A start line and its headers (names lower-cased).
pub(crate) type Head = (String, Vec<(String, String)>);

/// Reads a start line and headers. `Ok(None)` on clean EOF before the start
/// line. Header names are lower-cased, values trimmed.
pub(crate) fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<Head>> {
    let mut budget = MAX_HEAD_BYTES;
    let start = loop {
        match read_line(r, &mut budget)? {
            None => return Ok(None),
            // Tolerate stray empty lines before a start line (RFC 9112 §2.2).
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(r, &mut budget)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside headers",
            )
        })?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad header line {line:?}"),
            )
        })?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Ok(Some((start, headers)))
}

pub(crate) fn is_chunked(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .filter(|(k, _)| k == "transfer-encoding")
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("chunked"))
}

pub(crate) fn content_length(headers: &[(String, String)]) -> io::Result<Option<usize>> {
    match find_header(headers, "content-length") {
        None => Ok(None),
        Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad content-length {v:?}"),
            )
        }),
    }
}

/// Decodes a chunked body (trailers are read and discarded).
pub(crate) fn read_chunked<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut budget = MAX_HEAD_BYTES;
    loop {
        let line = read_line(r, &mut budget)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in chunk size"))?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size {line:?}"),
            )
        })?;
        if size == 0 {
            // Trailers until the empty line.
            loop {
                match read_line(r, &mut budget)? {
                    None => return Ok(body),
                    Some(l) if l.is_empty() => return Ok(body),
                    Some(_) => {}
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let crlf = read_line(r, &mut budget)?;
        if crlf.as_deref() != Some("") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "missing CRLF after chunk",
            ));
        }
    }
}

/// Reads one response, skipping interim 1xx responses (other than 101).
pub(crate) fn read_response<R: BufRead>(r: &mut R, head_request: bool) -> io::Result<Response> {
    loop {
        let (status_line, headers) = read_head(r)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before any response byte",
            )
        })?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .filter(|_| version.starts_with("HTTP/"))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {status_line:?}"),
                )
            })?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let no_body = head_request || status < 200 || status == 204 || status == 304;
        let body = if no_body {
            Vec::new()
        } else if is_chunked(&headers) {
            read_chunked(r)?
        } else if let Some(n) = content_length(&headers)? {
            let mut b = vec![0; n];
            r.read_exact(&mut b)?;
            b
        } else {
            let mut b = Vec::new();
            match r.read_to_end(&mut b) {
                Ok(_) => {}
                // A reset after the last byte still delimits the body.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                Err(e) => return Err(e),
            }
            b
        };
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
}

/// One HTTP/2 request (h2c, prior knowledge) for [`send_h2c`]: a body in several DATA frames,
/// optionally ending with trailers (which curl cannot send).
#[derive(Debug, Clone, Default)]
pub struct H2Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    /// Each chunk is sent in DATA frames of its own (split to the peer's frame size).
    pub chunks: Vec<&'a [u8]>,
    /// A pause after each chunk.
    pub pause_ms: u64,
    /// `Some`: the request ends with a trailers HEADERS frame.
    pub trailers: Option<Vec<(&'a str, &'a str)>>,
}

/// What came back for an [`H2Request`].
#[derive(Debug, Clone)]
pub enum H2Outcome {
    Response(Response),
    /// The stream was reset before any response (`Some(code)`), or the connection closed.
    Reset(Option<u64>),
}

/// The Python that runs tests/common/h2c.py: `$H2C_PYTHON`, else the project's .venv (which
/// needs the PyPI package `h2`), else `python3`.
fn h2c_python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("H2C_PYTHON").filter(|p| !p.is_empty()) {
        return p.into();
    }
    let venv = super::crate_root().join(".venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        "python3".into()
    }
}

/// Sends `request` to `127.0.0.1:port` over HTTP/2 cleartext with tests/common/h2c.py (PyPI
/// `h2`). Panics when the client itself cannot run, with what to install.
/// Runs one of the Python test clients (`tests/common/<script>`): the request as JSON on its
/// standard input, its result as JSON on its standard output. Returns the result (or why there
/// is none) and the client's stderr.
fn run_python_client(
    python: &Path,
    script: &str,
    spec: &serde_json::Value,
) -> (Result<serde_json::Value, String>, String) {
    let path = super::crate_root().join("tests/common").join(script);
    let mut child = std::process::Command::new(python)
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} {}: {e}", python.display(), path.display()));
    {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(spec.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("write the request to {script}: {e}"));
    }
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{script} output: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let result = serde_json::from_str(stdout.trim()).map_err(|e| {
        format!("{script} printed no result ({e}): stdout {stdout:?}, stderr {stderr:?}")
    });
    (result, stderr)
}

/// The response a Python test client printed: `status`, `headers` as `[name, value]` pairs
/// (names lower-cased here), `body_b64`.
fn response_from_client(script: &str, status: u16, result: &serde_json::Value) -> Response {
    use base64::Engine as _;
    let headers = result["headers"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|pair| {
                    (
                        pair[0].as_str().unwrap_or_default().to_ascii_lowercase(),
                        pair[1].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let body = base64::engine::general_purpose::STANDARD
        .decode(result["body_b64"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{script}: the body is not base64: {e}"));
    Response {
        status,
        headers,
        body,
    }
}

/// One request over TLS (tests/common/https.py, Python's ssl module) to `port`.
pub fn send_https(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let authority = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map_or("api.test", |(_, v)| v);
    let others: Vec<[&str; 2]> = headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("host"))
        .map(|(n, v)| [*n, *v])
        .collect();
    let spec = serde_json::json!({
        "port": port, "method": method, "path": path, "headers": others, "authority": authority,
    });
    let (result, _) = run_python_client(Path::new("python3"), "https.py", &spec);
    let result = result.unwrap_or_else(|why| panic!("{why}"));
    let status = result["status"]
        .as_u64()
        .unwrap_or_else(|| panic!("https.py: no status in {result}"));
    response_from_client("https.py", status as u16, &result)
}

pub fn send_h2c(port: u16, request: &H2Request<'_>) -> H2Outcome {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let pairs = |list: &[(&str, &str)]| -> serde_json::Value {
        list.iter()
            .map(|(n, v)| serde_json::json!([n, v]))
            .collect::<Vec<_>>()
            .into()
    };
    let spec = serde_json::json!({
        "port": port,
        "method": request.method,
        "path": request.path,
        "headers": pairs(&request.headers),
        "chunks_b64": request.chunks.iter().map(|c| b64.encode(c)).collect::<Vec<_>>(),
        "pause_ms": request.pause_ms,
        "trailers": request.trailers.as_ref().map(|t| pairs(t)),
    });
    let python = h2c_python();
    let (result, stderr) = run_python_client(&python, "h2c.py", &spec);
    if stderr.contains("No module named 'h2'") {
        panic!(
            "the HTTP/2 test client needs the PyPI package h2 in {}: run `{} -m pip install h2==4.4.1` (or set H2C_PYTHON)",
            python.display(),
            python.display()
        );
    }
    let result = result.unwrap_or_else(|why| panic!("{why}"));
    if let Some(error) = result.get("error") {
        panic!("h2c.py failed: {error}");
    }
    let Some(status) = result.get("status").and_then(|s| s.as_u64()) else {
        return H2Outcome::Reset(result.get("reset").and_then(|r| r.as_u64()));
    };
    H2Outcome::Response(response_from_client("h2c.py", status as u16, &result))
}
