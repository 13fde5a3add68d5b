//! The one error envelope (spec: `{"error", "code", "request_id"}`) and the local replies the
//! filter sends. Bodies hold a generic sentence only: details go to the security-event log.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthorized,
    InvalidToken,
    TokenExpired,
    InvalidApiKey,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    CredentialsInUrl,
    BadRequest,
    InvalidSignature,
    CorsRejected,
    RateLimited,
    UpstreamError,
    ServiceUnavailable,
    TlsRequired,
}

impl ErrorCode {
    /// Every code, in the order of the spec's list (the `code` label values of the metrics).
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::Unauthorized,
        ErrorCode::InvalidToken,
        ErrorCode::TokenExpired,
        ErrorCode::InvalidApiKey,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::PayloadTooLarge,
        ErrorCode::CredentialsInUrl,
        ErrorCode::BadRequest,
        ErrorCode::InvalidSignature,
        ErrorCode::CorsRejected,
        ErrorCode::RateLimited,
        ErrorCode::UpstreamError,
        ErrorCode::ServiceUnavailable,
        ErrorCode::TlsRequired,
    ];

    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::InvalidApiKey => "invalid_api_key",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::CredentialsInUrl => "credentials_in_url",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::CorsRejected => "cors_rejected",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::ServiceUnavailable => "service_unavailable",
            ErrorCode::TlsRequired => "tls_required",
        }
    }

    /// The status the filter answers with (`upstream_error` keeps the upstream's own 5xx).
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized
            | ErrorCode::InvalidToken
            | ErrorCode::TokenExpired
            | ErrorCode::InvalidApiKey => 401,
            ErrorCode::Forbidden | ErrorCode::CorsRejected => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::CredentialsInUrl
            | ErrorCode::BadRequest
            | ErrorCode::InvalidSignature
            | ErrorCode::TlsRequired => 400,
            ErrorCode::RateLimited => 429,
            ErrorCode::UpstreamError => 502,
            ErrorCode::ServiceUnavailable => 503,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "Authentication is required.",
            ErrorCode::InvalidToken => "The access token is invalid.",
            ErrorCode::TokenExpired => "The access token has expired.",
            ErrorCode::InvalidApiKey => "The API key is invalid.",
            ErrorCode::Forbidden => "You do not have permission to perform this request.",
            ErrorCode::NotFound => "The requested resource was not found.",
            ErrorCode::PayloadTooLarge => "The request body is too large.",
            ErrorCode::CredentialsInUrl => "Credentials must not be sent in the URL.",
            ErrorCode::BadRequest => "The request is malformed.",
            ErrorCode::InvalidSignature => "The request signature is invalid.",
            ErrorCode::CorsRejected => "This cross-origin request is not allowed.",
            ErrorCode::RateLimited => "Too many requests.",
            ErrorCode::UpstreamError => "An unexpected error occurred.",
            ErrorCode::ServiceUnavailable => "The service is temporarily unavailable.",
            ErrorCode::TlsRequired => "This API is only served over HTTPS.",
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a str,
    code: &'a str,
    request_id: &'a str,
}

pub fn envelope(code: ErrorCode, request_id: &str) -> String {
    let envelope = Envelope {
        error: code.message(),
        code: code.code(),
        request_id,
    };
    serde_json::to_string(&envelope).unwrap_or_else(|_| String::from("{}"))
}

/// The envelope with `details` (request body validation): field paths and messages, never the
/// rejected values.
pub fn envelope_with_details<D: Serialize>(
    code: ErrorCode,
    request_id: &str,
    details: &D,
) -> String {
    #[derive(Serialize)]
    struct WithDetails<'a, D: Serialize> {
        error: &'a str,
        code: &'a str,
        request_id: &'a str,
        details: &'a D,
    }
    let body = WithDetails {
        error: code.message(),
        code: code.code(),
        request_id,
        details,
    };
    serde_json::to_string(&body).unwrap_or_else(|_| envelope(code, request_id))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub code: ErrorCode,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// RFC 6750 section 3: a challenge without `error` when no token came, with it when one did.
pub const CHALLENGE_NO_TOKEN: &str = "Bearer realm=\"api\"";
pub const CHALLENGE_BAD_TOKEN: &str = "Bearer realm=\"api\", error=\"invalid_token\"";
/// RFC 9449 section 7.1: the DPoP proof (not the token) is at fault.
pub const CHALLENGE_BAD_DPOP_PROOF: &str = "DPoP error=\"invalid_dpop_proof\"";

/// Headers that travel with every envelope body, whoever produced it. `no-store`: the body holds
/// the request id, so a cached copy would hand one request's id to another client.
pub const ENVELOPE_HEADERS: [(&str, &str); 2] = [
    ("content-type", "application/json"),
    ("cache-control", "no-store"),
];

impl LocalReply {
    pub fn new(code: ErrorCode, request_id: &str) -> LocalReply {
        LocalReply::with_status(code, code.status(), request_id)
    }

    /// A reply for `code` with an explicit status. Rewritten upstream and Envoy errors keep the
    /// status they had (a 500 stays a 500, a 504 a 504), where [`ErrorCode::status`] would say
    /// 502 for every `upstream_error`.
    pub fn with_status(code: ErrorCode, status: u16, request_id: &str) -> LocalReply {
        let mut headers: Vec<(String, String)> = ENVELOPE_HEADERS
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        headers.push(("x-request-id".into(), request_id.into()));
        LocalReply {
            status,
            code,
            headers,
            body: envelope(code, request_id),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> LocalReply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_exactly_three_fields_and_escapes_the_request_id() {
        assert_eq!(
            envelope(ErrorCode::InvalidToken, "ab\"c"),
            r#"{"error":"The access token is invalid.","code":"invalid_token","request_id":"ab\"c"}"#
        );
    }

    #[test]
    fn upstream_errors_keep_their_status() {
        let reply = LocalReply::with_status(ErrorCode::UpstreamError, 504, "r1");
        assert_eq!(reply.status, 504);
        assert_eq!(
            reply.body,
            r#"{"error":"An unexpected error occurred.","code":"upstream_error","request_id":"r1"}"#
        );
        assert_eq!(
            LocalReply::new(ErrorCode::NotFound, "r1").headers,
            vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("cache-control".to_string(), "no-store".to_string()),
                ("x-request-id".to_string(), "r1".to_string()),
            ]
        );
    }
}
