//! Every place the configuration reads a credential from, and their removal before a request
//! goes upstream.
//!
//! The threat: an upstream that decodes a token without verifying it (or logs an API key)
//! trusts whatever reaches it. A forged bearer token on an `auth: none` route, an API key on a
//! public route, a forged token next to a valid API key, a forged cookie next to a verified
//! header token: none of them was verified, so none may reach the upstream. A credential is
//! forwarded only when the filter verified that very credential and its provider says
//! `forward_token: true`; API keys are never forwarded (the upstream gets `x-api-key-id`).

use crate::authn::api_keys::{ApiKeys, AUTHORIZATION_SCHEME};
use crate::authn::jwt::{JwtAuth, TokenSource};
use crate::request::head::RequestHead;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// A header (lower-case name). With a scheme, only values that start with it (compared
    /// case-insensitively, as `Authorization` schemes are) are credentials: `Authorization:
    /// Basic` on a login route is not a bearer token.
    Header {
        name: String,
        scheme: Option<String>,
    },
    Cookie {
        name: String,
    },
}

/// The credential locations of a configuration, compiled once.
#[derive(Debug, Clone, Default)]
pub struct CredentialLocations {
    locations: Vec<Location>,
}

/// What may still go upstream: the JWT source whose token verified, when its provider forwards
/// tokens.
pub type Kept<'a> = Option<&'a TokenSource>;

/// Changes that remove credentials from a request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removal {
    pub remove_headers: Vec<String>,
    /// The `cookie` header without the credential cookies (`Some(None)`: remove the header).
    pub cookie: Option<Option<String>>,
}

impl CredentialLocations {
    pub fn compile(jwt: Option<&JwtAuth>, api_keys: Option<&ApiKeys>) -> CredentialLocations {
        let mut locations = Vec::new();
        let mut add = |location: Location| {
            if !locations.contains(&location) {
                locations.push(location);
            }
        };
        for source in jwt.map(|j| j.sources.as_slice()).unwrap_or_default() {
            match source.header() {
                Some((name, prefix)) => {
                    let scheme = prefix.trim();
                    add(Location::Header {
                        name: name.to_string(),
                        scheme: (!scheme.is_empty()).then(|| scheme.to_string()),
                    });
                }
                None => {
                    if let TokenSource::Cookie { name } = source {
                        add(Location::Cookie { name: name.clone() });
                    }
                }
            }
        }
        if let Some(keys) = api_keys {
            add(Location::Header {
                name: keys.header_name().to_string(),
                scheme: None,
            });
            add(Location::Header {
                name: "authorization".to_string(),
                scheme: Some(AUTHORIZATION_SCHEME.to_string()),
            });
        }
        CredentialLocations { locations }
    }

    /// Names of the headers credentials are read from (their `_` twins are removed too).
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.locations.iter().filter_map(|l| match l {
            Location::Header { name, .. } => Some(name.as_str()),
            Location::Cookie { .. } => None,
        })
    }

    /// What to remove from `head` so that no credential but the `kept` one goes upstream.
    pub fn removal(&self, head: &RequestHead, kept: Kept<'_>) -> Removal {
        let mut removal = Removal::default();
        let mut cookies: Vec<&str> = Vec::new();
        for location in &self.locations {
            match location {
                Location::Header { name, scheme } => {
                    let kept_here =
                        kept.and_then(TokenSource::header).map(|(k, _)| k) == Some(name.as_str());
                    if kept_here || removal.remove_headers.contains(name) {
                        continue;
                    }
                    let holds_credential = head.header_values(name).any(|value| match scheme {
                        None => true,
                        Some(scheme) => starts_with_scheme(value, scheme),
                    });
                    if holds_credential {
                        removal.remove_headers.push(name.clone());
                    }
                }
                Location::Cookie { name } => {
                    let kept_here =
                        matches!(kept, Some(TokenSource::Cookie { name: k }) if k == name);
                    if !kept_here && head.cookie_count(name) > 0 {
                        cookies.push(name);
                    }
                }
            }
        }
        if !cookies.is_empty() {
            removal.cookie = Some(head.cookie_header_without(&cookies));
        }
        removal
    }
}

/// `Bearer x`, `bearer x`, ` Bearer x`: the value's first token is the scheme.
fn starts_with_scheme(value: &str, scheme: &str) -> bool {
    let value = value.trim_start();
    let token = value.split([' ', '\t']).next().unwrap_or("");
    token.eq_ignore_ascii_case(scheme)
}

#[cfg(test)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead::from_host(
            headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            None,
        )
    }

    fn locations() -> CredentialLocations {
        CredentialLocations {
            locations: vec![
                Location::Header {
                    name: "authorization".into(),
                    scheme: Some("Bearer".into()),
                },
                Location::Cookie {
                    name: "session".into(),
                },
                Location::Header {
                    name: "x-api-key".into(),
                    scheme: None,
                },
                Location::Header {
                    name: "authorization".into(),
                    scheme: Some("ApiKey".into()),
                },
            ],
        }
    }

    #[test]
    fn every_credential_goes_unless_kept() {
        let l = locations();
        let h = head(&[
            ("authorization", "bearer forged"),
            ("x-api-key", "ag_live_x"),
            ("cookie", "a=1; session=forged; b=2"),
        ]);
        let removal = l.removal(&h, None);
        assert_eq!(removal.remove_headers, vec!["authorization", "x-api-key"]);
        assert_eq!(removal.cookie, Some(Some("a=1; b=2".to_string())));

        let kept = TokenSource::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        };
        let removal = l.removal(&h, Some(&kept));
        assert_eq!(removal.remove_headers, vec!["x-api-key"]);

        let kept = TokenSource::Cookie {
            name: "session".into(),
        };
        let removal = l.removal(&h, Some(&kept));
        assert_eq!(removal.remove_headers, vec!["authorization", "x-api-key"]);
        assert_eq!(removal.cookie, None);
    }

    #[test]
    fn other_authorization_schemes_stay() {
        let l = locations();
        let removal = l.removal(&head(&[("authorization", "Basic dXNlcjpwYXNz")]), None);
        assert_eq!(removal, Removal::default());
        let removal = l.removal(&head(&[("authorization", "APIKEY ag_live_x")]), None);
        assert_eq!(removal.remove_headers, vec!["authorization"]);
        // A second Authorization header with a bearer token takes both with it.
        let removal = l.removal(
            &head(&[("authorization", "Basic x"), ("authorization", "Bearer y")]),
            None,
        );
        assert_eq!(removal.remove_headers, vec!["authorization"]);
    }

    #[test]
    fn the_only_cookie_removed_removes_the_header() {
        let removal = locations().removal(&head(&[("cookie", "session=x")]), None);
        assert_eq!(removal.cookie, Some(None));
    }
}
