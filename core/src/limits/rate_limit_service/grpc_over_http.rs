//! The gRPC call to the Rate Limit Service as one plain HTTP/2 request, for a host that has
//! HTTP callouts and no gRPC client (the Envoy dynamic module): the request's headers and its
//! length-prefixed body (gRPC over HTTP/2: a flag byte, a 4-byte big-endian length, the
//! message), and what the answer means.
//!
//! A host's HTTP callout hands back the response headers and body but not its trailers, where
//! a gRPC server puts `grpc-status` after a message. So: a `grpc-status` in the headers (a
//! trailers-only answer, which is how servers send errors) is the call's status; otherwise a
//! `200` with exactly one well-formed, uncompressed frame is status 0 with that message; a
//! transport failure (reset, timeout, no connection) is 14, UNAVAILABLE, as Envoy's own gRPC
//! client reports it; anything else is 13, INTERNAL. Each of these failures then follows the
//! service's `failure_mode`.

use super::{ServiceCall, ServiceReply, GRPC_METHOD, GRPC_SERVICE, MAX_ANSWER_BYTES};

/// gRPC's status for a transport failure (and for an HTTP/2 error status).
pub const UNAVAILABLE: u32 = 14;
/// gRPC's status for an answer that is not a gRPC answer.
pub const INTERNAL: u32 = 13;

/// The HTTP request for `call`: its headers (`:authority` is the cluster's name, as Envoy's
/// gRPC client sends it) and its body.
pub fn request(call: &ServiceCall) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let headers = vec![
        (":method", "POST".to_string()),
        (":path", format!("/{GRPC_SERVICE}/{GRPC_METHOD}")),
        (":authority", call.cluster.clone()),
        ("content-type", "application/grpc".to_string()),
        ("te", "trailers".to_string()),
    ];
    let mut body = Vec::with_capacity(5 + call.message.len());
    body.push(0);
    body.extend_from_slice(&(call.message.len() as u32).to_be_bytes());
    body.extend_from_slice(&call.message);
    (headers, body)
}

/// An HTTP answer as the host got it.
#[derive(Debug, Clone, Copy)]
pub struct HttpAnswer<'a> {
    /// `:status`.
    pub status: u16,
    /// The `grpc-status` header, if the answer has one (trailers-only).
    pub grpc_status: Option<&'a [u8]>,
    pub body: &'a [u8],
}

/// What the answer means (`None`: no response came at all).
pub fn reply(answer: Option<HttpAnswer<'_>>) -> ServiceReply {
    let Some(HttpAnswer {
        status,
        grpc_status,
        body,
    }) = answer
    else {
        return ServiceReply::Failed {
            grpc_status: UNAVAILABLE,
        };
    };
    if let Some(code) = grpc_status {
        let code = std::str::from_utf8(code)
            .ok()
            .and_then(|c| c.trim().parse::<u32>().ok())
            .unwrap_or(INTERNAL);
        if code != 0 {
            return ServiceReply::Failed { grpc_status: code };
        }
    }
    if status != 200 {
        return ServiceReply::Failed {
            grpc_status: UNAVAILABLE,
        };
    }
    match body {
        [0, l0, l1, l2, l3, message @ ..]
            if u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize == message.len()
                && message.len() <= MAX_ANSWER_BYTES =>
        {
            ServiceReply::Message(message.to_vec())
        }
        _ => ServiceReply::Failed {
            grpc_status: INTERNAL,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn answer<'a>(status: u16, grpc_status: Option<&'a [u8]>, body: &'a [u8]) -> HttpAnswer<'a> {
        HttpAnswer {
            status,
            grpc_status,
            body,
        }
    }

    fn call(message: &[u8]) -> ServiceCall {
        ServiceCall {
            cluster: "ratelimit".into(),
            message: message.to_vec(),
            timeout_ms: 100,
        }
    }

    #[test]
    fn the_request_is_one_length_prefixed_message() {
        let (headers, body) = request(&call(b"abc"));
        assert_eq!(body, [0, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert!(headers.contains(&(
            ":path",
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit".into()
        )));
        assert!(headers.contains(&("content-type", "application/grpc".into())));
        assert!(headers.contains(&(":authority", "ratelimit".into())));
    }

    #[test]
    fn answers_and_failures() {
        let framed = [0, 0, 0, 0, 2, 8, 1];
        assert_eq!(
            reply(Some(answer(200, None, &framed))),
            ServiceReply::Message(vec![8, 1])
        );
        assert_eq!(
            reply(Some(answer(200, Some(b"0"), &framed))),
            ServiceReply::Message(vec![8, 1])
        );
        // Trailers-only errors, transport failures, HTTP errors, broken frames.
        assert_eq!(
            reply(Some(answer(200, Some(b"8"), b""))),
            ServiceReply::Failed { grpc_status: 8 }
        );
        assert_eq!(reply(None), ServiceReply::Failed { grpc_status: 14 });
        assert_eq!(
            reply(Some(answer(503, None, b""))),
            ServiceReply::Failed { grpc_status: 14 }
        );
        for broken in [&b""[..], &[0, 0, 0, 0, 9, 1][..], &[1, 0, 0, 0, 1, 1][..]] {
            assert_eq!(
                reply(Some(answer(200, None, broken))),
                ServiceReply::Failed { grpc_status: 13 },
                "{broken:?}"
            );
        }
    }
}
