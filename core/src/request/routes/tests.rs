//! Path normalisation and route matching: every reading an upstream could take, and the compile errors.

use super::*;

// ----- normalisation ---------------------------------------------------------------------

/// (input, expected path, expected query, expected changed)
const ACCEPTED: &[(&str, &str, Option<&str>, bool)] = &[
    // already normal
    ("/", "/", None, false),
    ("/a/b", "/a/b", None, false),
    ("/a/b/", "/a/b/", None, false),
    ("/a/b..c/.x", "/a/b..c/.x", None, false),
    ("/.well-known/x", "/.well-known/x", None, false),
    ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=", None, false),
    // dot segments
    ("/a/./b", "/a/b", None, true),
    ("/a/../b", "/b", None, true),
    ("/a/b/.", "/a/b/", None, true),
    ("/a/b/..", "/a/", None, true),
    ("/a/..", "/", None, true),
    ("/.", "/", None, true),
    ("/a/b/../../c", "/c", None, true),
    ("/./a", "/a", None, true),
    // encoded dots are decoded first, then removed
    ("/a/%2e%2e/b", "/b", None, true),
    ("/a/%2E%2E/b", "/b", None, true),
    ("/a/.%2e/b", "/b", None, true),
    ("/a/%2e", "/a/", None, true),
    ("/a/%2e/b", "/a/b", None, true),
    // repeated slashes
    ("//admin", "/admin", None, true),
    ("/a//b///c", "/a/b/c", None, true),
    ("/a//", "/a/", None, true),
    ("//", "/", None, true),
    // unreserved escapes decoded
    ("/%7euser", "/~user", None, true),
    ("/%7Euser", "/~user", None, true),
    ("/%41%7a%30%2D%5f%2E%7E", "/Az0-_.~", None, true),
    // other escapes kept, hex upper-cased
    ("/a%3Ab", "/a%3Ab", None, false),
    ("/a%3ab", "/a%3Ab", None, true),
    ("/a%C3%a9", "/a%C3%A9", None, true),
    ("/a%20b", "/a%20b", None, false),
    ("/%E2%82%AC", "/%E2%82%AC", None, false),
    // bytes not allowed raw in a path are percent-encoded
    ("/caf\u{e9}", "/caf%C3%A9", None, true),
    ("/a{b}", "/a%7Bb%7D", None, true),
    ("/a\"<>[]^`|", "/a%22%3C%3E%5B%5D%5E%60%7C", None, true),
    // query: raw, untouched, not validated beyond the raw-byte rules
    ("/a?x=1", "/a", Some("x=1"), false),
    ("/a?", "/a", Some(""), false),
    (
        "/a/../b?x=%2F&y=/../..%zz",
        "/b",
        Some("x=%2F&y=/../..%zz"),
        true,
    ),
    ("/a?b?c", "/a", Some("b?c"), false),
    ("/a%3a?q=%3a", "/a%3A", Some("q=%3a"), true),
    ("/?x=caf\u{e9}", "/", Some("x=caf\u{e9}"), false),
    // dots that are not whole segments
    ("/a/..x/b", "/a/..x/b", None, false),
    ("/a/x..y", "/a/x..y", None, false),
    // a query may hold anything a path may not
    ("/a?x=;%25%2e.", "/a", Some("x=;%25%2e."), false),
];

const REJECTED: &[(&str, PathError)] = &[
    ("", PathError::NotOriginForm),
    ("*", PathError::NotOriginForm),
    ("a/b", PathError::NotOriginForm),
    ("http://example.com/a", PathError::NotOriginForm),
    ("?a", PathError::NotOriginForm),
    ("%2Fa", PathError::NotOriginForm),
    // dot segments escaping the root
    ("/..", PathError::DotSegmentEscapesRoot),
    ("/../a", PathError::DotSegmentEscapesRoot),
    ("/a/../..", PathError::DotSegmentEscapesRoot),
    ("/a/../../b", PathError::DotSegmentEscapesRoot),
    ("/./..", PathError::DotSegmentEscapesRoot),
    ("/%2e%2e", PathError::DotSegmentEscapesRoot),
    ("/a/%2E%2E/%2E%2E/..", PathError::DotSegmentEscapesRoot),
    ("//../a", PathError::DotSegmentEscapesRoot),
    // servlet path parameters, raw or encoded, alone or next to dot segments
    ("/admin;x=1/x", PathError::PathParameter),
    ("/a;x/b", PathError::PathParameter),
    ("/a/..;/admin", PathError::PathParameter),
    ("/a/..;x=1/admin", PathError::PathParameter),
    ("/a/.;x/b", PathError::PathParameter),
    ("/a/%2e%2e;x/b", PathError::PathParameter),
    ("/;/admin", PathError::PathParameter),
    ("/users/bob/documents;x", PathError::PathParameter),
    ("/admin%3Bx=1/x", PathError::EncodedSemicolon),
    ("/admin%3bx/x", PathError::EncodedSemicolon),
    ("/a/..%3B/admin", PathError::EncodedSemicolon),
    // segments IIS shortens
    ("/admin./x", PathError::TrailingDotOrSpace),
    ("/admin%2e/x", PathError::TrailingDotOrSpace),
    ("/admin%2E", PathError::TrailingDotOrSpace),
    ("/admin.../x", PathError::TrailingDotOrSpace),
    ("/a/...", PathError::TrailingDotOrSpace),
    ("/admin%20/x", PathError::TrailingDotOrSpace),
    // double decoding, control characters and over-long forms after one decoding
    ("/%25", PathError::EncodedPercent),
    ("/%252e%252e/x", PathError::EncodedPercent),
    ("/%252f", PathError::EncodedPercent),
    ("/a%0A", PathError::EncodedControlCharacter),
    ("/a%0d%0aSet-Cookie:x", PathError::EncodedControlCharacter),
    ("/a%1f", PathError::EncodedControlCharacter),
    ("/a%7F", PathError::EncodedControlCharacter),
    ("/a%C0%AE%C0%AE/admin", PathError::EncodedInvalidUtf8),
    ("/%E0%80%AE", PathError::EncodedInvalidUtf8),
    ("/a%FF", PathError::EncodedInvalidUtf8),
    ("/a%C3", PathError::EncodedInvalidUtf8),
    ("/a%C3/%A9", PathError::EncodedInvalidUtf8),
    ("/%C2%85admin", PathError::UnicodeControlCharacter),
    ("/a\u{85}b", PathError::UnicodeControlCharacter),
    ("/a%c2%9f", PathError::UnicodeControlCharacter),
    ("/a%E2%80%A8b", PathError::UnicodeControlCharacter),
    ("/a\u{2029}", PathError::UnicodeControlCharacter),
    // encoded separators and NUL
    ("/admin%2Fx", PathError::EncodedSlash),
    ("/admin%2fx", PathError::EncodedSlash),
    ("/a%5cb", PathError::EncodedBackslash),
    ("/a%5Cb", PathError::EncodedBackslash),
    ("/a%00b", PathError::EncodedNul),
    // bad escapes
    ("/a%zz", PathError::InvalidPercentEncoding),
    ("/a%", PathError::InvalidPercentEncoding),
    ("/a%2", PathError::InvalidPercentEncoding),
    ("/a%g0", PathError::InvalidPercentEncoding),
    ("/a%0g", PathError::InvalidPercentEncoding),
    ("/a%%41", PathError::InvalidPercentEncoding),
    ("/a%2?x", PathError::InvalidPercentEncoding),
    // raw bytes (path and query)
    ("/a#b", PathError::Fragment),
    ("/a?b#c", PathError::Fragment),
    ("/a b", PathError::Space),
    ("/a?b c", PathError::Space),
    ("/a\\b", PathError::Backslash),
    ("/a?b\\c", PathError::Backslash),
    ("/a\tb", PathError::ControlCharacter),
    ("/a\nb", PathError::ControlCharacter),
    ("/a\rb", PathError::ControlCharacter),
    ("/a\0b", PathError::ControlCharacter),
    ("/a\x7fb", PathError::ControlCharacter),
    ("/a?x=\r\n", PathError::ControlCharacter),
];

#[test]
fn normalisation_accepted() {
    for &(input, path, query, changed) in ACCEPTED {
        let n = normalize_path(input).unwrap_or_else(|e| panic!("{input:?} rejected: {e}"));
        assert_eq!(n.path, path, "path of {input:?}");
        assert_eq!(n.query.as_deref(), query, "query of {input:?}");
        assert_eq!(n.changed, changed, "changed of {input:?}");
    }
}

#[test]
fn normalisation_is_idempotent() {
    for &(input, ..) in ACCEPTED {
        let n = normalize_path(input).unwrap_or_else(|e| panic!("{input:?} rejected: {e}"));
        let again = normalize_path(&n.to_request_path())
            .unwrap_or_else(|e| panic!("normalised {input:?} rejected: {e}"));
        assert_eq!(again.path, n.path, "{input:?}");
        assert_eq!(again.query, n.query, "{input:?}");
        assert!(!again.changed, "normalised form of {input:?} is not stable");
    }
}

#[test]
fn normalisation_rejected() {
    for &(input, err) in REJECTED {
        assert_eq!(normalize_path(input), Err(err), "{input:?}");
    }
}

#[test]
fn length_limit() {
    let ok = format!("/{}", "a".repeat(MAX_PATH_LEN - 1));
    assert_eq!(ok.len(), MAX_PATH_LEN);
    assert!(normalize_path(&ok).is_ok());
    let too_long = format!("/{}", "a".repeat(MAX_PATH_LEN));
    assert_eq!(normalize_path(&too_long), Err(PathError::TooLong));
    // The limit covers the query too.
    let long_query = format!("/?{}", "a".repeat(MAX_PATH_LEN - 1));
    assert_eq!(normalize_path(&long_query), Err(PathError::TooLong));
}

#[test]
fn to_request_path() {
    let cases = [
        ("/a/../b?x=1", "/b?x=1"),
        ("/a?", "/a?"),
        ("/a", "/a"),
        ("//x/%7e?q=%7e", "/x/~?q=%7e"),
    ];
    for (input, want) in cases {
        let n = normalize_path(input).unwrap_or_else(|e| panic!("{input:?} rejected: {e}"));
        assert_eq!(n.to_request_path(), want, "{input:?}");
    }
}

#[test]
fn reasons() {
    let cases = [
        (PathError::NotOriginForm, "path does not start with /"),
        (PathError::TooLong, "path too long"),
        (PathError::ControlCharacter, "control character"),
        (PathError::Space, "space in path"),
        (PathError::Fragment, "fragment in path"),
        (PathError::Backslash, "backslash in path"),
        (
            PathError::InvalidPercentEncoding,
            "invalid percent-encoding",
        ),
        (PathError::EncodedSlash, "encoded slash"),
        (PathError::EncodedBackslash, "encoded backslash"),
        (PathError::EncodedNul, "encoded NUL"),
        (PathError::DotSegmentEscapesRoot, "dot segment escapes root"),
        (PathError::PathParameter, "path parameter (;)"),
        (PathError::EncodedSemicolon, "encoded semicolon"),
    ];
    for (e, want) in cases {
        assert_eq!(e.reason(), want);
        assert_eq!(e.to_string(), want);
    }
}

// ----- compilation -----------------------------------------------------------------------

const AT: &str = "routes[2].match";

fn cfg_json(json: &str) -> MatchConfig {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn compile_json(json: &str) -> Result<CompiledMatch, Vec<ConfigError>> {
    CompiledMatch::compile(&cfg_json(json), AT)
}

fn errors(json: &str) -> Vec<(String, String)> {
    match compile_json(json) {
        Ok(_) => panic!("{json} compiled"),
        Err(es) => es.into_iter().map(|e| (e.path, e.message)).collect(),
    }
}

fn one_error(json: &str) -> (String, String) {
    let es = errors(json);
    assert_eq!(es.len(), 1, "{json}: {es:?}");
    es.into_iter().next().unwrap_or_else(|| panic!("no error"))
}

#[test]
fn config_rejects_unknown_fields() {
    assert!(serde_json::from_str::<MatchConfig>(r#"{"path":"/a"}"#).is_err());
    assert!(serde_json::from_str::<MatchConfig>(r#"{"path_exact":"/a"}"#).is_ok());
}

#[test]
fn compile_accepts_valid() {
    let ok = [
        r#"{"path_exact":"/"}"#,
        r#"{"path_exact":"/a/b/"}"#,
        r#"{"path_prefix":"/api"}"#,
        r#"{"path_prefix":"/"}"#,
        r#"{"path_template":"/"}"#,
        r#"{"path_template":"/users/{id}/posts/{post_id}/"}"#,
        r#"{"path_template":"/{_a1}/x%3A"}"#,
        r#"{"path_exact":"/a","methods":["GET","POST","PROPFIND"],"hosts":["api.example.com","*.example.com:8443","10.0.0.1:80","localhost"]}"#,
    ];
    for json in ok {
        if let Err(es) = compile_json(json) {
            panic!("{json}: {es:?}");
        }
    }
}

#[test]
fn compile_errors() {
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    let cases: &[(&str, (String, String))] = &[
        (
            r#"{}"#,
            s(AT, "one of path_exact, path_prefix, path_separated_prefix or path_template is required"),
        ),
        (
            r#"{"methods":["GET"]}"#,
            s(AT, "one of path_exact, path_prefix, path_separated_prefix or path_template is required"),
        ),
        (
            r#"{"path_exact":"/a","path_prefix":"/b"}"#,
            s(AT, "only one of path_exact, path_prefix, path_separated_prefix or path_template may be set, found path_exact and path_prefix"),
        ),
        (
            r#"{"path_exact":"a"}"#,
            s("routes[2].match.path_exact", "must start with \"/\""),
        ),
        (
            r#"{"path_exact":""}"#,
            s("routes[2].match.path_exact", "must start with \"/\""),
        ),
        (
            r#"{"path_prefix":"/a/../b"}"#,
            s(
                "routes[2].match.path_prefix",
                "is not in normalised form, so no request could ever match it; write it as \"/b\"",
            ),
        ),
        (
            r#"{"path_exact":"//a"}"#,
            s(
                "routes[2].match.path_exact",
                "is not in normalised form, so no request could ever match it; write it as \"/a\"",
            ),
        ),
        (
            r#"{"path_exact":"/%7euser"}"#,
            s(
                "routes[2].match.path_exact",
                "is not in normalised form, so no request could ever match it; write it as \"/~user\"",
            ),
        ),
        (
            r#"{"path_exact":"/a%3ab"}"#,
            s(
                "routes[2].match.path_exact",
                "is not in normalised form, so no request could ever match it; write it as \"/a%3Ab\"",
            ),
        ),
        (
            r#"{"path_exact":"/a?x=1"}"#,
            s(
                "routes[2].match.path_exact",
                "must not contain a query string (\"?\"): routes match the path only",
            ),
        ),
        (
            r#"{"path_prefix":"/a%2Fb"}"#,
            s("routes[2].match.path_prefix", "is not a valid request path (encoded slash)"),
        ),
        (
            r#"{"path_exact":"/.."}"#,
            s("routes[2].match.path_exact", "is not a valid request path (dot segment escapes root)"),
        ),
        (
            r#"{"path_template":"users/{id}"}"#,
            s("routes[2].match.path_template", "must start with \"/\""),
        ),
        (
            r#"{"path_template":"/users/{1d}"}"#,
            s(
                "routes[2].match.path_template",
                "invalid parameter name \"1d\": names match [A-Za-z_][A-Za-z0-9_]*",
            ),
        ),
        (
            r#"{"path_template":"/users/{}"}"#,
            s(
                "routes[2].match.path_template",
                "invalid parameter name \"\": names match [A-Za-z_][A-Za-z0-9_]*",
            ),
        ),
        (
            r#"{"path_template":"/users/{a-b}"}"#,
            s(
                "routes[2].match.path_template",
                "invalid parameter name \"a-b\": names match [A-Za-z_][A-Za-z0-9_]*",
            ),
        ),
        (
            r#"{"path_template":"/users/{id}/x/{id}"}"#,
            s("routes[2].match.path_template", "duplicate parameter name \"id\""),
        ),
        (
            r#"{"path_template":"/users/id{id}"}"#,
            s(
                "routes[2].match.path_template",
                "segment \"id{id}\": braces are only allowed around a whole segment, as in \"/users/{id}\"",
            ),
        ),
        (
            r#"{"path_template":"/users/{id}x"}"#,
            s(
                "routes[2].match.path_template",
                "segment \"{id}x\": braces are only allowed around a whole segment, as in \"/users/{id}\"",
            ),
        ),
        (
            r#"{"path_template":"/users/{a}{b}"}"#,
            s(
                "routes[2].match.path_template",
                "segment \"{a}{b}\": braces are only allowed around a whole segment, as in \"/users/{id}\"",
            ),
        ),
        (
            r#"{"path_template":"/users/}"}"#,
            s(
                "routes[2].match.path_template",
                "segment \"}\": braces are only allowed around a whole segment, as in \"/users/{id}\"",
            ),
        ),
        (
            r#"{"path_template":"/users//{id}"}"#,
            s("routes[2].match.path_template", "empty segment (\"//\") is not allowed"),
        ),
        (
            r#"{"path_template":"//"}"#,
            s("routes[2].match.path_template", "empty segment (\"//\") is not allowed"),
        ),
        (
            r#"{"path_template":"/a/./{id}"}"#,
            s(
                "routes[2].match.path_template",
                "is not in normalised form (dot segments, escapes of unreserved characters, lower-case hex or characters that must be percent-encoded), so no request could ever match it",
            ),
        ),
        (
            r#"{"path_template":"/%7e/{id}"}"#,
            s(
                "routes[2].match.path_template",
                "is not in normalised form (dot segments, escapes of unreserved characters, lower-case hex or characters that must be percent-encoded), so no request could ever match it",
            ),
        ),
        (
            r#"{"path_template":"/{id}/.."}"#,
            s(
                "routes[2].match.path_template",
                "is not in normalised form (dot segments, escapes of unreserved characters, lower-case hex or characters that must be percent-encoded), so no request could ever match it",
            ),
        ),
        (
            r#"{"path_template":"/a/{id}?x"}"#,
            s(
                "routes[2].match.path_template",
                "segment \"{id}?x\": braces are only allowed around a whole segment, as in \"/users/{id}\"",
            ),
        ),
        (
            r#"{"path_template":"/a/{id}/b?x"}"#,
            s(
                "routes[2].match.path_template",
                "must not contain a query string (\"?\"): routes match the path only",
            ),
        ),
        (
            r#"{"path_template":"/a%2f/{id}"}"#,
            s("routes[2].match.path_template", "is not a valid request path (encoded slash)"),
        ),
        (
            r#"{"path_exact":"/","methods":[]}"#,
            s("routes[2].match.methods", "must not be empty; omit the field to match every method"),
        ),
        (
            r#"{"path_exact":"/","methods":["GET","get"]}"#,
            s("routes[2].match.methods[1]", "methods are case-sensitive and upper case: write \"GET\""),
        ),
        (
            r#"{"path_exact":"/","methods":["Post"]}"#,
            s("routes[2].match.methods[0]", "methods are case-sensitive and upper case: write \"POST\""),
        ),
        (
            r#"{"path_exact":"/","methods":["GET","POST","GET"]}"#,
            s("routes[2].match.methods[2]", "duplicate method \"GET\""),
        ),
        (
            r#"{"path_exact":"/","methods":["GET "]}"#,
            s(
                "routes[2].match.methods[0]",
                "\"GET \" is not an HTTP method: methods are upper-case letters, e.g. \"GET\"",
            ),
        ),
        (
            r#"{"path_exact":"/","methods":["M-SEARCH"]}"#,
            s(
                "routes[2].match.methods[0]",
                "\"M-SEARCH\" is not an HTTP method: methods are upper-case letters, e.g. \"GET\"",
            ),
        ),
        (
            r#"{"path_exact":"/","methods":[""]}"#,
            s("routes[2].match.methods[0]", "must not be empty"),
        ),
        (
            r#"{"path_exact":"/","hosts":[]}"#,
            s("routes[2].match.hosts", "must not be empty; omit the field to match every host"),
        ),
        (
            r#"{"path_exact":"/","hosts":["a.com","API.example.com"]}"#,
            s("routes[2].match.hosts[1]", "hosts are lower case: write \"api.example.com\""),
        ),
        (
            r#"{"path_exact":"/","hosts":["a_b.com"]}"#,
            s(
                "routes[2].match.hosts[0]",
                "host names contain only lower-case letters, digits, \"-\" and \".\"; a wildcard is only allowed as a leading \"*.\"",
            ),
        ),
        (
            r#"{"path_exact":"/","hosts":["a.*.com"]}"#,
            s(
                "routes[2].match.hosts[0]",
                "host names contain only lower-case letters, digits, \"-\" and \".\"; a wildcard is only allowed as a leading \"*.\"",
            ),
        ),
        (
            r#"{"path_exact":"/","hosts":["*"]}"#,
            s(
                "routes[2].match.hosts[0]",
                "host names contain only lower-case letters, digits, \"-\" and \".\"; a wildcard is only allowed as a leading \"*.\"",
            ),
        ),
        (
            r#"{"path_exact":"/","hosts":["*example.com"]}"#,
            s(
                "routes[2].match.hosts[0]",
                "host names contain only lower-case letters, digits, \"-\" and \".\"; a wildcard is only allowed as a leading \"*.\"",
            ),
        ),
        (
            r#"{"path_exact":"/","hosts":["example.com."]}"#,
            s(
                "routes[2].match.hosts[0]",
                "empty label in host name (leading, trailing or double \".\")",
            ),
        ),
        (
            r#"{"path_exact":"/","hosts":["*."]}"#,
            s("routes[2].match.hosts[0]", "host name is empty"),
        ),
        (
            r#"{"path_exact":"/","hosts":[""]}"#,
            s("routes[2].match.hosts[0]", "host name is empty"),
        ),
        (
            r#"{"path_exact":"/","hosts":["-a.com"]}"#,
            s("routes[2].match.hosts[0]", "label \"-a\" starts or ends with \"-\""),
        ),
        (
            r#"{"path_exact":"/","hosts":["a.com:"]}"#,
            s("routes[2].match.hosts[0]", "invalid port \"\": expected a number from 1 to 65535"),
        ),
        (
            r#"{"path_exact":"/","hosts":["a.com:0"]}"#,
            s("routes[2].match.hosts[0]", "invalid port \"0\": expected a number from 1 to 65535"),
        ),
        (
            r#"{"path_exact":"/","hosts":["a.com:65536"]}"#,
            s("routes[2].match.hosts[0]", "invalid port \"65536\": expected a number from 1 to 65535"),
        ),
        (
            r#"{"path_exact":"/","hosts":["a.com:80:81"]}"#,
            s("routes[2].match.hosts[0]", "invalid port \"80:81\": expected a number from 1 to 65535"),
        ),
        (
            r#"{"path_exact":"/","hosts":["[::1]:80"]}"#,
            s("routes[2].match.hosts[0]", "invalid port \":1]:80\": expected a number from 1 to 65535"),
        ),
    ];
    for (json, want) in cases {
        assert_eq!(&one_error(json), want, "{json}");
    }
}

#[test]
fn compile_collects_every_error() {
    let got = errors(
        r#"{"path_exact":"/a/../b","path_template":"/{x}/{x}","methods":["get","GET","GET"],"hosts":["A.com","ok.com","b_c"]}"#,
    );
    let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "routes[2].match",
            "routes[2].match.path_exact",
            "routes[2].match.path_template",
            "routes[2].match.methods[0]",
            "routes[2].match.methods[2]",
            "routes[2].match.hosts[0]",
            "routes[2].match.hosts[2]",
        ]
    );
}

#[test]
fn compile_with_empty_at() {
    let e = CompiledMatch::compile(&cfg_json(r#"{"path_exact":"x"}"#), "")
        .err()
        .unwrap_or_else(|| panic!("compiled"));
    assert_eq!(
        e,
        vec![ConfigError::new("path_exact", "must start with \"/\"")]
    );
}

// ----- matching --------------------------------------------------------------------------

fn compiled(json: &str) -> CompiledMatch {
    compile_json(json).unwrap_or_else(|es| panic!("{json}: {es:?}"))
}

fn params(pairs: &[(&str, &str)]) -> PathParams {
    PathParams(
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
    )
}

/// Path-only table: (config, path, expected match).
#[test]
fn path_matching() {
    let cases: &[(&str, &str, bool)] = &[
        (r#"{"path_exact":"/a"}"#, "/a", true),
        // a trailing slash is the same resource to Express and Spring 5: never a fall-through
        (r#"{"path_exact":"/a"}"#, "/a/", true),
        (r#"{"path_exact":"/a"}"#, "/ab", false),
        (r#"{"path_exact":"/a"}"#, "/A", false),
        (r#"{"path_exact":"/a/"}"#, "/a", true),
        (r#"{"path_exact":"/a"}"#, "/a//", false),
        (r#"{"path_exact":"/"}"#, "/", true),
        (r#"{"path_exact":"/"}"#, "/a", false),
        // prefix without trailing slash: segment boundary only
        (r#"{"path_prefix":"/api"}"#, "/api", true),
        (r#"{"path_prefix":"/api"}"#, "/api/", true),
        (r#"{"path_prefix":"/api"}"#, "/api/x/y", true),
        (r#"{"path_prefix":"/api"}"#, "/apix", false),
        (r#"{"path_prefix":"/api"}"#, "/api.json", false),
        (r#"{"path_prefix":"/api"}"#, "/ap", false),
        (r#"{"path_prefix":"/api"}"#, "/", false),
        (r#"{"path_prefix":"/api"}"#, "/v1/api", false),
        // prefix with trailing slash: plain starts_with
        (r#"{"path_prefix":"/api/"}"#, "/api/", true),
        (r#"{"path_prefix":"/api/"}"#, "/api/x", true),
        (r#"{"path_prefix":"/api/"}"#, "/api", false),
        (r#"{"path_prefix":"/api/"}"#, "/apix", false),
        (r#"{"path_prefix":"/"}"#, "/", true),
        (r#"{"path_prefix":"/"}"#, "/anything/at/all", true),
        // templates
        (r#"{"path_template":"/"}"#, "/", true),
        (r#"{"path_template":"/"}"#, "/a", false),
        (r#"{"path_template":"/users/{id}"}"#, "/users/1", true),
        (r#"{"path_template":"/users/{id}"}"#, "/users/1/", true),
        (r#"{"path_template":"/users/{id}"}"#, "/users/", false),
        (r#"{"path_template":"/users/{id}"}"#, "/users", false),
        (r#"{"path_template":"/users/{id}"}"#, "/users/1/x", false),
        (r#"{"path_template":"/users/{id}"}"#, "/Users/1", false),
        (r#"{"path_template":"/users/{id}"}"#, "/", false),
        (r#"{"path_template":"/users/{id}/"}"#, "/users/1/", true),
        (r#"{"path_template":"/users/{id}/"}"#, "/users/1", true),
        (
            r#"{"path_template":"/users/{id}/documents"}"#,
            "/users/bob/documents/",
            true,
        ),
        // path_separated_prefix: Envoy's segment-boundary prefix
        (r#"{"path_separated_prefix":"/admin"}"#, "/admin", true),
        (r#"{"path_separated_prefix":"/admin"}"#, "/admin/", true),
        (r#"{"path_separated_prefix":"/admin"}"#, "/admin/x", true),
        (
            r#"{"path_separated_prefix":"/admin"}"#,
            "/administrator",
            false,
        ),
        (r#"{"path_separated_prefix":"/admin"}"#, "/admi", false),
        (r#"{"path_template":"/{a}/{b}"}"#, "/x/y", true),
        (r#"{"path_template":"/{a}/{b}"}"#, "/x", false),
        (r#"{"path_template":"/{a}/{b}"}"#, "/x/y/z", false),
        // Defence in depth (callers pass normalised paths): a parameter never binds an
        // empty segment.
        (r#"{"path_template":"/{a}/{b}"}"#, "//x", false),
        (r#"{"path_template":"/{a}/{b}"}"#, "/x//", false),
    ];
    for &(json, path, want) in cases {
        let m = compiled(json);
        assert_eq!(
            m.matches("GET", "example.com", path).is_some(),
            want,
            "{json} vs {path:?}"
        );
    }
}

#[test]
fn template_binding() {
    let m = compiled(r#"{"path_template":"/users/{user_id}/posts/{post}/"}"#);
    let got = m.matches("GET", "", "/users/42/posts/a%3Ab/");
    assert_eq!(got, Some(params(&[("user_id", "42"), ("post", "a%3Ab")])));
    let got = got.unwrap_or_default();
    assert_eq!(got.get("user_id"), Some("42"));
    assert_eq!(got.get("post"), Some("a%3Ab"));
    assert_eq!(got.get("nope"), None);

    // Non-template routes bind nothing.
    assert_eq!(
        compiled(r#"{"path_prefix":"/a"}"#).matches("GET", "", "/a/b"),
        Some(PathParams::default())
    );
    assert_eq!(
        compiled(r#"{"path_exact":"/a"}"#).matches("GET", "", "/a"),
        Some(PathParams::default())
    );
    assert_eq!(
        compiled(r#"{"path_template":"/a/b"}"#).matches("GET", "", "/a/b"),
        Some(PathParams::default())
    );
}

#[test]
fn template_parameter_names() {
    assert_eq!(
        compiled(r#"{"path_template":"/users/{user_id}/posts/{post}/"}"#).template_param_names(),
        vec!["user_id".to_string(), "post".to_string()]
    );
    assert!(compiled(r#"{"path_template":"/a/b"}"#)
        .template_param_names()
        .is_empty());
    assert!(compiled(r#"{"path_prefix":"/a"}"#)
        .template_param_names()
        .is_empty());
}

/// `firewall.path_parameters: strip` reads paths as Tomcat and Spring do: `;...` is cut
/// out of each raw segment before dot segments are resolved, and the forwarded path has
/// none left. `%3B` is still refused: containers do not cut it, Spring refuses it.
#[test]
fn path_parameters_stripped_as_servlet_containers_do() {
    let cases = [
        ("/admin;x=1/x", "/admin/x"),
        ("/users/bob;v=2/documents", "/users/bob/documents"),
        ("/users/bob/documents;x", "/users/bob/documents"),
        ("/;x/admin", "/admin"),
        ("/public/..;x=1/admin", "/admin"),
        ("/a/.;x/b", "/a/b"),
        ("/a;b;c/d?q=;", "/a/d"),
    ];
    for (raw, want) in cases {
        let n = normalize_path_with(raw, PathParameters::Strip)
            .unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        assert_eq!(n.path, want, "{raw:?}");
        assert!(n.changed, "{raw:?}");
        assert!(!n
            .to_request_path()
            .split('?')
            .next()
            .unwrap_or("")
            .contains(';'));
    }
    for (raw, err) in [
        ("/admin%3Bx/x", PathError::EncodedSemicolon),
        ("/..;x/admin", PathError::DotSegmentEscapesRoot),
        ("/admin.;x/y", PathError::TrailingDotOrSpace),
    ] {
        assert_eq!(
            normalize_path_with(raw, PathParameters::Strip),
            Err(err),
            "{raw:?}"
        );
    }
}

#[test]
fn a_get_route_also_answers_head() {
    let get = compiled(r#"{"path_prefix":"/","methods":["GET"]}"#);
    assert!(get.matches("HEAD", "", "/x").is_some());
    let post = compiled(r#"{"path_prefix":"/","methods":["POST"]}"#);
    assert!(post.matches("HEAD", "", "/x").is_none());
}

#[test]
fn path_separated_prefix_may_not_end_in_a_slash() {
    let errors = CompiledMatch::compile(&cfg_json(r#"{"path_separated_prefix":"/admin/"}"#), AT)
        .err()
        .unwrap_or_default();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "routes[2].match.path_separated_prefix");
}

/// Matching runs on normalised paths: traversal tricks cannot reach a route's path
/// without also being matched by it.
#[test]
fn matching_after_normalisation() {
    let admin = compiled(r#"{"path_prefix":"/admin"}"#);
    let cases = [
        ("//admin", true),
        ("/public/../admin/x", true),
        ("/public/%2e%2e/admin", true),
        ("/%61dmin", true),
        ("/%41dmin", false),
        ("/adminx", false),
    ];
    for (raw, want) in cases {
        let n = normalize_path(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        assert_eq!(
            admin.matches("GET", "", &n.path).is_some(),
            want,
            "{raw:?} -> {:?}",
            n.path
        );
    }
}

#[test]
fn method_matching() {
    let m = compiled(r#"{"path_prefix":"/","methods":["GET","POST"]}"#);
    let cases = [
        ("GET", true),
        ("POST", true),
        ("PUT", false),
        ("get", false),
        ("Get", false),
        ("", false),
        ("GETX", false),
    ];
    for (method, want) in cases {
        assert_eq!(m.matches(method, "", "/x").is_some(), want, "{method:?}");
    }
    // No methods: every method.
    let any = compiled(r#"{"path_prefix":"/"}"#);
    for method in ["GET", "get", "BREW", ""] {
        assert!(any.matches(method, "", "/x").is_some(), "{method:?}");
    }
}

#[test]
fn host_matching() {
    let cases: &[(&str, &str, bool)] = &[
        // exact host, no port configured: any port
        ("api.example.com", "api.example.com", true),
        ("api.example.com", "API.Example.COM", true),
        ("api.example.com", "api.example.com:8080", true),
        ("api.example.com", "api.example.com:", true),
        ("api.example.com", "api.example.com.", true),
        ("api.example.com", "api.example.com.:443", true),
        ("api.example.com", "example.com", false),
        ("api.example.com", "xapi.example.com", false),
        ("api.example.com", "api.example.com.evil", false),
        ("api.example.com", "api.example.com:x", false),
        ("api.example.com", "api.example.com:80:80", false),
        ("api.example.com", "", false),
        // port configured: must be equal
        ("api.example.com:8443", "api.example.com:8443", true),
        ("api.example.com:8443", "API.example.com:8443", true),
        ("api.example.com:8443", "api.example.com", false),
        ("api.example.com:8443", "api.example.com:443", false),
        ("api.example.com:8443", "api.example.com:", false),
        ("api.example.com:8443", "other.com:8443", false),
        // wildcard
        ("*.example.com", "a.example.com", true),
        ("*.example.com", "A.EXAMPLE.com", true),
        ("*.example.com", "a.b.example.com", true),
        ("*.example.com", "a.example.com:9000", true),
        ("*.example.com", "example.com", false),
        ("*.example.com", ".example.com", false),
        ("*.example.com", "aexample.com", false),
        ("*.example.com", "a.example.com.evil.org", false),
        ("*.example.com:8443", "a.example.com:8443", true),
        ("*.example.com:8443", "a.example.com", false),
        // IP literals
        ("10.0.0.1", "10.0.0.1:80", true),
        ("10.0.0.1", "10.0.0.10", false),
        ("localhost", "[::1]:80", false),
    ];
    for &(cfg_host, req_host, want) in cases {
        let json = format!(r#"{{"path_prefix":"/","hosts":["{cfg_host}"]}}"#);
        let m = compiled(&json);
        assert_eq!(
            m.matches("GET", req_host, "/").is_some(),
            want,
            "{cfg_host} vs {req_host:?}"
        );
    }
    // Several hosts: any of them.
    let m = compiled(r#"{"path_prefix":"/","hosts":["a.com","*.b.com:81"]}"#);
    assert!(m.matches("GET", "a.com:1", "/").is_some());
    assert!(m.matches("GET", "x.b.com:81", "/").is_some());
    assert!(m.matches("GET", "x.b.com:80", "/").is_none());
    // No hosts: every host, even an empty one.
    let any = compiled(r#"{"path_prefix":"/"}"#);
    assert!(any.matches("GET", "", "/").is_some());
}

#[test]
fn all_conditions_must_hold() {
    let m = compiled(
        r#"{"path_template":"/v1/{id}","methods":["DELETE"],"hosts":["api.example.com"]}"#,
    );
    assert_eq!(
        m.matches("DELETE", "api.example.com", "/v1/7"),
        Some(params(&[("id", "7")]))
    );
    assert_eq!(m.matches("GET", "api.example.com", "/v1/7"), None);
    assert_eq!(m.matches("DELETE", "www.example.com", "/v1/7"), None);
    assert_eq!(m.matches("DELETE", "api.example.com", "/v2/7"), None);
}

#[test]
fn split_request_host_cases() {
    let cases = [
        ("a.com", ("a.com", None)),
        ("a.com:80", ("a.com", Some("80"))),
        ("a.com:", ("a.com", None)),
        ("a.com.", ("a.com", None)),
        ("[::1]:8080", ("[::1]", Some("8080"))),
        ("[::1]", ("[::1]", None)),
        ("a.com:x", ("a.com:x", None)),
        ("", ("", None)),
    ];
    for (input, want) in cases {
        assert_eq!(split_request_host(input), want, "{input:?}");
    }
}
