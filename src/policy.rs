//! The compiled policy and the per-request decision. Everything here is host-independent: the
//! adapter hands in a [`RequestHead`] and a [`RequestEnv`] and carries out the [`Decision`].

use crate::events::SecurityEvent;
use crate::jwt::cache::TokenCache;
use crate::jwt::verifier::SignatureVerifier;
use crate::jwt::{JwtAuth, JwtFailure, TokenSource};
use crate::reply::{ErrorCode, LocalReply, CHALLENGE_BAD_TOKEN, CHALLENGE_NO_TOKEN};
use crate::request::RequestHead;
use crate::routes::{normalize_path, CompiledMatch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    /// Every decision is computed and logged; nothing is refused.
    Report,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Report => "report",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    Jwt,
}

pub struct Route {
    pub name: String,
    pub matcher: CompiledMatch,
    pub auth: Auth,
}

pub struct Policy {
    pub mode: Mode,
    pub jwt: Option<JwtAuth>,
    pub routes: Vec<Route>,
}

/// What the host lends the core for one request.
pub struct RequestEnv<'a> {
    /// Unix time in seconds.
    pub now: u64,
    pub verifier: &'a dyn SignatureVerifier,
    pub token_cache: &'a mut TokenCache,
}

/// Changes to make to the request before it goes upstream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Forward {
    pub remove_headers: Vec<String>,
    pub set_headers: Vec<(String, String)>,
    /// The normalised `:path`, when it differs from what the client sent: the upstream must see
    /// the path that was matched, or a route could be bypassed.
    pub set_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow(Forward),
    Deny(LocalReply),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub event: Option<SecurityEvent>,
}

/// Context for the event of a refusal.
struct Refusal {
    reply: LocalReply,
    reason: String,
    event: &'static str,
}

impl Policy {
    pub fn check_request(&self, head: &RequestHead, env: &mut RequestEnv<'_>) -> Decision {
        let mut forward = Forward::default();
        // Identity headers are the filter's to set: a client that sends its own `x-user-id` is
        // lying, on every route, with or without a token.
        if let Some(jwt) = &self.jwt {
            for name in &jwt.identity_headers {
                if head.has_header(name) {
                    forward.remove_headers.push(name.clone());
                }
            }
        }
        let mut route_name = None;
        let mut principal = None;
        let mut log_path = String::new();
        let outcome = self.decide(
            head,
            env,
            &mut forward,
            &mut route_name,
            &mut principal,
            &mut log_path,
        );
        match outcome {
            Ok(()) => Decision {
                verdict: Verdict::Allow(forward),
                event: None,
            },
            Err(refusal) => {
                let event = SecurityEvent {
                    kind: "security_event",
                    event: refusal.event,
                    code: refusal.reply.code.code(),
                    status: refusal.reply.status,
                    mode: self.mode.name(),
                    route: route_name,
                    method: head.method.clone(),
                    path: log_path,
                    client: head.client_ip.clone(),
                    principal,
                    request_id: head.request_id.clone(),
                    reason: refusal.reason,
                };
                let verdict = match self.mode {
                    Mode::Enforce => Verdict::Deny(refusal.reply),
                    Mode::Report => Verdict::Allow(forward),
                };
                Decision {
                    verdict,
                    event: Some(event),
                }
            }
        }
    }

    fn decide(
        &self,
        head: &RequestHead,
        env: &mut RequestEnv<'_>,
        forward: &mut Forward,
        route_name: &mut Option<String>,
        principal: &mut Option<String>,
        log_path: &mut String,
    ) -> Result<(), Refusal> {
        let request_id = head.request_id.as_str();
        let normalized = match normalize_path(&head.path) {
            Ok(n) => n,
            Err(e) => {
                return Err(Refusal {
                    reply: LocalReply::new(ErrorCode::BadRequest, request_id),
                    reason: format!("path cannot be normalised: {}", e.reason()),
                    event: "bad_request",
                })
            }
        };
        log_path.clone_from(&normalized.path);
        if normalized.changed {
            forward.set_path = Some(normalized.to_request_path());
        }
        let Some(route) = self.routes.iter().find(|r| {
            r.matcher
                .matches(&head.method, &head.authority, &normalized.path)
                .is_some()
        }) else {
            return Err(Refusal {
                reply: LocalReply::new(ErrorCode::NotFound, request_id),
                reason: "no route matches".into(),
                event: "no_route",
            });
        };
        *route_name = Some(route.name.clone());
        match route.auth {
            Auth::None => Ok(()),
            Auth::Jwt => {
                let Some(jwt) = &self.jwt else {
                    // Config validation makes this unreachable; fail closed all the same.
                    return Err(Refusal {
                        reply: LocalReply::new(ErrorCode::ServiceUnavailable, request_id),
                        reason: "route needs jwt but no provider is configured".into(),
                        event: "config_error",
                    });
                };
                let refused = |failure: JwtFailure| {
                    let (code, challenge, reason) = match failure {
                        JwtFailure::Missing => {
                            (ErrorCode::Unauthorized, CHALLENGE_NO_TOKEN, "no token")
                        }
                        JwtFailure::Refused {
                            expired: true,
                            reason,
                        } => (ErrorCode::TokenExpired, CHALLENGE_BAD_TOKEN, reason),
                        JwtFailure::Refused {
                            expired: false,
                            reason,
                        } => (ErrorCode::InvalidToken, CHALLENGE_BAD_TOKEN, reason),
                    };
                    Refusal {
                        reply: LocalReply::new(code, request_id)
                            .with_header("www-authenticate", challenge),
                        reason: reason.into(),
                        event: "auth_failure",
                    }
                };
                let found = jwt
                    .find_token(head)
                    .map_err(refused)?
                    .ok_or_else(|| refused(JwtFailure::Missing))?;
                let verified = jwt
                    .verify(found, env.now, env.verifier, env.token_cache)
                    .map_err(refused)?;
                principal.clone_from(&verified.subject);
                forward
                    .set_headers
                    .extend(verified.upstream_headers.iter().cloned());
                let forward_token = jwt
                    .providers
                    .get(verified.provider)
                    .is_some_and(|p| p.forward_token);
                if !forward_token {
                    match jwt.sources.get(found.source) {
                        Some(TokenSource::Header { name, .. }) => {
                            forward.remove_headers.push(name.clone())
                        }
                        Some(TokenSource::Cookie { name }) => {
                            match head.cookie_header_without(name) {
                                Some(rest) => forward.set_headers.push(("cookie".into(), rest)),
                                None => forward.remove_headers.push("cookie".into()),
                            }
                        }
                        None => {}
                    }
                }
                Ok(())
            }
        }
    }

    /// Headers every response gets, allowed or refused, so that clients and logs correlate.
    pub fn response_headers(&self, request_id: &str) -> Vec<(&'static str, String)> {
        if request_id.is_empty() {
            Vec::new()
        } else {
            vec![("x-request-id", request_id.to_string())]
        }
    }
}
