//! Request path normalisation and route matching.
//!
//! Security rests on one invariant: the path a route is matched against is exactly the path
//! that is forwarded upstream. [`normalize_path`] turns the raw `:path` pseudo-header into a
//! single canonical form (or rejects it), the filter matches routes against that form with
//! [`CompiledMatch::matches`], and forwards [`NormalizedPath::to_request_path`].
//!
//! Configured paths must already be in normalised form ([`CompiledMatch::compile`] checks it),
//! because a route written in any other form could never match a normalised request.

use std::fmt;

use serde::Deserialize;

use crate::config::error::{index, join, ConfigError};

/// Longest accepted `:path` (path and query), in bytes.
pub const MAX_PATH_LEN: usize = 8192;

// ---------------------------------------------------------------------------------------------
// Path normalisation
// ---------------------------------------------------------------------------------------------

/// A request path in canonical form, plus its untouched query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// Normalised path, without the query. Always starts with `/`, always ASCII.
    pub path: String,
    /// Raw query after the first `?`, untouched (`Some("")` for a bare trailing `?`).
    pub query: Option<String>,
    /// True when `path` differs from the raw path part of the input.
    pub changed: bool,
}

impl NormalizedPath {
    /// The request path to forward upstream: `path`, then `?query` when there was a query.
    pub fn to_request_path(&self) -> String {
        match &self.query {
            Some(q) => {
                let mut s = String::with_capacity(self.path.len() + 1 + q.len());
                s.push_str(&self.path);
                s.push('?');
                s.push_str(q);
                s
            }
            None => self.path.clone(),
        }
    }
}

/// Why a `:path` was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Empty, `*`, absolute-form URI, or anything else not starting with `/`.
    NotOriginForm,
    /// Longer than [`MAX_PATH_LEN`] bytes.
    TooLong,
    /// A raw byte below 0x20, or 0x7f.
    ControlCharacter,
    /// A raw space.
    Space,
    /// A raw `#`.
    Fragment,
    /// A raw `\`.
    Backslash,
    /// `%` not followed by two hex digits.
    InvalidPercentEncoding,
    /// `%2F` / `%2f`.
    EncodedSlash,
    /// `%5C` / `%5c`.
    EncodedBackslash,
    /// `%00`.
    EncodedNul,
    /// `%01`..`%1F` or `%7F`: a decoding upstream sees a control character.
    EncodedControlCharacter,
    /// `%25`: an upstream that decodes twice sees a second escape the filter never saw.
    EncodedPercent,
    /// Escapes that do not decode to UTF-8 (`%C0%AE` is an over-long `.` to lax decoders).
    EncodedInvalidUtf8,
    /// A C1 control character (U+0080..U+009F, e.g. NEL `%C2%85`) or a line or paragraph
    /// separator (U+2028, U+2029), raw or encoded: Spring's `StrictHttpFirewall` refuses them,
    /// and a decoding upstream sees a line break where the filter saw a letter.
    UnicodeControlCharacter,
    /// A `..` segment that would climb above the root.
    DotSegmentEscapesRoot,
    /// A raw `;` in the path: Tomcat, Jetty and Spring cut `;...` out of each segment before
    /// routing, so `/admin;x=1/x` is `/admin/x` to them (refused unless
    /// `firewall.path_parameters` is `strip`).
    PathParameter,
    /// `%3B`: a `;` that servlet containers do not cut but Spring's firewall refuses; which
    /// reading an upstream takes is anyone's guess.
    EncodedSemicolon,
    /// A segment ending in `.` or a space (`/admin./x`, `/admin%2e/x`, `/admin%20/x`): IIS and
    /// Windows drop them, so the upstream reads `/admin/x`.
    TrailingDotOrSpace,
}

impl PathError {
    /// Short internal reason, for the log.
    pub fn reason(&self) -> &'static str {
        match self {
            PathError::NotOriginForm => "path does not start with /",
            PathError::TooLong => "path too long",
            PathError::ControlCharacter => "control character",
            PathError::Space => "space in path",
            PathError::Fragment => "fragment in path",
            PathError::Backslash => "backslash in path",
            PathError::InvalidPercentEncoding => "invalid percent-encoding",
            PathError::EncodedSlash => "encoded slash",
            PathError::EncodedBackslash => "encoded backslash",
            PathError::EncodedNul => "encoded NUL",
            PathError::EncodedControlCharacter => "encoded control character",
            PathError::EncodedPercent => "encoded percent sign",
            PathError::EncodedInvalidUtf8 => "escapes that are not UTF-8",
            PathError::UnicodeControlCharacter => "unicode control or line separator",
            PathError::DotSegmentEscapesRoot => "dot segment escapes root",
            PathError::PathParameter => "path parameter (;)",
            PathError::EncodedSemicolon => "encoded semicolon",
            PathError::TrailingDotOrSpace => "segment ending in a dot or space",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for PathError {}

/// What to do with `;` path parameters (`/users/bob;v=1/documents`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathParameters {
    /// Refuse the request (400), as Spring Security's `StrictHttpFirewall` does.
    #[default]
    Reject,
    /// Cut `;...` out of every segment, as Tomcat, Jetty and Spring do before routing, and
    /// forward the path without them (the upstream gets exactly the path that was matched).
    Strip,
}

/// Normalises the HTTP `:path` pseudo-header, refusing path parameters (the default rules).
pub fn normalize_path(raw: &str) -> Result<NormalizedPath, PathError> {
    normalize_path_with(raw, PathParameters::Reject)
}

/// Normalises the HTTP `:path` pseudo-header.
///
/// Rejects what cannot be normalised safely, and everything a common upstream reads otherwise
/// than this function would (see [`PathError`]); otherwise decodes percent-escapes of
/// unreserved characters once, upper-cases the hex of the escapes it keeps, percent-encodes raw
/// bytes that are not allowed in a path, cuts path parameters when `parameters` says so, merges
/// repeated slashes and removes dot segments. The query is returned untouched.
pub fn normalize_path_with(
    raw: &str,
    parameters: PathParameters,
) -> Result<NormalizedPath, PathError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    for b in raw.bytes() {
        match b {
            b'#' => return Err(PathError::Fragment),
            b'\\' => return Err(PathError::Backslash),
            b' ' => return Err(PathError::Space),
            0x00..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            _ => {}
        }
    }
    let (raw_path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    if parameters == PathParameters::Reject && raw_path.contains(';') {
        return Err(PathError::PathParameter);
    }
    let decoded = decode_path(raw_path)?;
    let path = remove_dot_segments(&decoded, parameters)?;
    let changed = path != raw_path;
    Ok(NormalizedPath {
        path,
        query: query.map(str::to_owned),
        changed,
    })
}

/// The byte the escape `%XX` at `bytes[i]` stands for (hex digits of either case), or `None`
/// when two hex digits do not follow the `%`.
fn escaped_byte(bytes: &[u8], i: usize) -> Option<u8> {
    let mut byte = [0u8; 1];
    base16ct::mixed::decode(bytes.get(i + 1..i + 3)?, &mut byte).ok()?;
    Some(byte[0])
}

/// RFC 3986 unreserved: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes kept raw in a normalised path: pchar (minus `%`, handled separately) and `/`.
fn is_raw_path_byte(b: u8) -> bool {
    // sub-delims, then ":" / "@" (the rest of pchar), then the separator.
    is_unreserved(b) || b"!$&'()*+,;=:@/".contains(&b)
}

/// The canonical escape of `b`: `%` and two upper-case hex digits.
fn push_pct(out: &mut String, b: u8) {
    let mut hex = [0u8; 2];
    out.push('%');
    // Two digits always fit the buffer: `encode_str` cannot fail here.
    out.push_str(base16ct::upper::encode_str(&[b], &mut hex).unwrap_or_default());
}

/// One pass of percent-decoding over the path part. The output is pure ASCII.
///
/// Hand-written on purpose, not `percent-encoding`'s decoder: that one keeps a malformed `%` as
/// it is and decodes every escape, where normalisation must decide escape by escape (refuse an
/// encoded `/`, `\`, `%`, `;`, NUL or control, decode only the unreserved characters, keep the
/// others escaped in upper case, check UTF-8 across runs of escaped and raw bytes). Decoding
/// first and re-checking after would lose which bytes were escaped, which is exactly what the
/// parser differentials this guards against turn on.
fn decode_path(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    // The non-ASCII bytes of a run, escaped or raw: an upstream decodes them to text, so they
    // must be UTF-8 (over-long forms of `.` and `/` are how lax decoders were fooled) and no
    // control or line-separator character.
    let mut escaped_run: Vec<u8> = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let Some(v) = escaped_byte(bytes, i) else {
                return Err(PathError::InvalidPercentEncoding);
            };
            match v {
                b'/' => return Err(PathError::EncodedSlash),
                b'\\' => return Err(PathError::EncodedBackslash),
                0 => return Err(PathError::EncodedNul),
                0x01..=0x1f | 0x7f => return Err(PathError::EncodedControlCharacter),
                b'%' => return Err(PathError::EncodedPercent),
                b';' => return Err(PathError::EncodedSemicolon),
                _ if is_unreserved(v) => out.push(char::from(v)),
                _ => push_pct(&mut out, v),
            }
            if v >= 0x80 {
                escaped_run.push(v);
            } else {
                check_utf8_run(&mut escaped_run)?;
            }
            i += 3;
        } else {
            if b >= 0x80 {
                escaped_run.push(b);
            } else {
                check_utf8_run(&mut escaped_run)?;
            }
            if is_raw_path_byte(b) {
                out.push(char::from(b));
            } else {
                // Not allowed raw in a URI path (`"<>[]^`{|}` and non-ASCII): canonical form
                // is the escape, which is what a decoding upstream sees anyway.
                push_pct(&mut out, b);
            }
            i += 1;
        }
    }
    check_utf8_run(&mut escaped_run)?;
    Ok(out)
}

/// A run of escaped non-ASCII bytes must be UTF-8; empties the run.
fn check_utf8_run(run: &mut Vec<u8>) -> Result<(), PathError> {
    if run.is_empty() {
        return Ok(());
    }
    let verdict = match std::str::from_utf8(run) {
        Err(_) => Err(PathError::EncodedInvalidUtf8),
        Ok(text)
            if text
                .chars()
                .any(|c| matches!(c, '\u{80}'..='\u{9f}' | '\u{2028}' | '\u{2029}')) =>
        {
            Err(PathError::UnicodeControlCharacter)
        }
        Ok(_) => Ok(()),
    };
    run.clear();
    verdict
}

/// A segment that Windows path rules (IIS) would shorten: a trailing `.` or space, other than
/// the dot segments themselves.
fn ends_in_dot_or_space(seg: &str) -> bool {
    (seg.ends_with('.') && seg != "." && seg != "..") || seg.ends_with("%20")
}

/// Merges repeated slashes and removes dot segments; `..` above the root is an error. With
/// [`PathParameters::Strip`], `;...` is cut from every segment first, as servlet containers do
/// (so `..;x` is `..` and `;x` alone is an empty segment). `p` starts with `/`.
fn remove_dot_segments(p: &str, parameters: PathParameters) -> Result<String, PathError> {
    let rest = p.strip_prefix('/').unwrap_or(p);
    let count = rest.split('/').count();
    let mut out: Vec<&str> = Vec::with_capacity(count);
    let mut trailing_slash = false;
    for (i, seg) in rest.split('/').enumerate() {
        let seg = match parameters {
            PathParameters::Strip => seg.split(';').next().unwrap_or(""),
            PathParameters::Reject => seg,
        };
        let last = i + 1 == count;
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::DotSegmentEscapesRoot);
                }
            }
            s if ends_in_dot_or_space(s) => return Err(PathError::TrailingDotOrSpace),
            s => out.push(s),
        }
        if last {
            trailing_slash = matches!(seg, "" | "." | "..");
        }
    }
    let mut result = String::with_capacity(p.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        result.push('/');
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// Route matching
// ---------------------------------------------------------------------------------------------

/// The `match` object of a route, as written in the plugin config.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default)]
    pub path_exact: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path_template: Option<String>,
    /// Envoy's `path_separated_prefix`: `/admin` covers `/admin`, `/admin/` and `/admin/x`,
    /// never `/administrator`. It may not end in `/`.
    #[serde(default)]
    pub path_separated_prefix: Option<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
}

/// Small vector of (name, value) pairs bound by a template; values are the raw (normalised)
/// segments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathParams(pub Vec<(String, String)>);

impl PathParams {
    /// Value bound to `name`, if the template has such a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathMatch {
    /// Matches the path with or without one trailing slash, as Express (`strict: false`) and
    /// Spring 5 route `/login/` to the `/login` handler: a trailing slash never falls through
    /// to a weaker route.
    Exact(String),
    /// Prefix ending in `/`: plain `starts_with`.
    PrefixSlash(String),
    /// Prefix not ending in `/` (`path_prefix`, or `path_separated_prefix`): matches only at a
    /// segment boundary.
    PrefixSegment(String),
    /// Template with no segments is `/`. Like [`PathMatch::Exact`], matches with or without one
    /// trailing slash.
    Template { segments: Vec<Segment> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostName {
    /// Lower-case host name.
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    WildcardSuffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    name: HostName,
    port: Option<u16>,
}

/// A validated route match, ready to be evaluated per request.
#[derive(Debug, Clone)]
pub struct CompiledMatch {
    path: PathMatch,
    methods: Option<Vec<String>>,
    hosts: Option<Vec<HostPattern>>,
}

const PATH_FIELDS: &str = "path_exact, path_prefix, path_separated_prefix or path_template";

impl CompiledMatch {
    /// `at` is the JSON path of this match object, e.g. "routes[2].match"; every error names the
    /// full path of the offending value, e.g. "routes[2].match.path_template".
    pub fn compile(cfg: &MatchConfig, at: &str) -> Result<CompiledMatch, Vec<ConfigError>> {
        let mut errors = Vec::new();

        let set: Vec<&str> = [
            ("path_exact", cfg.path_exact.is_some()),
            ("path_prefix", cfg.path_prefix.is_some()),
            ("path_template", cfg.path_template.is_some()),
            ("path_separated_prefix", cfg.path_separated_prefix.is_some()),
        ]
        .iter()
        .filter(|(_, present)| *present)
        .map(|(name, _)| *name)
        .collect();
        if set.is_empty() {
            errors.push(ConfigError::new(
                at,
                format!("one of {PATH_FIELDS} is required"),
            ));
        } else if set.len() > 1 {
            errors.push(ConfigError::new(
                at,
                format!(
                    "only one of {PATH_FIELDS} may be set, found {}",
                    set.join(" and ")
                ),
            ));
        }

        let mut path = None;
        if let Some(p) = &cfg.path_exact {
            match check_plain_path(p) {
                Ok(()) => path = Some(PathMatch::Exact(p.clone())),
                Err(m) => errors.push(ConfigError::new(join(at, "path_exact"), m)),
            }
        }
        if let Some(p) = &cfg.path_prefix {
            match check_plain_path(p) {
                Ok(()) if p.ends_with('/') => path = Some(PathMatch::PrefixSlash(p.clone())),
                Ok(()) => path = Some(PathMatch::PrefixSegment(p.clone())),
                Err(m) => errors.push(ConfigError::new(join(at, "path_prefix"), m)),
            }
        }
        if let Some(p) = &cfg.path_separated_prefix {
            let field = join(at, "path_separated_prefix");
            match check_plain_path(p) {
                Ok(()) if p.ends_with('/') => errors.push(ConfigError::new(
                    field,
                    "must not end in \"/\" (as in Envoy): \"/admin\" already covers \"/admin/\" and \"/admin/x\"; for the whole API use path_prefix \"/\"",
                )),
                Ok(()) => path = Some(PathMatch::PrefixSegment(p.clone())),
                Err(m) => errors.push(ConfigError::new(field, m)),
            }
        }
        if let Some(t) = &cfg.path_template {
            let field = join(at, "path_template");
            match compile_template(t) {
                Ok(m) => path = Some(m),
                Err(ms) => {
                    errors.extend(ms.into_iter().map(|m| ConfigError::new(field.clone(), m)))
                }
            }
        }

        let methods = cfg.methods.as_ref().map(|ms| {
            let mut methods = compile_methods(
                ms,
                &join(at, "methods"),
                "omit the field to match every method",
                &mut errors,
            );
            // Frameworks answer HEAD with the GET handler: a GET route that missed HEAD would
            // let HEAD fall through to a weaker route while the upstream runs the GET handler.
            if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
                methods.push("HEAD".to_string());
            }
            methods
        });
        let hosts = cfg
            .hosts
            .as_ref()
            .map(|hs| compile_hosts(hs, &join(at, "hosts"), &mut errors));

        if !errors.is_empty() {
            return Err(errors);
        }
        match path {
            Some(path) => Ok(CompiledMatch {
                path,
                methods,
                hosts,
            }),
            // Unreachable: no path set already produced an error above.
            None => Err(vec![ConfigError::new(
                at,
                format!("one of {PATH_FIELDS} is required"),
            )]),
        }
    }

    /// Names of the `{name}` parameters of a `path_template`, in order; empty for other paths.
    /// (An `owner` rule may only name one of them.)
    pub fn template_param_names(&self) -> Vec<String> {
        match &self.path {
            PathMatch::Template { segments } => segments
                .iter()
                .filter_map(|s| match s {
                    Segment::Param(name) => Some(name.clone()),
                    Segment::Literal(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// `path` is already normalised (output of normalize_path().path); `host` is the :authority
    /// header value (may carry a port, may be empty); `method` as received.
    pub fn matches(&self, method: &str, host: &str, path: &str) -> Option<PathParams> {
        if let Some(methods) = &self.methods {
            if !methods.iter().any(|m| m == method) {
                return None;
            }
        }
        if let Some(hosts) = &self.hosts {
            let (name, port) = split_request_host(host);
            if !hosts.iter().any(|h| host_matches(h, name, port)) {
                return None;
            }
        }
        match &self.path {
            PathMatch::Exact(p) => (without_trailing_slash(path) == without_trailing_slash(p))
                .then(PathParams::default),
            PathMatch::PrefixSlash(p) => path.starts_with(p.as_str()).then(PathParams::default),
            PathMatch::PrefixSegment(p) => match path.strip_prefix(p.as_str()) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                    Some(PathParams::default())
                }
                _ => None,
            },
            PathMatch::Template { segments } => match_template(segments, path),
        }
    }

    /// Whether a literal of this match (its path or a template's literal segments) has an
    /// upper-case ASCII letter.
    pub fn has_upper_case(&self) -> bool {
        let upper = |s: &str| s.bytes().any(|b| b.is_ascii_uppercase());
        match &self.path {
            PathMatch::Exact(p) | PathMatch::PrefixSlash(p) | PathMatch::PrefixSegment(p) => {
                upper(p)
            }
            PathMatch::Template { segments } => segments.iter().any(|s| match s {
                Segment::Literal(l) => upper(l),
                Segment::Param(_) => false,
            }),
        }
    }

    /// The same match with its literals in ASCII lower case: how an upstream that routes
    /// case-insensitively (Express by default, IIS, ASP.NET) reads it, given a lower-cased path.
    pub fn to_lower_case(&self) -> CompiledMatch {
        let lower = |s: &String| s.to_ascii_lowercase();
        let path = match &self.path {
            PathMatch::Exact(p) => PathMatch::Exact(lower(p)),
            PathMatch::PrefixSlash(p) => PathMatch::PrefixSlash(lower(p)),
            PathMatch::PrefixSegment(p) => PathMatch::PrefixSegment(lower(p)),
            PathMatch::Template { segments } => PathMatch::Template {
                segments: segments
                    .iter()
                    .map(|s| match s {
                        Segment::Literal(l) => Segment::Literal(lower(l)),
                        Segment::Param(name) => Segment::Param(name.clone()),
                    })
                    .collect(),
            },
        };
        CompiledMatch {
            path,
            methods: self.methods.clone(),
            hosts: self.hosts.clone(),
        }
    }
}

/// `path` without one trailing `/` (the root stays `/`).
fn without_trailing_slash(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some(rest) if !rest.is_empty() => rest,
        _ => path,
    }
}

/// Checks a configured exact path or prefix: starts with `/`, normalised, no query.
fn check_plain_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err("must start with \"/\"".to_string());
    }
    match normalize_path(p) {
        Err(e) => Err(format!("is not a valid request path ({})", e.reason())),
        Ok(n) if n.query.is_some() => {
            Err("must not contain a query string (\"?\"): routes match the path only".to_string())
        }
        Ok(n) if n.changed => Err(format!(
            "is not in normalised form, so no request could ever match it; write it as \"{}\"",
            n.path
        )),
        Ok(_) => Ok(()),
    }
}

fn is_valid_param_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn compile_template(t: &str) -> Result<PathMatch, Vec<String>> {
    let Some(rest) = t.strip_prefix('/') else {
        return Err(vec!["must start with \"/\"".to_string()]);
    };
    let mut errors = Vec::new();
    let mut segments = Vec::new();
    let mut trailing_slash = false;
    if !rest.is_empty() {
        let count = rest.split('/').count();
        for (i, seg) in rest.split('/').enumerate() {
            let last = i + 1 == count;
            if seg.is_empty() {
                if last {
                    trailing_slash = true;
                } else {
                    errors.push("empty segment (\"//\") is not allowed".to_string());
                }
            } else if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.contains(['{', '}']) {
                    errors.push(format!(
                        "segment \"{seg}\": braces are only allowed around a whole segment, as in \"/users/{{id}}\""
                    ));
                } else if !is_valid_param_name(name) {
                    errors.push(format!(
                        "invalid parameter name \"{name}\": names match [A-Za-z_][A-Za-z0-9_]*"
                    ));
                } else if segments
                    .iter()
                    .any(|s| matches!(s, Segment::Param(n) if n == name))
                {
                    errors.push(format!("duplicate parameter name \"{name}\""));
                } else {
                    segments.push(Segment::Param(name.to_string()));
                }
            } else if seg.contains(['{', '}']) {
                errors.push(format!(
                    "segment \"{seg}\": braces are only allowed around a whole segment, as in \"/users/{{id}}\""
                ));
            } else {
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    // Literal segments must be in normalised form: normalise the template with every parameter
    // replaced by a plain placeholder.
    let mut probe = String::with_capacity(t.len());
    for s in &segments {
        probe.push('/');
        match s {
            Segment::Literal(l) => probe.push_str(l),
            Segment::Param(_) => probe.push('x'),
        }
    }
    if segments.is_empty() || trailing_slash {
        probe.push('/');
    }
    match normalize_path(&probe) {
        Err(e) => return Err(vec![format!("is not a valid request path ({})", e.reason())]),
        Ok(n) if n.query.is_some() => {
            return Err(vec![
                "must not contain a query string (\"?\"): routes match the path only".to_string()
            ])
        }
        Ok(n) if n.changed => {
            return Err(vec![
                "is not in normalised form (dot segments, escapes of unreserved characters, lower-case hex or characters that must be percent-encoded), so no request could ever match it"
                    .to_string(),
            ])
        }
        Ok(_) => {}
    }
    Ok(PathMatch::Template { segments })
}

fn match_template(segments: &[Segment], path: &str) -> Option<PathParams> {
    let rest = path.strip_prefix('/')?;
    let body = rest.strip_suffix('/').unwrap_or(rest);
    if segments.is_empty() {
        return body.is_empty().then(PathParams::default);
    }
    // First pass, allocation-free: does it match?
    let mut parts = body.split('/');
    for s in segments {
        let part = parts.next()?;
        let ok = match s {
            Segment::Literal(l) => part == l,
            Segment::Param(_) => !part.is_empty(),
        };
        if !ok {
            return None;
        }
    }
    if parts.next().is_some() {
        return None;
    }
    // Second pass: bind parameters.
    let params = segments
        .iter()
        .zip(body.split('/'))
        .filter_map(|(s, part)| match s {
            Segment::Param(name) => Some((name.clone(), part.to_string())),
            Segment::Literal(_) => None,
        })
        .collect();
    Some(PathParams(params))
}

/// Validates a list of HTTP methods (routes' `match.methods`, CORS `allow_methods`): upper-case
/// tokens, no duplicates. `empty_hint` tells what leaving the field out means.
pub(crate) fn compile_methods(
    methods: &[String],
    field: &str,
    empty_hint: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<String> {
    if methods.is_empty() {
        errors.push(ConfigError::new(
            field,
            format!("must not be empty; {empty_hint}"),
        ));
    }
    for (i, m) in methods.iter().enumerate() {
        let at = index(field, i);
        if m.is_empty() {
            errors.push(ConfigError::new(at, "must not be empty"));
        } else if m.bytes().all(|b| b.is_ascii_uppercase()) {
            if methods[..i].contains(m) {
                errors.push(ConfigError::new(at, format!("duplicate method \"{m}\"")));
            }
        } else if m.bytes().all(|b| b.is_ascii_alphabetic()) {
            errors.push(ConfigError::new(
                at,
                format!(
                    "methods are case-sensitive and upper case: write \"{}\"",
                    m.to_ascii_uppercase()
                ),
            ));
        } else {
            errors.push(ConfigError::new(
                at,
                format!(
                    "\"{m}\" is not an HTTP method: methods are upper-case letters, e.g. \"GET\""
                ),
            ));
        }
    }
    methods.to_vec()
}

/// Validates a lower-case DNS host name (labels of `[a-z0-9-]`, not starting or ending with `-`).
fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("host name is empty".to_string());
    }
    if name.len() > 253 {
        return Err("host name is longer than 253 characters".to_string());
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "hosts are lower case: write \"{}\"",
            name.to_ascii_lowercase()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label in host name (leading, trailing or double \".\")".to_string());
        }
        if label.len() > 63 {
            return Err(format!("label \"{label}\" is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(
                "host names contain only lower-case letters, digits, \"-\" and \".\"; a wildcard is only allowed as a leading \"*.\""
                    .to_string(),
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label \"{label}\" starts or ends with \"-\""));
        }
    }
    Ok(())
}

fn compile_host(h: &str) -> Result<HostPattern, String> {
    let (name, port) = match h.split_once(':') {
        Some((name, port)) => {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "invalid port \"{port}\": expected a number from 1 to 65535"
                ));
            }
            match port.parse::<u16>() {
                Ok(p) if p != 0 => (name, Some(p)),
                _ => {
                    return Err(format!(
                        "invalid port \"{port}\": expected a number from 1 to 65535"
                    ))
                }
            }
        }
        None => (h, None),
    };
    let pattern = match name.strip_prefix("*.") {
        Some(base) => {
            check_host_name(base)?;
            HostName::WildcardSuffix(format!(".{base}"))
        }
        None => {
            check_host_name(name)?;
            HostName::Exact(name.to_string())
        }
    };
    Ok(HostPattern {
        name: pattern,
        port,
    })
}

fn compile_hosts(hosts: &[String], field: &str, errors: &mut Vec<ConfigError>) -> Vec<HostPattern> {
    if hosts.is_empty() {
        errors.push(ConfigError::new(
            field,
            "must not be empty; omit the field to match every host",
        ));
    }
    let mut out = Vec::with_capacity(hosts.len());
    for (i, h) in hosts.iter().enumerate() {
        match compile_host(h) {
            Ok(p) => out.push(p),
            Err(m) => errors.push(ConfigError::new(index(field, i), m)),
        }
    }
    out
}

/// Splits an `:authority` value into (name, port). The name loses one trailing `.` (an FQDN
/// `example.com.` is the same host as `example.com`). An empty port counts as no port. When the
/// text after the last `:` is not all digits, the whole value is the name (and matches nothing).
fn split_request_host(host: &str) -> (&str, Option<&str>) {
    let (name, port) = if host.starts_with('[') {
        // IPv6 literal: never matches a configured host name, but split it correctly anyway.
        match host.find(']') {
            Some(end) => {
                let (name, after) = host.split_at(end + 1);
                (name, after.strip_prefix(':'))
            }
            None => (host, None),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (name, Some(port)),
            _ => (host, None),
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let port = port.filter(|p| !p.is_empty());
    (name, port)
}

fn host_matches(pattern: &HostPattern, name: &str, port: Option<&str>) -> bool {
    if let Some(want) = pattern.port {
        match port.map(str::parse::<u16>) {
            Some(Ok(p)) if p == want => {}
            _ => return false,
        }
    }
    match &pattern.name {
        HostName::Exact(h) => name.eq_ignore_ascii_case(h),
        HostName::WildcardSuffix(suffix) => {
            let (n, s) = (name.as_bytes(), suffix.as_bytes());
            n.len() > s.len()
                && n.get(n.len() - s.len()..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
// The crate denies these lints everywhere; tests fail by panicking, with a message naming the case.
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
mod tests;
