//! The response side of the error envelope: which error responses get their body replaced by
//! the envelope, and a bounded sample of the original body for the log.
//!
//! Upstream error bodies leak (stack traces, SQL, framework versions), and so do Envoy's own
//! local replies ("upstream connect error or disconnect/reset before headers. reset reason:
//! connection failure..."). The client gets the generic envelope; the log keeps the first bytes
//! of the original with the request id.
//!
//! Host facts this relies on (Envoy 1.40): Envoy's local replies and the filter's own replies
//! pass through the filter's response callbacks like upstream responses do; the body can only be
//! replaced safely once `content-length` has been removed, which must happen in the response
//! headers callback, while headers can still change.

use crate::config::error::{join, ConfigError};
use crate::response::reply::{envelope, ErrorCode, ENVELOPE_HEADERS};
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    /// `"5xx"` (default), `"4xx_5xx"` or `"none"`.
    #[serde(default)]
    pub rewrite_upstream: Option<String>,
    /// Default [`DEFAULT_LOG_UPSTREAM_BODY_BYTES`], at most [`MAX_LOG_UPSTREAM_BODY_BYTES`].
    #[serde(default)]
    pub log_upstream_body_bytes: Option<u64>,
}

pub const DEFAULT_LOG_UPSTREAM_BODY_BYTES: u64 = 1024;
/// Every error response may hold this much in memory until it ends; 64 KiB per in-flight error
/// response bounds what a flood of large upstream errors can cost a worker.
pub const MAX_LOG_UPSTREAM_BODY_BYTES: u64 = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewriteUpstream {
    /// `"5xx"`
    ServerErrors,
    /// `"4xx_5xx"`
    ClientAndServerErrors,
    /// `"none"`
    Nothing,
}

/// Who produced a response. The adapter knows whether it sent a local reply itself; for the
/// rest, Envoy's `response.code_details` property says `via_upstream` when the upstream answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseOrigin {
    Upstream,
    /// The filter's own local reply: already the envelope, never rewritten again.
    Filter,
    /// Envoy answered itself: no healthy upstream, connect failure, timeout, overflow, no route.
    Envoy,
}

/// Envoy's `StreamInfo::ResponseCodeDetails::ViaUpstream`.
pub const CODE_DETAILS_VIA_UPSTREAM: &str = "via_upstream";

impl ResponseOrigin {
    /// `code_details` is the `response.code_details` property, `None` when it could not be read.
    /// An unreadable property counts as Envoy: its errors are always rewritten, so the doubt
    /// falls on the side of not leaking a body.
    pub fn classify(sent_by_filter: bool, code_details: Option<&str>) -> ResponseOrigin {
        if sent_by_filter {
            ResponseOrigin::Filter
        } else if code_details == Some(CODE_DETAILS_VIA_UPSTREAM) {
            ResponseOrigin::Upstream
        } else {
            ResponseOrigin::Envoy
        }
    }
}

/// Headers that describe the discarded body and would be wrong for the envelope: a
/// `content-encoding: gzip` left on a plain JSON body makes clients fail to decode it, an `etag`
/// or `last-modified` would let a cache revalidate the envelope as the original.
pub const REPRESENTATION_HEADERS: [&str; 10] = [
    "content-encoding",
    "content-range",
    "content-disposition",
    "content-language",
    "content-location",
    "etag",
    "last-modified",
    "content-md5",
    "content-digest",
    "repr-digest",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsePlan {
    /// Replace the body with [`ResponsePlan::envelope`] (false for HEAD: no body to replace).
    pub rewrite_body: bool,
    /// The envelope's code when the response is rewritten (HEAD included, whose headers must
    /// describe the JSON a GET would get). `None`: leave the response alone.
    pub code: Option<ErrorCode>,
    /// Remove `content-length` in the response headers callback (the body's length changes).
    pub remove_content_length: bool,
    /// Also remove these headers of the original body ([`REPRESENTATION_HEADERS`] or nothing).
    pub remove_headers: &'static [&'static str],
    /// Set these, replacing the upstream's ([`ENVELOPE_HEADERS`] or nothing).
    pub set_headers: &'static [(&'static str, &'static str)],
    /// Keep this many bytes of the original body for the security-event log (0: log nothing).
    pub log_bytes: usize,
}

impl ResponsePlan {
    pub const UNTOUCHED: ResponsePlan = ResponsePlan {
        rewrite_body: false,
        code: None,
        remove_content_length: false,
        remove_headers: &[],
        set_headers: &[],
        log_bytes: 0,
    };

    /// The replacement body, when there is one. The status stays what it was.
    pub fn envelope(&self, request_id: &str) -> Option<String> {
        match self.code {
            Some(code) if self.rewrite_body => Some(envelope(code, request_id)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRewrite {
    rewrite_upstream: RewriteUpstream,
    log_bytes: usize,
}

impl ErrorRewrite {
    pub fn compile(cfg: Option<&ErrorsConfig>, at: &str) -> Result<ErrorRewrite, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let empty = ErrorsConfig::default();
        let cfg = cfg.unwrap_or(&empty);
        let rewrite_upstream = match cfg.rewrite_upstream.as_deref() {
            None | Some("5xx") => RewriteUpstream::ServerErrors,
            Some("4xx_5xx") => RewriteUpstream::ClientAndServerErrors,
            Some("none") => RewriteUpstream::Nothing,
            Some(other) => {
                errors.push(ConfigError::new(
                    join(at, "rewrite_upstream"),
                    format!("unknown value {other:?}: expected \"5xx\", \"4xx_5xx\" or \"none\""),
                ));
                RewriteUpstream::ServerErrors
            }
        };
        let log_bytes = cfg
            .log_upstream_body_bytes
            .unwrap_or(DEFAULT_LOG_UPSTREAM_BODY_BYTES);
        if log_bytes > MAX_LOG_UPSTREAM_BODY_BYTES {
            errors.push(ConfigError::new(
                join(at, "log_upstream_body_bytes"),
                format!("must be at most {MAX_LOG_UPSTREAM_BODY_BYTES}"),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ErrorRewrite {
            rewrite_upstream,
            // Bounded by MAX_LOG_UPSTREAM_BODY_BYTES just above, so it fits any usize.
            log_bytes: usize::try_from(log_bytes).unwrap_or(0),
        })
    }

    /// Decides what to do with a response, from its status, who produced it and whether the
    /// request was HEAD. Only 4xx and 5xx are ever touched.
    ///
    /// - The filter's own replies: never (they are the envelope already).
    /// - Upstream responses: as `rewrite_upstream` selects. A 5xx gets `upstream_error`; a 4xx
    ///   (under `"4xx_5xx"`) gets the spec's code for its status (400 `bad_request`, 401
    ///   `unauthorized`, 403 `forbidden`, 404 `not_found`, 413 `payload_too_large`, 429
    ///   `rate_limited`) and `bad_request` for the other 4xx.
    /// - Envoy's local replies: always, whatever `rewrite_upstream` says (that setting is about
    ///   the upstream's bodies; Envoy's describe the proxy and the network behind it). 503 gets
    ///   `service_unavailable`, other 5xx (502 reset, 504 timeout) `upstream_error`, 4xx as above.
    ///
    /// The status is always kept.
    pub fn plan(&self, status: u16, origin: ResponseOrigin, is_head_request: bool) -> ResponsePlan {
        let client_error = (400..=499).contains(&status);
        let server_error = (500..=599).contains(&status);
        if !client_error && !server_error {
            return ResponsePlan::UNTOUCHED;
        }
        let code = match origin {
            ResponseOrigin::Filter => return ResponsePlan::UNTOUCHED,
            ResponseOrigin::Upstream => {
                let selected = match self.rewrite_upstream {
                    RewriteUpstream::ServerErrors => server_error,
                    RewriteUpstream::ClientAndServerErrors => true,
                    RewriteUpstream::Nothing => false,
                };
                if !selected {
                    return ResponsePlan::UNTOUCHED;
                }
                if server_error {
                    ErrorCode::UpstreamError
                } else {
                    client_error_code(status)
                }
            }
            ResponseOrigin::Envoy => match status {
                503 => ErrorCode::ServiceUnavailable,
                _ if server_error => ErrorCode::UpstreamError,
                _ => client_error_code(status),
            },
        };
        ResponsePlan {
            rewrite_body: !is_head_request,
            code: Some(code),
            remove_content_length: true,
            remove_headers: &REPRESENTATION_HEADERS,
            set_headers: &ENVELOPE_HEADERS,
            log_bytes: if is_head_request { 0 } else { self.log_bytes },
        }
    }
}

fn client_error_code(status: u16) -> ErrorCode {
    match status {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        413 => ErrorCode::PayloadTooLarge,
        429 => ErrorCode::RateLimited,
        _ => ErrorCode::BadRequest,
    }
}

/// Keeps at most `limit` bytes of a body for the log and discards the rest as it streams, so a
/// 1 GB error body costs `limit` bytes, never 1 GB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodySample {
    limit: usize,
    kept: Vec<u8>,
    total: u64,
}

impl BodySample {
    pub fn new(limit: usize) -> BodySample {
        BodySample {
            limit,
            kept: Vec::new(),
            total: 0,
        }
    }

    /// How many more bytes the sample would keep: the adapter can read only that much of a
    /// chunk from the host instead of copying all of it into the VM.
    pub fn remaining(&self) -> usize {
        self.limit.saturating_sub(self.kept.len())
    }

    /// Records a chunk whose first bytes are `chunk`; `chunk_len` is the chunk's full length
    /// (when the adapter read only [`BodySample::remaining`] bytes of it).
    pub fn push_partial(&mut self, chunk: &[u8], chunk_len: usize) {
        let take = chunk.len().min(self.remaining());
        if let Some(bytes) = chunk.get(..take) {
            self.kept.extend_from_slice(bytes);
        }
        let chunk_len = chunk_len.max(chunk.len());
        self.total = self
            .total
            .saturating_add(u64::try_from(chunk_len).unwrap_or(u64::MAX));
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.push_partial(chunk, chunk.len());
    }

    /// Bytes seen in total, kept or not.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    pub fn is_truncated(&self) -> bool {
        self.total > self.kept.len() as u64
    }

    /// The kept bytes as one log-safe line: valid UTF-8 as text, other bytes as `\xNN`, control
    /// characters escaped (`\n`, `\r`, `\t`, `\u{1b}`, ...), so an upstream body cannot forge
    /// log lines or hide text with terminal escapes or bidi overrides. `\` is escaped too, so
    /// every escape is unambiguous. A multi-byte character cut by the limit shows as `\xNN`.
    pub fn logged(&self) -> String {
        let mut out = String::with_capacity(self.kept.len());
        for chunk in self.kept.utf8_chunks() {
            for c in chunk.valid().chars() {
                push_escaped(&mut out, c);
            }
            for byte in chunk.invalid() {
                out.push_str(&format!("\\x{byte:02x}"));
            }
        }
        out
    }
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        // C0, DEL, C1; line and paragraph separators; bidi embeddings, overrides and isolates.
        c if c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
        {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(json: &str) -> ErrorRewrite {
        let cfg: ErrorsConfig = serde_json::from_str(json).expect("test config parses");
        ErrorRewrite::compile(Some(&cfg), "errors").expect("test config compiles")
    }

    fn rewritten(code: ErrorCode, log_bytes: usize) -> ResponsePlan {
        ResponsePlan {
            rewrite_body: true,
            code: Some(code),
            remove_content_length: true,
            remove_headers: &REPRESENTATION_HEADERS,
            set_headers: &ENVELOPE_HEADERS,
            log_bytes,
        }
    }

    fn head_rewritten(code: ErrorCode) -> ResponsePlan {
        ResponsePlan {
            rewrite_body: false,
            log_bytes: 0,
            ..rewritten(code, 0)
        }
    }

    use ResponseOrigin::{Envoy, Filter, Upstream};

    #[test]
    fn default_rewrites_upstream_5xx_only() {
        for errors in [
            ErrorRewrite::compile(None, "errors").expect("defaults compile"),
            rewrite("{}"),
            rewrite(r#"{"rewrite_upstream": "5xx"}"#),
        ] {
            assert_eq!(errors.plan(200, Upstream, false), ResponsePlan::UNTOUCHED);
            assert_eq!(errors.plan(304, Upstream, false), ResponsePlan::UNTOUCHED);
            assert_eq!(errors.plan(404, Upstream, false), ResponsePlan::UNTOUCHED);
            assert_eq!(
                errors.plan(500, Upstream, false),
                rewritten(ErrorCode::UpstreamError, 1024)
            );
            assert_eq!(
                errors.plan(503, Upstream, false),
                rewritten(ErrorCode::UpstreamError, 1024)
            );
            assert_eq!(
                errors.plan(500, Upstream, true),
                head_rewritten(ErrorCode::UpstreamError)
            );
            assert_eq!(errors.plan(500, Filter, false), ResponsePlan::UNTOUCHED);
            assert_eq!(errors.plan(401, Filter, false), ResponsePlan::UNTOUCHED);
        }
    }

    #[test]
    fn four_xx_five_xx_rewrites_client_errors_with_their_codes() {
        let errors = rewrite(r#"{"rewrite_upstream": "4xx_5xx", "log_upstream_body_bytes": 16}"#);
        assert_eq!(errors.plan(200, Upstream, false), ResponsePlan::UNTOUCHED);
        assert_eq!(
            errors.plan(404, Upstream, false),
            rewritten(ErrorCode::NotFound, 16)
        );
        assert_eq!(
            errors.plan(400, Upstream, false),
            rewritten(ErrorCode::BadRequest, 16)
        );
        assert_eq!(
            errors.plan(401, Upstream, false),
            rewritten(ErrorCode::Unauthorized, 16)
        );
        assert_eq!(
            errors.plan(403, Upstream, false),
            rewritten(ErrorCode::Forbidden, 16)
        );
        assert_eq!(
            errors.plan(409, Upstream, false),
            rewritten(ErrorCode::BadRequest, 16)
        );
        assert_eq!(
            errors.plan(413, Upstream, false),
            rewritten(ErrorCode::PayloadTooLarge, 16)
        );
        assert_eq!(
            errors.plan(429, Upstream, false),
            rewritten(ErrorCode::RateLimited, 16)
        );
        assert_eq!(
            errors.plan(500, Upstream, false),
            rewritten(ErrorCode::UpstreamError, 16)
        );
        assert_eq!(
            errors.plan(404, Upstream, true),
            head_rewritten(ErrorCode::NotFound)
        );
        assert_eq!(errors.plan(404, Filter, false), ResponsePlan::UNTOUCHED);
        assert_eq!(errors.plan(503, Filter, true), ResponsePlan::UNTOUCHED);
    }

    #[test]
    fn none_leaves_upstream_responses_alone() {
        let errors = rewrite(r#"{"rewrite_upstream": "none"}"#);
        for status in [200, 404, 500, 503] {
            assert_eq!(
                errors.plan(status, Upstream, false),
                ResponsePlan::UNTOUCHED,
                "{status}"
            );
            assert_eq!(
                errors.plan(status, Upstream, true),
                ResponsePlan::UNTOUCHED,
                "{status}"
            );
            assert_eq!(
                errors.plan(status, Filter, false),
                ResponsePlan::UNTOUCHED,
                "{status}"
            );
        }
    }

    #[test]
    fn envoy_local_replies_are_always_rewritten() {
        for json in [
            r#"{"rewrite_upstream": "none"}"#,
            r#"{"rewrite_upstream": "5xx"}"#,
            r#"{"rewrite_upstream": "4xx_5xx"}"#,
        ] {
            let errors = rewrite(json);
            assert_eq!(
                errors.plan(503, Envoy, false),
                rewritten(ErrorCode::ServiceUnavailable, 1024)
            );
            assert_eq!(
                errors.plan(504, Envoy, false),
                rewritten(ErrorCode::UpstreamError, 1024)
            );
            assert_eq!(
                errors.plan(502, Envoy, false),
                rewritten(ErrorCode::UpstreamError, 1024)
            );
            assert_eq!(
                errors.plan(404, Envoy, false),
                rewritten(ErrorCode::NotFound, 1024)
            );
            assert_eq!(
                errors.plan(503, Envoy, true),
                head_rewritten(ErrorCode::ServiceUnavailable)
            );
            assert_eq!(errors.plan(200, Envoy, false), ResponsePlan::UNTOUCHED);
            assert_eq!(errors.plan(302, Envoy, false), ResponsePlan::UNTOUCHED);
        }
    }

    #[test]
    fn the_envelope_keeps_no_upstream_text() {
        let plan = rewrite("{}").plan(500, Upstream, false);
        assert_eq!(
            plan.envelope("req-1").as_deref(),
            Some(
                r#"{"error":"An unexpected error occurred.","code":"upstream_error","request_id":"req-1"}"#
            )
        );
        assert_eq!(
            rewrite("{}").plan(500, Upstream, true).envelope("req-1"),
            None
        );
        assert_eq!(ResponsePlan::UNTOUCHED.envelope("req-1"), None);
    }

    #[test]
    fn origin_is_classified_from_code_details() {
        assert_eq!(ResponseOrigin::classify(true, Some("via_upstream")), Filter);
        assert_eq!(
            ResponseOrigin::classify(false, Some("via_upstream")),
            Upstream
        );
        assert_eq!(
            ResponseOrigin::classify(false, Some("no_healthy_upstream")),
            Envoy
        );
        assert_eq!(
            ResponseOrigin::classify(false, Some("response_timeout")),
            Envoy
        );
        assert_eq!(ResponseOrigin::classify(false, None), Envoy);
    }

    #[test]
    fn config_refusals_name_the_json_path() {
        let refused = |json: &str| {
            let cfg: ErrorsConfig = serde_json::from_str(json).expect("test config parses");
            ErrorRewrite::compile(Some(&cfg), "errors")
                .err()
                .map(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        assert_eq!(
            refused(r#"{"rewrite_upstream": "5XX"}"#),
            Some(vec!["errors.rewrite_upstream: unknown value \"5XX\": expected \"5xx\", \"4xx_5xx\" or \"none\"".to_string()])
        );
        assert_eq!(
            refused(r#"{"log_upstream_body_bytes": 65537}"#),
            Some(vec![
                "errors.log_upstream_body_bytes: must be at most 65536".to_string()
            ])
        );
        assert_eq!(refused(r#"{"log_upstream_body_bytes": 65536}"#), None);
        assert_eq!(
            rewrite(r#"{"log_upstream_body_bytes": 0}"#)
                .plan(500, Upstream, false)
                .log_bytes,
            0
        );
        assert!(serde_json::from_str::<ErrorsConfig>(r#"{"rewrite": "5xx"}"#).is_err());
        assert!(
            serde_json::from_str::<ErrorsConfig>(r#"{"log_upstream_body_bytes": -1}"#).is_err()
        );
    }

    #[test]
    fn body_sample_keeps_the_first_bytes_across_chunks() {
        let mut sample = BodySample::new(10);
        sample.push(b"Trace");
        assert_eq!(sample.remaining(), 5);
        sample.push(b"back (most");
        sample.push(b" recent call last)");
        assert_eq!(sample.logged(), "Traceback ");
        assert_eq!(sample.total_bytes(), 33);
        assert!(sample.is_truncated());
        assert_eq!(sample.remaining(), 0);
        // The adapter may read only what is wanted of a large chunk.
        sample.push_partial(&[], 1 << 20);
        assert_eq!(sample.total_bytes(), 33 + (1 << 20));
        assert_eq!(sample.logged(), "Traceback ");

        let mut exact = BodySample::new(4);
        exact.push(b"ab");
        exact.push(b"cd");
        assert!(!exact.is_truncated());
        assert_eq!(exact.logged(), "abcd");

        let mut nothing = BodySample::new(0);
        nothing.push(b"secret stack trace");
        assert_eq!(nothing.logged(), "");
        assert_eq!(nothing.total_bytes(), 18);
    }

    #[test]
    fn body_sample_escapes_what_could_forge_or_hide_log_lines() {
        let mut sample = BodySample::new(100);
        sample.push("a\nb\r\tc\\d\u{1b}[31m\u{7f}\u{85}\u{2028}\u{202e}é".as_bytes());
        assert_eq!(
            sample.logged(),
            "a\\nb\\r\\tc\\\\d\\u{1b}[31m\\u{7f}\\u{85}\\u{2028}\\u{202e}é"
        );
        let mut invalid = BodySample::new(100);
        invalid.push(&[b'o', b'k', 0xff, 0xfe, b'!']);
        assert_eq!(invalid.logged(), "ok\\xff\\xfe!");
        // A character cut by the limit: "é" is c3 a9.
        let mut cut = BodySample::new(3);
        cut.push("abé".as_bytes());
        assert_eq!(cut.logged(), "ab\\xc3");
    }
}
