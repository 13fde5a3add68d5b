//! `api-guard check`: finds api-guard's plugin configuration in a file and validates it with
//! `api_guard_core::config::load`, the very function the filter runs in `on_configure`.
//!
//! Accepted inputs:
//! - a plugin configuration (JSON), passed to `load` byte for byte;
//! - an Envoy configuration (YAML or JSON, several YAML documents allowed): every wasm
//!   `PluginConfig` (the object holding `vm_config`) that names api-guard in its `name`,
//!   `root_id`, `vm_id` or module file/URL; its `configuration` must be a
//!   `google.protobuf.StringValue`, whose `value` is what Envoy hands the filter;
//! - an Istio `WasmPlugin` whose name, `pluginName` or module URL names api-guard: its
//!   `pluginConfig`, which Istio hands the filter as JSON; and the resource itself, which must
//!   fail closed (`failStrategy` not `FAIL_OPEN`), run before Istio's authorization (`phase`
//!   `AUTHN` or `AUTHZ`), be an HTTP plugin and carry a well-formed `sha256` if any.
//!
//! Errors are what the filter itself refuses (it would answer every request 503). Warnings are
//! configurations the filter accepts but that do not protect what they seem to, or that Envoy
//! around the filter undermines (see the Warnings section below); they never fail the check.

use api_guard_core::pipeline::policy::{Auth, Policy, Route, DEFAULT_BUFFERED_BODY_BYTES};
use serde::Deserialize;
use serde_json::{Map, Value};

const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// What `check` found: how many api-guard configurations, every error and every warning (one
/// line each).
pub struct Report {
    pub configurations: usize,
    /// Errors: the filter refuses the configuration.
    pub findings: Vec<String>,
    /// Warnings: the filter accepts it, but something leaves a gap (the Warnings section).
    pub warnings: Vec<String>,
}

/// An api-guard configuration found inside a larger file.
struct Embedded<'v> {
    /// Where it sits, as a path into the file (`static_resources.listeners[0]...config`).
    location: String,
    /// The bytes the filter would receive, or why there are none.
    content: Result<Vec<u8>, String>,
    /// Where the wasm filter sits in an Envoy configuration (none for an Istio `WasmPlugin`).
    site: Option<EnvoySite<'v>>,
    /// What is wrong around the configuration (an Istio `WasmPlugin` that would fail open).
    errors: Vec<String>,
    /// It is an Istio `WasmPlugin`: Istio writes the wasm filter, without
    /// `allow_on_headers_stop_iteration`.
    istio: bool,
}

/// A value of the file and its path.
#[derive(Clone)]
struct Located<'v> {
    value: &'v Value,
    path: String,
}

/// What encloses a value of an Envoy configuration.
#[derive(Clone)]
struct Ancestors<'v> {
    /// The whole document (for `static_resources.clusters`).
    root: &'v Value,
    /// The nearest object with `filter_chains`: a listener.
    listener: Option<Located<'v>>,
    /// The nearest object with `http_filters`: an HTTP connection manager.
    connection_manager: Option<Located<'v>>,
}

/// The api-guard wasm `PluginConfig` and what encloses it.
struct EnvoySite<'v> {
    plugin: Located<'v>,
    ancestors: Ancestors<'v>,
}

#[derive(Default)]
struct Search<'v> {
    found: Vec<Embedded<'v>>,
    /// Wasm plugins that are not api-guard (named in the "nothing found" message).
    other_plugins: Vec<String>,
}

pub fn check(bytes: &[u8]) -> Report {
    let first = bytes.iter().copied().find(|b| !b.is_ascii_whitespace());
    if matches!(first, None | Some(b'{' | b'[')) {
        // JSON: an Envoy configuration in JSON holds plugins; anything else is taken as the
        // plugin configuration itself, so `load` reports its syntax errors with their place.
        if let Ok(document) = serde_json::from_slice::<Value>(bytes) {
            let mut search = Search::default();
            search.walk(&document, "", &Ancestors::of(&document));
            if !search.found.is_empty() {
                return check_embedded(search.found);
            }
        }
        let (findings, warnings) = match load(bytes) {
            Err(errors) => (errors, Vec::new()),
            Ok((policy, plugin)) => (Vec::new(), plugin_warnings(&policy, &plugin)),
        };
        return Report {
            configurations: 1,
            findings,
            warnings,
        };
    }

    let Ok(text) = std::str::from_utf8(bytes) else {
        return finding("the file is neither JSON nor UTF-8 YAML");
    };
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        match Value::deserialize(document) {
            Ok(value) => documents.push(value),
            Err(e) => return finding(&format!("the file is not valid YAML: {e}")),
        }
    }
    let mut search = Search::default();
    let several = documents.len() > 1;
    for (i, document) in documents.iter().enumerate() {
        let root = if several {
            format!("document {}", i + 1)
        } else {
            String::new()
        };
        search.walk(document, &root, &Ancestors::of(document));
    }
    if search.found.is_empty() {
        let others = if search.other_plugins.is_empty() {
            String::new()
        } else {
            format!(
                " (other wasm plugins found: {})",
                search.other_plugins.join(", ")
            )
        };
        return finding(&format!(
            "no api-guard configuration found: expected an envoy.filters.http.wasm filter (or an \
             Istio WasmPlugin) whose name, root_id, vm_id or module names api-guard{others}"
        ));
    }
    check_embedded(search.found)
}

fn finding(message: &str) -> Report {
    Report {
        configurations: 0,
        findings: vec![message.to_string()],
        warnings: Vec::new(),
    }
}

/// The policy the filter would compile, and the same bytes as JSON (for what the policy does
/// not keep: route prefixes, methods, cluster names); or the filter's errors.
fn load(bytes: &[u8]) -> Result<(Policy, Value), Vec<String>> {
    let policy = api_guard_core::config::load(bytes)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    // `load` accepted it, so it is JSON.
    let plugin = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    Ok((policy, plugin))
}

fn check_embedded(found: Vec<Embedded<'_>>) -> Report {
    let mut findings = Vec::new();
    let mut warnings = Vec::new();
    for embedded in &found {
        let at = &embedded.location;
        findings.extend(embedded.errors.iter().cloned());
        let bytes = match &embedded.content {
            Err(message) => {
                findings.push(format!("[{at}] {message}"));
                continue;
            }
            Ok(bytes) => bytes,
        };
        match load(bytes) {
            Err(errors) => findings.extend(errors.into_iter().map(|e| format!("[{at}] {e}"))),
            Ok((policy, plugin)) => {
                warnings.extend(
                    plugin_warnings(&policy, &plugin)
                        .into_iter()
                        .map(|w| format!("[{at}] {w}")),
                );
                if let Some(site) = &embedded.site {
                    warnings.extend(envoy_warnings(&policy, &plugin, site));
                }
                if embedded.istio {
                    warnings.extend(istio_body_warning(&policy).map(|w| format!("[{at}] {w}")));
                }
            }
        }
    }
    // Two api-guard filters in one connection manager would report it twice.
    let mut seen = std::collections::HashSet::new();
    warnings.retain(|w| seen.insert(w.clone()));
    Report {
        configurations: found.len(),
        findings,
        warnings,
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn text_at<'v>(value: &'v Value, path: &[&str]) -> Option<&'v str> {
    path.iter()
        .try_fold(value, |node, key| node.get(key))
        .and_then(Value::as_str)
}

fn names_api_guard(text: &str) -> bool {
    text.contains("api-guard") || text.contains("api_guard")
}

impl<'v> Ancestors<'v> {
    fn of(root: &'v Value) -> Ancestors<'v> {
        Ancestors {
            root,
            listener: None,
            connection_manager: None,
        }
    }
}

impl<'v> Search<'v> {
    fn walk(&mut self, value: &'v Value, path: &str, ancestors: &Ancestors<'v>) {
        match value {
            Value::Object(object) => {
                if object.contains_key("vm_config") {
                    self.plugin_config(value, object, path, ancestors);
                } else if object.get("kind").and_then(Value::as_str) == Some("WasmPlugin") {
                    self.istio_wasm_plugin(value, path);
                } else {
                    let mut inner = ancestors.clone();
                    let here = || Located {
                        value,
                        path: path.to_string(),
                    };
                    if object.contains_key("filter_chains") {
                        inner.listener = Some(here());
                        inner.connection_manager = None;
                    }
                    if object.contains_key("http_filters") {
                        inner.connection_manager = Some(here());
                    }
                    for (key, child) in object {
                        self.walk(child, &join(path, key), &inner);
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    self.walk(child, &format!("{path}[{i}]"), ancestors);
                }
            }
            _ => {}
        }
    }

    /// An Envoy `envoy.extensions.wasm.v3.PluginConfig`.
    fn plugin_config(
        &mut self,
        value: &'v Value,
        object: &Map<String, Value>,
        path: &str,
        ancestors: &Ancestors<'v>,
    ) {
        let markers = [
            text_at(value, &["name"]),
            text_at(value, &["root_id"]),
            text_at(value, &["vm_config", "vm_id"]),
            text_at(value, &["vm_config", "code", "local", "filename"]),
            text_at(value, &["vm_config", "code", "remote", "http_uri", "uri"]),
        ];
        if !markers.into_iter().flatten().any(names_api_guard) {
            let name = markers.into_iter().flatten().next().unwrap_or("unnamed");
            self.other_plugins.push(format!("{name:?}"));
            return;
        }
        let location = join(path, "configuration");
        let content = match object.get("configuration") {
            // No configuration: the filter receives nothing, which `load` refuses.
            None => Ok(Vec::new()),
            Some(configuration) => match text_at(configuration, &["@type"]) {
                Some(STRING_VALUE) => match configuration.get("value") {
                    None => Ok(Vec::new()),
                    Some(Value::String(text)) => Ok(text.as_bytes().to_vec()),
                    Some(_) => Err(
                        "\"value\" must be a string holding api-guard's JSON configuration".into(),
                    ),
                },
                Some(other) => Err(format!(
                    "the configuration is a {other}; api-guard reads a {STRING_VALUE} holding its JSON configuration"
                )),
                None => Err(format!(
                    "the configuration needs \"@type\": {STRING_VALUE} and a \"value\" holding api-guard's JSON configuration"
                )),
            },
        };
        // Only an HTTP filter has a connection manager around it whose settings matter.
        let site = ancestors.connection_manager.is_some().then(|| EnvoySite {
            plugin: Located {
                value,
                path: path.to_string(),
            },
            ancestors: ancestors.clone(),
        });
        self.found.push(Embedded {
            location,
            content,
            site,
            errors: Vec::new(),
            istio: false,
        });
    }

    /// An Istio `WasmPlugin` resource.
    fn istio_wasm_plugin(&mut self, value: &Value, path: &str) {
        let name = text_at(value, &["metadata", "name"]).unwrap_or("unnamed");
        let markers = [
            Some(name),
            text_at(value, &["spec", "url"]),
            text_at(value, &["spec", "pluginName"]),
        ];
        if !markers.into_iter().flatten().any(names_api_guard) {
            self.other_plugins.push(format!("WasmPlugin {name:?}"));
            return;
        }
        let location = join(path, "spec.pluginConfig");
        let content = match value.get("spec").and_then(|spec| spec.get("pluginConfig")) {
            None => Ok(Vec::new()),
            Some(config) => serde_json::to_vec(config).map_err(|e| e.to_string()),
        };
        self.found.push(Embedded {
            location,
            content,
            site: None,
            errors: wasm_plugin_errors(value, &join(path, "spec")),
            istio: true,
        });
    }
}

/// What makes an Istio `WasmPlugin` for api-guard unsafe to apply, whatever its `pluginConfig`
/// (extensions.istio.io/v1alpha1): a security filter that fails open, or that runs after
/// Istio's own authorization, protects nothing it seems to.
fn wasm_plugin_errors(value: &Value, spec_path: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let field = |name: &str| value.get("spec").and_then(|spec| spec.get(name));
    // Istio's FailStrategy: FAIL_CLOSE (the default when absent), FAIL_OPEN, FAIL_RELOAD (Envoy
    // reloads a crashed VM and refuses requests until it is back).
    match field("failStrategy") {
        None => {}
        Some(Value::String(s)) if s == "FAIL_CLOSE" || s == "FAIL_RELOAD" => {}
        Some(Value::String(s)) if s == "FAIL_OPEN" => errors.push(format!(
            "{spec_path}.failStrategy: FAIL_OPEN lets every request through unchecked when the              api-guard VM cannot load or crashes (an attacker who crashes it turns the guard              off); use FAIL_CLOSE"
        )),
        Some(other) => errors.push(format!(
            "{spec_path}.failStrategy: {other} is not an Istio FailStrategy api-guard accepts              (FAIL_CLOSE or FAIL_RELOAD)"
        )),
    }
    // Istio's PluginPhase: without one (or UNSPECIFIED_PHASE) the filter goes just before the
    // router, after Istio's authentication and authorization; STATS is later still.
    match field("phase") {
        Some(Value::String(s)) if s == "AUTHN" || s == "AUTHZ" => {}
        None => errors.push(format!(
            "{spec_path}.phase: missing: Istio then puts api-guard after its own authorization              filters, just before the router; set phase: AUTHN"
        )),
        Some(other) => errors.push(format!(
            "{spec_path}.phase: {other} puts api-guard after Istio's authorization filters;              set phase: AUTHN (or AUTHZ)"
        )),
    }
    match field("type") {
        None => {}
        Some(Value::String(s)) if s == "HTTP" => {}
        Some(other) => errors.push(format!(
            "{spec_path}.type: {other}: api-guard is an HTTP filter (type: HTTP)"
        )),
    }
    // For an oci:// URL Istio compares it with the image's manifest digest (`make oci`
    // prints it), for http(s):// with the module's: 64 lower-case hex digits.
    match field("sha256") {
        None => {}
        Some(Value::String(s))
            if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {}
        Some(other) => errors.push(format!(
            "{spec_path}.sha256: {other} is not a SHA-256 digest (64 lower-case hex digits,              without \"sha256:\")"
        )),
    }
    errors
}

/// Istio writes the wasm filter without `allow_on_headers_stop_iteration`, and a WasmPlugin
/// cannot set it: routes that read the body whole fail closed there.
fn istio_body_warning(policy: &Policy) -> Option<String> {
    let names: Vec<String> = policy
        .routes
        .iter()
        .filter(|r| r.webhook.is_some() || r.body_schema.is_some())
        .map(|r| format!("{:?}", r.name))
        .collect();
    if names.is_empty() {
        return None;
    }
    Some(format!(
        "route(s) {} read the body (webhook, body_schema), but Istio writes the wasm filter \
         without allow_on_headers_stop_iteration: those requests fail closed with 503 after \
         about 3 s. Patch allow_on_headers_stop_iteration: true in with an EnvoyFilter, or \
         leave webhook and body_schema out",
        names.join(", ")
    ))
}

// ---------------------------------------------------------------------------------------------
// Warnings
// ---------------------------------------------------------------------------------------------
//
// What the filter accepts but what would not protect as it seems to:
// - every configuration: a request that falls from a guarded route to a weaker one by a
//   trailing slash (`plugin_warnings`);
// - around the wasm filter of an Envoy configuration (`envoy_warnings`): the connection manager
//   without `local_reply_config`, without `headers_with_underscores_action: REJECT_REQUEST`,
//   without a trustworthy client address; a remote JWKS or rate-limit service whose cluster the
//   file does not define; routes that read the body without `allow_on_headers_stop_iteration`,
//   or with a bound above the listener's buffer limit.

/// Envoy's `per_connection_buffer_limit_bytes` when the listener does not set it.
const ENVOY_DEFAULT_BUFFER_LIMIT_BYTES: u64 = 1_048_576;

/// Warnings about the plugin configuration itself.
fn plugin_warnings(policy: &Policy, plugin: &Value) -> Vec<String> {
    route_fall_through(policy, plugin)
}

/// The `routes[i]` object of the plugin JSON.
fn raw_route(plugin: &Value, index: usize) -> Option<&Value> {
    plugin.get("routes").and_then(|routes| routes.get(index))
}

fn route_label(policy: &Policy, index: usize) -> String {
    match policy.routes.get(index) {
        Some(route) => format!("routes[{index}] {:?}", route.name),
        None => format!("routes[{index}]"),
    }
}

/// Why `other` protects less than `guarded` does, if it does.
fn weaker(guarded: &Route, other: &Route) -> Vec<&'static str> {
    let mut reasons = Vec::new();
    if guarded.auth != Auth::None && other.auth == Auth::None {
        reasons.push("needs no authentication");
    }
    if guarded.require.is_some() && other.require != guarded.require {
        reasons.push(if other.require.is_none() {
            "has no `require`"
        } else {
            "has another `require`"
        });
    }
    if guarded.owner.is_some() && other.owner != guarded.owner {
        reasons.push(if other.owner.is_none() {
            "has no `owner` check"
        } else {
            "has another `owner` check"
        });
    }
    reasons
}

/// A host that a route's `hosts` accepts (`*.example.com` → `probe.example.com`); empty when
/// the route takes any host.
fn probe_host(raw: &Value) -> String {
    let first = raw
        .pointer("/match/hosts/0")
        .and_then(Value::as_str)
        .unwrap_or("");
    match first.strip_prefix("*.") {
        Some(domain) => format!("probe.{domain}"),
        None => first.to_string(),
    }
}

/// Route fall-through: `"path_prefix": "/admin/"` does not cover `/admin`, which then matches a
/// later, weaker route (the catch-all `/`, say). Many frameworks serve `/admin` and `/admin/`
/// alike, so the guarded handler is reached through the weaker route. For every guarded route
/// (one with authentication, `require` or `owner`), the probe is its prefix without the trailing
/// slash, tried with each of its methods (GET when it takes any); the warning names the first
/// route that matches the probe when that route is another, weaker one.
fn route_fall_through(policy: &Policy, plugin: &Value) -> Vec<String> {
    let mut warnings = Vec::new();
    for (index, guarded) in policy.routes.iter().enumerate() {
        if guarded.auth == Auth::None && guarded.require.is_none() && guarded.owner.is_none() {
            continue;
        }
        let Some(raw) = raw_route(plugin, index) else {
            continue;
        };
        let Some(prefix) = raw.pointer("/match/path_prefix").and_then(Value::as_str) else {
            continue;
        };
        let Some(probe) = prefix.strip_suffix('/').filter(|p| !p.is_empty()) else {
            continue;
        };
        let methods: Vec<&str> = match raw.pointer("/match/methods").and_then(Value::as_array) {
            Some(methods) => methods.iter().filter_map(Value::as_str).collect(),
            None => vec!["GET"],
        };
        let host = probe_host(raw);
        // The weaker route each method falls to, in order, methods grouped by route.
        let mut falls: Vec<(usize, Vec<&str>, Vec<&'static str>)> = Vec::new();
        for method in methods {
            let first = policy
                .routes
                .iter()
                .position(|route| route.matcher.matches(method, &host, probe).is_some());
            let Some(other_index) = first.filter(|&other| other != index) else {
                continue;
            };
            let Some(other) = policy.routes.get(other_index) else {
                continue;
            };
            let reasons = weaker(guarded, other);
            if reasons.is_empty() {
                continue;
            }
            match falls.iter_mut().find(|(at, _, _)| *at == other_index) {
                Some((_, methods, _)) => methods.push(method),
                None => falls.push((other_index, vec![method], reasons)),
            }
        }
        for (other_index, methods, reasons) in falls {
            warnings.push(format!(
                "route fall-through: {guarded_label} (path_prefix {prefix:?}) does not cover \
                 {probe:?}: {methods} {probe} matches {other_label} first, which {reasons}; \
                 where the upstream serves {probe:?} like {prefix:?}, the guarded handler is \
                 reached without the guard. Use \"path_separated_prefix\": {probe:?} (it covers \
                 {probe}, {probe}/ and everything below) or a route for {probe:?} with the same \
                 protection",
                guarded_label = route_label(policy, index),
                methods = methods.join(", "),
                other_label = route_label(policy, other_index),
                reasons = reasons.join(" and "),
            ));
        }
    }
    warnings
}

/// Warnings about the Envoy configuration around the api-guard wasm filter.
fn envoy_warnings(policy: &Policy, plugin: &Value, site: &EnvoySite<'_>) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(manager) = &site.ancestors.connection_manager {
        connection_manager_warnings(manager, &mut warnings);
    }
    cluster_warnings(plugin, site, &mut warnings);
    body_warnings(policy, site, &mut warnings);
    warnings
}

fn is_true(value: Option<&Value>) -> bool {
    value.and_then(Value::as_bool) == Some(true)
}

/// A protobuf integer as YAML or JSON gives it: a number, or a decimal string.
fn as_u64(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

fn connection_manager_warnings(manager: &Located<'_>, warnings: &mut Vec<String>) {
    let at = &manager.path;
    let hcm = manager.value;
    if hcm.get("local_reply_config").is_none() {
        warnings.push(format!(
            "[{at}] the HTTP connection manager has no local_reply_config: the replies Envoy \
             sends before any filter runs (400 for a fragment in the request target, a \
             lower-case method or a malformed header; 431, 426) carry neither the security \
             headers nor the JSON error envelope. Copy the local_reply_config of \
             envoy/demo.yaml (see the README)"
        ));
    }
    let underscores = hcm
        .pointer("/common_http_protocol_options/headers_with_underscores_action")
        .and_then(Value::as_str);
    if !matches!(underscores, Some("REJECT_REQUEST" | "DROP_HEADER")) {
        warnings.push(format!(
            "[{at}] common_http_protocol_options.headers_with_underscores_action is {}: \
             CGI, WSGI and Rack servers read `x_user_id` as `x-user-id`, so a client can send \
             an identity header under a spelling that is not stripped (CVE-2024-45614). Set \
             headers_with_underscores_action: REJECT_REQUEST",
            underscores.map_or("not set (Envoy allows them)".to_string(), |v| v.to_string()),
        ));
    }
    let trusted_hops = hcm
        .get("xff_num_trusted_hops")
        .and_then(as_u64)
        .unwrap_or(0);
    let detection = hcm
        .get("original_ip_detection_extensions")
        .and_then(Value::as_array)
        .is_some_and(|extensions| !extensions.is_empty());
    if !is_true(hcm.get("use_remote_address")) && trusted_hops == 0 && !detection {
        warnings.push(format!(
            "[{at}] the HTTP connection manager has neither use_remote_address: true nor \
             xff_num_trusted_hops: Envoy takes the client address from the X-Forwarded-For \
             header the client writes, so `ip` rate limits, IP lists and security events see \
             whatever address the client chooses. Set use_remote_address: true at the edge, \
             or xff_num_trusted_hops: N behind N trusted proxies"
        ));
    }
}

/// The cluster names a plugin configuration sends requests to, with their JSON paths and what
/// a missing cluster means.
fn plugin_clusters(plugin: &Value) -> Vec<(String, &str, &'static str)> {
    let mut clusters = Vec::new();
    if let Some(providers) = plugin.pointer("/jwt/providers").and_then(Value::as_array) {
        for (i, provider) in providers.iter().enumerate() {
            if let Some(cluster) = provider
                .pointer("/jwks/remote/cluster")
                .and_then(Value::as_str)
            {
                clusters.push((
                    format!("jwt.providers[{i}].jwks.remote.cluster"),
                    cluster,
                    "the JWKS is never fetched, and tokens of this provider verify only against \
                     its inline keys, if it has any",
                ));
            }
        }
    }
    if let Some(services) = plugin.get("rate_limit_services").and_then(Value::as_object) {
        for (name, service) in services {
            if let Some(cluster) = service.get("cluster").and_then(Value::as_str) {
                clusters.push((
                    format!("rate_limit_services.{name}.cluster"),
                    cluster,
                    "the service never answers, and its limits fall back to its failure_mode",
                ));
            }
        }
    }
    clusters
}

fn cluster_warnings(plugin: &Value, site: &EnvoySite<'_>, warnings: &mut Vec<String>) {
    let root = site.ancestors.root;
    // Clusters from CDS are not in the file.
    if root.pointer("/dynamic_resources/cds_config").is_some() {
        return;
    }
    let defined: Vec<&str> = root
        .pointer("/static_resources/clusters")
        .and_then(Value::as_array)
        .map(|clusters| {
            clusters
                .iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    for (field, cluster, consequence) in plugin_clusters(plugin) {
        if !defined.contains(&cluster) {
            warnings.push(format!(
                "[{}.configuration] {field}: the cluster {cluster:?} is not in \
                 static_resources.clusters: Envoy refuses every call to it, so {consequence}. \
                 Define the cluster, or name one that exists",
                site.plugin.path
            ));
        }
    }
}

fn body_warnings(policy: &Policy, site: &EnvoySite<'_>, warnings: &mut Vec<String>) {
    let body_routes: Vec<&Route> = policy
        .routes
        .iter()
        .filter(|r| r.webhook.is_some() || r.body_schema.is_some())
        .collect();
    if body_routes.is_empty() {
        return;
    }
    if !is_true(site.plugin.value.get("allow_on_headers_stop_iteration")) {
        let names: Vec<String> = body_routes
            .iter()
            .map(|r| format!("{:?}", r.name))
            .collect();
        let (routes, read) = if names.len() == 1 {
            ("route", "reads")
        } else {
            ("routes", "read")
        };
        warnings.push(format!(
            "[{}] the api-guard wasm filter lacks allow_on_headers_stop_iteration: true, and \
             {routes} {} {read} the body (webhook, body_schema): Envoy never hands the body to \
             a filter that holds the headers, so those requests hang or fail. Set \
             allow_on_headers_stop_iteration: true (Envoy 1.35+)",
            site.plugin.path,
            names.join(", ")
        ));
    }
    let Some(listener) = &site.ancestors.listener else {
        return;
    };
    let set_limit = listener
        .value
        .get("per_connection_buffer_limit_bytes")
        .and_then(as_u64);
    let listener_limit = set_limit.unwrap_or(ENVOY_DEFAULT_BUFFER_LIMIT_BYTES);
    // A route or virtual host of the connection manager may raise the buffer for its requests.
    // Which Envoy route serves which api-guard route is not known here, so the largest one
    // counts: no warning that could be wrong, at the price of missing some.
    let route_limit = site
        .ancestors
        .connection_manager
        .as_ref()
        .and_then(|m| m.value.get("route_config"))
        .and_then(largest_route_buffer_limit);
    let limit = listener_limit.max(route_limit.unwrap_or(0));
    for route in body_routes {
        let bound = route.max_body_bytes.unwrap_or(DEFAULT_BUFFERED_BODY_BYTES);
        if bound > limit {
            warnings.push(format!(
                "[{}] route {:?} reads its body whole and accepts up to {bound} bytes ({}), \
                 more than Envoy buffers for a request: the listener's \
                 per_connection_buffer_limit_bytes is {listener_limit}{}{}. Envoy answers \
                 bodies between the two with its own 413 before they can go upstream. Lower \
                 max_body_bytes, or raise per_connection_buffer_limit_bytes (or the Envoy \
                 route's request_body_buffer_limit) to at least {bound}",
                listener.path,
                route.name,
                if route.max_body_bytes.is_some() {
                    "max_body_bytes"
                } else {
                    "the default of max_body_bytes"
                },
                if set_limit.is_some() {
                    ""
                } else {
                    " (Envoy's default)"
                },
                match route_limit {
                    Some(bytes) => format!(", the largest route buffer limit {bytes}"),
                    None => String::new(),
                },
            ));
        }
    }
}

/// The largest `request_body_buffer_limit` (Envoy 1.40) or `per_request_buffer_limit_bytes`
/// (deprecated) of an inline route configuration, on routes or virtual hosts.
fn largest_route_buffer_limit(value: &Value) -> Option<u64> {
    match value {
        Value::Object(object) => object
            .iter()
            .filter_map(|(key, child)| match key.as_str() {
                "request_body_buffer_limit" | "per_request_buffer_limit_bytes" => as_u64(child),
                _ => largest_route_buffer_limit(child),
            })
            .max(),
        Value::Array(items) => items.iter().filter_map(largest_route_buffer_limit).max(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const GOOD: &str =
        r#"{"routes":[{"name":"health","match":{"path_exact":"/healthz"},"auth":"none"}]}"#;
    const BAD: &str = r#"{"routes":[{"name":"x","match":{"path_prefix":"api"},"auth":"none"}]}"#;

    fn envoy_yaml(plugin_name: &str, configuration: &str) -> String {
        format!(
            r#"static_resources:
  listeners:
  - name: api
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {plugin_name}
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: /etc/envoy/filter.wasm }} }}
{configuration}
          - name: envoy.filters.http.router
"#
        )
    }

    fn block(json: &str) -> String {
        let mut out = String::from(
            "                configuration:\n                  \"@type\": type.googleapis.com/google.protobuf.StringValue\n                  value: |\n",
        );
        for line in json.lines() {
            out.push_str("                    ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    fn quoted(json: &str) -> String {
        let escaped = json.replace('\\', "\\\\").replace('"', "\\\"");
        format!(
            "                configuration:\n                  \"@type\": type.googleapis.com/google.protobuf.StringValue\n                  value: \"{escaped}\"\n"
        )
    }

    const AT: &str = "[static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.config.configuration]";

    #[test]
    fn plain_json_plugin_configs() {
        let report = check(GOOD.as_bytes());
        assert_eq!(report.configurations, 1);
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        let report = check(BAD.as_bytes());
        assert_eq!(report.findings.len(), 1);
        assert!(
            report.findings[0].starts_with("routes[0].match.path_prefix: "),
            "{:?}",
            report.findings
        );
        // Broken JSON is reported by `load`, with its line and column.
        let report = check(b"{\"routes\": [}");
        assert_eq!(report.findings.len(), 1);
        assert!(
            report.findings[0].contains("line 1"),
            "{:?}",
            report.findings
        );
        // Empty: the filter refuses an empty configuration, so does check.
        assert!(check(b"  \n").findings[0].contains("empty"));
    }

    #[test]
    fn envoy_yaml_block_and_quoted_scalars() {
        for configuration in [block(GOOD), quoted(GOOD)] {
            let report = check(envoy_yaml("api-guard", &configuration).as_bytes());
            assert_eq!(report.configurations, 1);
            assert!(report.findings.is_empty(), "{:?}", report.findings);
        }
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(BAD).unwrap()).unwrap();
        for configuration in [block(&pretty), quoted(BAD)] {
            let report = check(envoy_yaml("api-guard", &configuration).as_bytes());
            assert_eq!(
                report.findings,
                vec![format!(
                    "{AT} routes[0].match.path_prefix: must start with \"/\""
                )]
            );
        }
    }

    #[test]
    fn only_api_guard_plugins_are_checked() {
        let report = check(envoy_yaml("other-filter", &block(BAD)).as_bytes());
        assert_eq!(report.configurations, 0);
        assert_eq!(report.findings.len(), 1);
        assert!(
            report.findings[0].contains("no api-guard configuration found")
                && report.findings[0].contains("\"other-filter\""),
            "{:?}",
            report.findings
        );
        let unrelated = check(b"admin:\n  address: {}\n");
        assert!(unrelated.findings[0].contains("no api-guard configuration found"));
    }

    #[test]
    fn configuration_shapes() {
        let missing = check(envoy_yaml("api-guard", "").as_bytes());
        assert_eq!(missing.findings.len(), 1);
        assert!(
            missing.findings[0].contains("empty"),
            "{:?}",
            missing.findings
        );

        let wrong_type = "                configuration:\n                  \"@type\": type.googleapis.com/google.protobuf.Struct\n                  value: {}\n";
        let report = check(envoy_yaml("api-guard", wrong_type).as_bytes());
        assert!(
            report.findings[0].contains("google.protobuf.Struct"),
            "{:?}",
            report.findings
        );
    }

    #[test]
    fn json_bootstrap_multi_document_yaml_and_istio() {
        let yaml = envoy_yaml("api-guard", &quoted(BAD));
        let as_json: Value = serde_norway::from_str(&yaml).unwrap();
        let report = check(serde_json::to_string(&as_json).unwrap().as_bytes());
        assert_eq!(report.configurations, 1);
        assert_eq!(report.findings.len(), 1);
        assert!(report.findings[0].starts_with(AT), "{:?}", report.findings);

        let two = format!(
            "{}---\n{}",
            envoy_yaml("api-guard", &quoted(GOOD)),
            envoy_yaml("api-guard", &quoted(BAD))
        );
        let report = check(two.as_bytes());
        assert_eq!(report.configurations, 2);
        assert_eq!(report.findings.len(), 1);
        assert!(
            report.findings[0].starts_with("[document 2.static_resources"),
            "{:?}",
            report.findings
        );

        let istio = r#"apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: api-guard
spec:
  url: oci://registry.example.com/api-guard:1.0
  phase: AUTHN
  pluginConfig:
    routes:
    - name: x
      match: { path_prefix: api }
      auth: none
"#;
        let report = check(istio.as_bytes());
        assert_eq!(
            report.findings,
            vec!["[spec.pluginConfig] routes[0].match.path_prefix: must start with \"/\""]
        );
    }

    #[test]
    fn connection_manager_warnings_in_yaml_and_json_bootstraps_not_in_istio() {
        let yaml = envoy_yaml("api-guard", &quoted(GOOD));
        let as_json: Value = serde_norway::from_str(&yaml).unwrap();
        let json = serde_json::to_string(&as_json).unwrap();
        for text in [yaml.as_str(), json.as_str()] {
            let report = check(text.as_bytes());
            assert!(report.findings.is_empty(), "{:?}", report.findings);
            let hcm = "[static_resources.listeners[0].filter_chains[0].filters[0].typed_config] ";
            assert_eq!(report.warnings.len(), 3, "{:?}", report.warnings);
            for (warning, about) in report.warnings.iter().zip([
                "the HTTP connection manager has no local_reply_config",
                "common_http_protocol_options.headers_with_underscores_action is not set",
                "the HTTP connection manager has neither use_remote_address",
            ]) {
                assert!(warning.starts_with(&format!("{hcm}{about}")), "{warning}");
            }
        }
        let istio = "kind: WasmPlugin\nmetadata: { name: api-guard }\nspec:\n  phase: AUTHN\n  pluginConfig:\n    routes: [ { name: h, match: { path_exact: /h }, auth: none } ]\n";
        let report = check(istio.as_bytes());
        assert!(report.findings.is_empty() && report.warnings.is_empty());
    }

    fn wasm_plugin(spec_lines: &str, routes: &str) -> String {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{ name: api-guard }}\nspec:\n  url: oci://registry.example.com/api-guard:1.0\n{spec_lines}  pluginConfig:\n    routes: {routes}\n    webhooks: {{ gh: {{ scheme: github, secrets: [\"0123456789abcdef0123456789abcdef\"] }} }}\n"
        )
    }

    const PLAIN_ROUTES: &str = "[ { name: h, match: { path_exact: /h }, auth: none } ]";

    #[test]
    fn wasm_plugins_must_fail_closed_and_run_before_istio_authorization() {
        for accepted in [
            "  phase: AUTHN\n  failStrategy: FAIL_CLOSE\n",
            "  phase: AUTHN\n",
            "  phase: AUTHZ\n  failStrategy: FAIL_RELOAD\n  type: HTTP\n",
            "  phase: AUTHN\n  sha256: b6a53ff0e6f1266a415ee9e7c8add2257baf868385f7f229151c62ed4a913c82\n",
        ] {
            let report = check(wasm_plugin(accepted, PLAIN_ROUTES).as_bytes());
            assert!(report.findings.is_empty(), "{accepted}: {:?}", report.findings);
            assert!(report.warnings.is_empty(), "{accepted}: {:?}", report.warnings);
        }
        for (refused, expected) in [
            (
                "  phase: AUTHN\n  failStrategy: FAIL_OPEN\n",
                "spec.failStrategy: FAIL_OPEN lets every request through unchecked",
            ),
            ("  failStrategy: FAIL_CLOSE\n", "spec.phase: missing"),
            (
                "  phase: STATS\n",
                "spec.phase: \"STATS\" puts api-guard after",
            ),
            (
                "  phase: UNSPECIFIED_PHASE\n",
                "spec.phase: \"UNSPECIFIED_PHASE\"",
            ),
            (
                "  phase: AUTHN\n  failStrategy: FAIL_SOMETIMES\n",
                "spec.failStrategy: \"FAIL_SOMETIMES\"",
            ),
            (
                "  phase: AUTHN\n  type: NETWORK\n",
                "spec.type: \"NETWORK\"",
            ),
            (
                "  phase: AUTHN\n  sha256: \"sha256:abc\"\n",
                "spec.sha256: \"sha256:abc\" is not",
            ),
        ] {
            let report = check(wasm_plugin(refused, PLAIN_ROUTES).as_bytes());
            assert_eq!(report.findings.len(), 1, "{refused}: {:?}", report.findings);
            assert!(
                report.findings[0].starts_with(expected),
                "{refused}: {:?}",
                report.findings
            );
        }
        // The plugin configuration is still checked alongside.
        let report = check(
            wasm_plugin(
                "  failStrategy: FAIL_OPEN\n",
                "[ { name: x, match: { path_prefix: api }, auth: none } ]",
            )
            .as_bytes(),
        );
        assert_eq!(report.findings.len(), 3, "{:?}", report.findings);
    }

    #[test]
    fn wasm_plugins_with_body_routes_are_warned_about_the_missing_setting() {
        let routes = "[ { name: hook, match: { path_exact: /hook }, auth: none, webhook: gh } ]";
        let report = check(wasm_plugin("  phase: AUTHN\n", routes).as_bytes());
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(
            report.warnings[0].starts_with("[spec.pluginConfig] route(s) \"hook\" read the body")
                && report.warnings[0].contains("allow_on_headers_stop_iteration"),
            "{:?}",
            report.warnings
        );
    }

    #[test]
    fn yaml_syntax_errors_are_findings() {
        let report = check(b"static_resources:\n  - a\n b: [\n");
        assert_eq!(report.findings.len(), 1);
        assert!(report.findings[0].starts_with("the file is not valid YAML"));
    }
}
