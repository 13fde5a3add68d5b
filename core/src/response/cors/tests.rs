//! The CORS decisions: preflights, simple requests, the origin list and its wildcards.

use super::*;

fn cfg(json: &str) -> CorsConfig {
    serde_json::from_str(json).expect("test config parses")
}

fn compile(json: &str) -> Cors {
    Cors::compile(&cfg(json), "cors").expect("test config compiles")
}

fn errors(json: &str) -> Vec<String> {
    match Cors::compile(&cfg(json), "cors") {
        Ok(_) => panic!("expected {json} to be refused"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn head(method: &str, headers: &[(&str, &str)]) -> RequestHead {
    let mut all = vec![
        (":method".to_string(), method.to_string()),
        (":path".to_string(), "/api".to_string()),
    ];
    all.extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    RequestHead::from_host(all, Some("10.0.0.1:1234"))
}

fn get<'a, N: AsRef<str>, V: AsRef<str>>(headers: &'a [(N, V)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.as_ref() == name)
        .map(|(_, v)| v.as_ref())
}

const SPEC: &str = r#"{
    "allow_origins": ["https://app.example.com", "http://localhost:3000"],
    "allow_methods": ["GET", "POST", "PUT", "DELETE", "OPTIONS"],
    "allow_headers": ["content-type", "authorization"],
    "expose_headers": ["x-request-id", "x-trace"],
    "allow_credentials": true,
    "max_age_seconds": 86400
}"#;

#[test]
fn preflight_from_allowed_origin_is_answered_with_every_header() {
    let cors = compile(SPEC);
    let outcome = cors.preflight(&head(
        "OPTIONS",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "PUT"),
            (
                "access-control-request-headers",
                "content-type,authorization",
            ),
        ],
    ));
    let Some(PreflightOutcome::Allowed(headers)) = outcome else {
        panic!("expected an allowed preflight, got {outcome:?}");
    };
    assert_eq!(
        headers,
        vec![
            (
                "access-control-allow-origin".to_string(),
                "https://app.example.com".to_string()
            ),
            (
                "access-control-allow-methods".to_string(),
                "GET, POST, PUT, DELETE, OPTIONS".to_string()
            ),
            (
                "access-control-allow-headers".to_string(),
                "content-type, authorization".to_string()
            ),
            ("access-control-max-age".to_string(), "86400".to_string()),
            (
                "access-control-allow-credentials".to_string(),
                "true".to_string()
            ),
            (
                "vary".to_string(),
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers".to_string()
            ),
        ]
    );
}

#[test]
fn preflight_is_refused_for_origin_method_and_header_outside_the_lists() {
    let cors = compile(SPEC);
    let check = |headers: &[(&str, &str)]| cors.preflight(&head("OPTIONS", headers));
    assert_eq!(
        check(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET")
        ]),
        Some(PreflightOutcome::Rejected(REJECT_ORIGIN))
    );
    // A suffix, a prefix or another port of an allowed origin is another origin.
    for origin in [
        "https://app.example.com.evil.example",
        "https://evilapp.example.com",
        "https://app.example.com:8443",
        "http://app.example.com",
        "https://app.example.com/",
        "null",
    ] {
        assert_eq!(
            check(&[("origin", origin), ("access-control-request-method", "GET")]),
            Some(PreflightOutcome::Rejected(REJECT_ORIGIN)),
            "{origin}"
        );
    }
    assert_eq!(
        check(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "PATCH")
        ]),
        Some(PreflightOutcome::Rejected(REJECT_METHOD))
    );
    // Methods are case-sensitive.
    assert_eq!(
        check(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "put")
        ]),
        Some(PreflightOutcome::Rejected(REJECT_METHOD))
    );
    assert_eq!(
        check(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type, x-custom"),
        ]),
        Some(PreflightOutcome::Rejected(REJECT_HEADER))
    );
    // Even a CORS-safelisted name needs listing once the browser asks for it.
    assert_eq!(
        check(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "accept-language"),
        ]),
        Some(PreflightOutcome::Rejected(REJECT_HEADER))
    );
}

#[test]
fn requested_header_list_is_case_insensitive_and_whitespace_tolerant() {
    let cors = compile(SPEC);
    for list in [
        "Content-Type, AUTHORIZATION",
        " content-type ,\tauthorization ",
        "content-type,,authorization,",
        "",
    ] {
        let outcome = cors.preflight(&head(
            "OPTIONS",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", list),
            ],
        ));
        assert!(
            matches!(outcome, Some(PreflightOutcome::Allowed(_))),
            "{list:?}: {outcome:?}"
        );
    }
    // Several header lines are one list.
    let outcome = cors.preflight(&head(
        "OPTIONS",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
            ("access-control-request-headers", "x-other"),
        ],
    ));
    assert_eq!(outcome, Some(PreflightOutcome::Rejected(REJECT_HEADER)));
}

#[test]
fn origin_comparison_ignores_case_of_scheme_and_host() {
    let cors = compile(SPEC);
    let headers = cors.response_headers(Some("HTTPS://App.Example.COM"));
    // The configured form is sent back, not the client's bytes.
    assert_eq!(
        get(&headers, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
}

#[test]
fn not_a_preflight_without_options_origin_and_request_method() {
    let cors = compile(SPEC);
    assert_eq!(
        cors.preflight(&head("OPTIONS", &[("origin", "https://app.example.com")])),
        None
    );
    assert_eq!(
        cors.preflight(&head(
            "OPTIONS",
            &[("access-control-request-method", "GET")]
        )),
        None
    );
    assert_eq!(
        cors.preflight(&head(
            "GET",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET")
            ]
        )),
        None
    );
}

#[test]
fn ambiguous_preflights_are_refused() {
    let cors = compile(SPEC);
    assert_eq!(
        cors.preflight(&head(
            "OPTIONS",
            &[
                ("origin", "https://app.example.com"),
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ]
        )),
        Some(PreflightOutcome::Rejected(REJECT_SEVERAL_ORIGINS))
    );
    assert_eq!(
        cors.preflight(&head(
            "OPTIONS",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
                ("access-control-request-method", "DELETE"),
            ]
        )),
        Some(PreflightOutcome::Rejected(REJECT_SEVERAL_METHODS))
    );
    assert_eq!(
        request_origin(&head(
            "GET",
            &[
                ("origin", "https://a.example"),
                ("origin", "https://b.example")
            ]
        )),
        None
    );
}

#[test]
fn actual_response_gets_exact_origin_credentials_and_exposed_headers() {
    let cors = compile(SPEC);
    let headers = cors.response_headers(Some("https://app.example.com"));
    assert_eq!(
        headers,
        vec![
            ("access-control-allow-origin", "https://app.example.com"),
            ("access-control-allow-credentials", "true"),
            (
                "access-control-expose-headers",
                "x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, ratelimit, ratelimit-policy, retry-after, x-request-id, x-trace"
            ),
            ("vary", "Origin"),
        ]
    );
}

#[test]
fn other_origins_get_no_cors_header_but_always_vary_origin() {
    let cors = compile(SPEC);
    let only_vary = vec![("vary", "Origin")];
    assert_eq!(
        cors.response_headers(Some("https://evil.example")),
        only_vary
    );
    assert_eq!(cors.response_headers(Some("null")), only_vary);
    assert_eq!(cors.response_headers(None), only_vary);
}

#[test]
fn wildcard_answers_a_literal_star_without_credentials() {
    let cors = compile(r#"{"allow_origins": ["*"]}"#);
    let headers = cors.response_headers(Some("https://anyone.example"));
    assert_eq!(get(&headers, "access-control-allow-origin"), Some("*"));
    assert_eq!(get(&headers, "access-control-allow-credentials"), None);
    let Some(PreflightOutcome::Allowed(preflight)) = cors.preflight(&head(
        "OPTIONS",
        &[
            ("origin", "null"),
            ("access-control-request-method", "PATCH"),
        ],
    )) else {
        panic!("\"*\" allows every origin");
    };
    assert_eq!(get(&preflight, "access-control-allow-origin"), Some("*"));
    assert_eq!(
        get(&preflight, "access-control-allow-methods"),
        Some("GET, HEAD, POST, PUT, PATCH, DELETE")
    );
    assert_eq!(get(&preflight, "access-control-max-age"), Some("600"));
    // No header list configured: no allow-headers header, and any requested header is refused.
    assert_eq!(get(&preflight, "access-control-allow-headers"), None);
    assert_eq!(
        cors.preflight(&head(
            "OPTIONS",
            &[
                ("origin", "https://a.example"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-anything"),
            ],
        )),
        Some(PreflightOutcome::Rejected(REJECT_HEADER))
    );
}

#[test]
fn null_is_allowed_only_when_listed_and_warned_about_with_credentials() {
    let cors = compile(r#"{"allow_origins": ["https://a.example", "null"]}"#);
    assert_eq!(
        get(
            &cors.response_headers(Some("null")),
            "access-control-allow-origin"
        ),
        Some("null")
    );
    assert!(cors.warnings().is_empty());
    let cors = compile(r#"{"allow_origins": ["null"], "allow_credentials": true}"#);
    assert_eq!(cors.warnings().len(), 1);
    assert_eq!(cors.warnings()[0].path, "cors.allow_origins[0]");
}

#[test]
fn refused_configurations_name_the_json_path() {
    let cases: &[(&str, &str)] = &[
        (r#"{"allow_origins": ["*"], "allow_credentials": true}"#, "cors.allow_origins: \"*\" cannot be combined with allow_credentials"),
        (r#"{"allow_origins": ["*", "https://a.com"]}"#, "cors.allow_origins: \"*\" already allows every origin"),
        (r#"{"allow_origins": []}"#, "cors.allow_origins: must list at least one origin"),
        (r#"{"allow_origins": ["https://ok.com", "https://a.com/"]}"#, "cors.allow_origins[1]: \"https://a.com/\": an origin has no path, query or trailing slash: write \"https://a.com\""),
        (r#"{"allow_origins": ["https://a.com/path"]}"#, "cors.allow_origins[0]: \"https://a.com/path\": an origin has no path"),
        (r#"{"allow_origins": ["https://a.com?x=1"]}"#, "cors.allow_origins[0]: \"https://a.com?x=1\": an origin has no path"),
        (r#"{"allow_origins": ["https://*.a.com"]}"#, "cors.allow_origins[0]: \"https://*.a.com\": wildcards are not supported"),
        (r#"{"allow_origins": ["https://a.*.com"]}"#, "cors.allow_origins[0]: \"https://a.*.com\": wildcards are not supported"),
        (r#"{"allow_origins": ["ftp://x"]}"#, "cors.allow_origins[0]: \"ftp://x\": the scheme must be http or https"),
        (r#"{"allow_origins": ["a.com"]}"#, "cors.allow_origins[0]: \"a.com\" is not an origin"),
        (r#"{"allow_origins": ["https://A.com"]}"#, "cors.allow_origins[0]: \"https://A.com\": origins are compared as browsers send them, in lower case: write \"https://a.com\""),
        (r#"{"allow_origins": ["https://a.com:99999"]}"#, "cors.allow_origins[0]: \"https://a.com:99999\": invalid port \"99999\""),
        (r#"{"allow_origins": ["https://a.com:0"]}"#, "cors.allow_origins[0]: \"https://a.com:0\": invalid port \"0\""),
        (r#"{"allow_origins": ["https://a.com:"]}"#, "cors.allow_origins[0]: \"https://a.com:\": invalid port \"\""),
        (r#"{"allow_origins": ["https://a.com:08080"]}"#, "cors.allow_origins[0]: \"https://a.com:08080\": invalid port"),
        (r#"{"allow_origins": ["https://a.com:x"]}"#, "cors.allow_origins[0]: \"https://a.com:x\": invalid port"),
        (r#"{"allow_origins": ["https://a.com:443"]}"#, "cors.allow_origins[0]: \"https://a.com:443\": browsers never send the default port: write \"https://a.com\""),
        (r#"{"allow_origins": ["http://a.com:80"]}"#, "cors.allow_origins[0]: \"http://a.com:80\": browsers never send the default port"),
        (r#"{"allow_origins": ["https://user@a.com"]}"#, "cors.allow_origins[0]: \"https://user@a.com\": an origin has no user information"),
        (r#"{"allow_origins": ["https://a..com"]}"#, "cors.allow_origins[0]: \"https://a..com\": empty label"),
        (r#"{"allow_origins": ["https://"]}"#, "cors.allow_origins[0]: \"https://\": the host is empty"),
        (r#"{"allow_origins": ["https://1.2.3"]}"#, "cors.allow_origins[0]: \"https://1.2.3\": \"1.2.3\" is not an IPv4 address"),
        (r#"{"allow_origins": ["https://[0:0::1]"]}"#, "cors.allow_origins[0]: \"https://[0:0::1]\": browsers write this IPv6 address as \"[::1]\""),
        (r#"{"allow_origins": ["https://a.com", "https://a.com"]}"#, "cors.allow_origins[1]: duplicate origin \"https://a.com\""),
        (r#"{"allow_origins": ["NULL"]}"#, "cors.allow_origins[0]: \"NULL\": origins are compared as browsers send them, in lower case: write \"null\""),
        (r#"{"allow_origins": ["https://a.com"], "allow_methods": ["get"]}"#, "cors.allow_methods[0]: methods are case-sensitive and upper case: write \"GET\""),
        (r#"{"allow_origins": ["https://a.com"], "allow_methods": ["GET", "GET"]}"#, "cors.allow_methods[1]: duplicate method \"GET\""),
        (r#"{"allow_origins": ["https://a.com"], "allow_methods": ["GET "]}"#, "cors.allow_methods[0]: \"GET \" is not an HTTP method"),
        (r#"{"allow_origins": ["https://a.com"], "allow_methods": []}"#, "cors.allow_methods: must not be empty"),
        (r#"{"allow_origins": ["https://a.com"], "allow_headers": ["Content-Type"]}"#, "cors.allow_headers[0]: header names are written in lower case: write \"content-type\""),
        (r#"{"allow_origins": ["https://a.com"], "allow_headers": ["x y"]}"#, "cors.allow_headers[0]: \"x y\" is not a valid header name"),
        (r#"{"allow_origins": ["https://a.com"], "allow_headers": ["*"]}"#, "cors.allow_headers[0]: \"*\" is not supported"),
        (r#"{"allow_origins": ["https://a.com"], "expose_headers": ["x-a", "x-a"]}"#, "cors.expose_headers[1]: duplicate header \"x-a\""),
        (r#"{"allow_origins": ["https://a.com"], "max_age_seconds": 86401}"#, "cors.max_age_seconds: must be at most 86400"),
    ];
    for (json, expected) in cases {
        let found = errors(json);
        assert!(
            found.iter().any(|e| e.starts_with(expected)),
            "{json}: expected an error starting with {expected:?}, got {found:?}"
        );
    }
}

#[test]
fn valid_origin_forms_are_accepted() {
    let cors = compile(
        r#"{"allow_origins": ["http://localhost:3000", "https://127.0.0.1:8443", "https://[::1]",
            "https://xn--bcher-kva.example", "http://a.example:443", "https://my_host.example"]}"#,
    );
    for origin in [
        "http://localhost:3000",
        "https://[::1]",
        "http://a.example:443",
    ] {
        assert_eq!(
            get(
                &cors.response_headers(Some(origin)),
                "access-control-allow-origin"
            ),
            Some(origin)
        );
    }
}

#[test]
fn the_spec_example_compiles() {
    let cors = compile(
        r#"{"allow_origins": ["https://app.example.com"],
            "allow_methods": ["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            "allow_headers": ["content-type", "authorization"],
            "expose_headers": ["x-request-id"],
            "allow_credentials": true, "max_age_seconds": 86400}"#,
    );
    assert!(cors.warnings().is_empty());
    let headers = cors.response_headers(Some("https://app.example.com"));
    // x-request-id is a default already: listed once.
    assert_eq!(
        get(&headers, "access-control-expose-headers"),
        Some("x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, ratelimit, ratelimit-policy, retry-after, x-request-id")
    );
}

#[test]
fn unknown_fields_are_refused() {
    assert!(
        serde_json::from_str::<CorsConfig>(r#"{"allow_origins": [], "allow_origin": []}"#).is_err()
    );
}
