//! The static Envoy bootstrap the harness runs.

use std::fmt::Write as _;
use std::path::Path;

/// Everything the generated YAML depends on.
pub struct ConfigParams<'a> {
    pub listener_port: u16,
    pub admin_port: u16,
    pub upstream_port: u16,
    /// `Some((plugin JSON, wasm file))` adds the api-guard wasm filter.
    pub plugin: Option<(&'a str, &'a Path)>,
    /// YAML list items appended to `static_resources.clusters`.
    pub extra_clusters_yaml: Option<&'a str>,
}

/// Emits `s` as a YAML double-quoted scalar. Only printable ASCII is written
/// as is; everything else becomes a `\uXXXX` / `\UXXXXXXXX` escape, so no
/// YAML (1.1 or 1.2) parser can read it differently. JSON fits: the plugin
/// sees exactly the bytes of `s`.
pub fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xFFFF => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08X}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Strips the common leading indentation of `block` and indents every
/// non-empty line by `indent` spaces.
fn reindent(block: &str, indent: usize) -> String {
    let common = block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches(' ').len())
        .min()
        .unwrap_or(0);
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for line in block.lines() {
        if line.trim().is_empty() {
            out.push('\n');
        } else {
            out.push_str(&pad);
            out.push_str(&line[common..]);
            out.push('\n');
        }
    }
    out
}

/// Settings of the generated YAML beyond `ConfigParams` (kept separate so
/// that `ConfigParams` literals elsewhere keep compiling).
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderExtras<'a> {
    /// An `http_filters` entry (YAML, written as at top level: `- name: ...`) that takes the
    /// place of the api-guard wasm filter the harness writes: a filter configured another way,
    /// e.g. through extension config discovery as Istio does.
    pub wasm_filter_yaml: Option<&'a str>,
    /// Top-level bootstrap YAML appended to the file (e.g. `node:`, which extension config
    /// discovery needs).
    pub extra_bootstrap_yaml: Option<&'a str>,
    /// The route's upstream timeout; `None` = 5 s.
    pub route_timeout_ms: Option<u64>,
    /// Leave `allow_on_headers_stop_iteration: true` out of the wasm filter's config, as every
    /// Istio `WasmPlugin` does.
    pub omit_allow_on_headers_stop_iteration: bool,
    /// The listener's `per_connection_buffer_limit_bytes`; `None` = Envoy's default (1 MiB).
    pub per_connection_buffer_limit_bytes: Option<u64>,
    /// The listener also speaks TLS (a certificate made for the test process): Envoy's TLS
    /// inspector sends TLS connections to a filter chain with the same filters, plain-text ones
    /// to the plain chain, on the same port.
    pub tls: bool,
}

/// The shipped configuration's own `local_reply_config` block (comments inside it included), cut
/// out of `envoy/demo.yaml`, at the indentation of the harness's connection manager: Envoy's
/// codec-level replies get the security headers and the JSON envelope in the tests exactly as in
/// the demo.
/// The block is the `local_reply_config:` key of the demo's connection manager (10 spaces in)
/// and every line below it that is blank or indented deeper.
pub fn local_reply_config_yaml() -> String {
    const DEMO: &str = include_str!("../../envoy/demo.yaml");
    const KEY: &str = "          local_reply_config:";
    let lines: Vec<&str> = DEMO.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == KEY)
        .unwrap_or_else(|| panic!("envoy/demo.yaml has no {KEY:?} line"));
    let mut block = String::new();
    for line in &lines[start..] {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if !block.is_empty() && !line.trim().is_empty() && indent <= 10 {
            break;
        }
        block.push_str(line);
        block.push('\n');
    }
    block
}

/// The shipped configuration's `stats_config` block (the tag extractors that turn the filter's
/// metric names into labels), cut out of `envoy/demo.yaml`: the tests read `/stats/prometheus`
/// through the same regexes as the demo.
pub fn stats_config_yaml() -> String {
    const DEMO: &str = include_str!("../../envoy/demo.yaml");
    let lines: Vec<&str> = DEMO.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == "stats_config:")
        .unwrap_or_else(|| panic!("envoy/demo.yaml has no stats_config: line"));
    let mut block = String::new();
    for line in &lines[start..] {
        if !block.is_empty() && !line.starts_with(' ') {
            break;
        }
        block.push_str(line);
        block.push('\n');
    }
    block
}

pub fn render(p: &ConfigParams<'_>) -> String {
    render_with(p, &RenderExtras::default())
}

/// `render` with the extra settings of `extras`.
pub fn render_with(p: &ConfigParams<'_>, extras: &RenderExtras<'_>) -> String {
    let timeout_ms = extras.route_timeout_ms.unwrap_or(5_000);
    let route_timeout = format!("{}.{:03}s", timeout_ms / 1000, timeout_ms % 1000);
    let stop_iteration = if extras.omit_allow_on_headers_stop_iteration {
        "# allow_on_headers_stop_iteration left out (RenderExtras)."
    } else {
        "allow_on_headers_stop_iteration: true"
    };
    let buffer_limit = extras
        .per_connection_buffer_limit_bytes
        .map(|bytes| format!("    per_connection_buffer_limit_bytes: {bytes}\n"))
        .unwrap_or_default();
    let wasm_filter = match (extras.wasm_filter_yaml, p.plugin) {
        (Some(filter), _) => reindent(filter, 10),
        (None, None) => String::new(),
        (None, Some((json, _))) if super::adapter() == super::Adapter::Module => format!(
            r#"          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              # Found as libapi_guard.so on ENVOY_DYNAMIC_MODULES_SEARCH_PATH (the harness sets it).
              dynamic_module_config: {{ name: api_guard }}
              filter_name: api-guard
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: {value}
"#,
            value = yaml_quote(json),
        ),
        (None, Some((json, wasm))) => format!(
            r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: api-guard
                root_id: api-guard
                # Envoy 1.40: `fail_open` is deprecated; failure_policy replaces it.
                failure_policy: FAIL_CLOSED
                # Without it, a filter that holds the headers never sees the body (webhook and
                # body_schema routes answer 503 after 3 s; RenderExtras can leave it out).
                {stop_iteration}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {value}
                vm_config:
                  vm_id: api-guard
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local:
                      filename: {filename}
"#,
            value = yaml_quote(json),
            filename = yaml_quote(&wasm.to_string_lossy()),
        ),
    };
    let local_reply = local_reply_config_yaml();
    let (listener_filters, tls_chain) = if extras.tls {
        let (cert, key) = super::tls_files();
        (
            r#"    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
"#
            .to_string(),
            format!(
                r#"    - filter_chain_match: {{ transport_protocol: tls }}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: {cert} }}
              private_key: {{ filename: {key} }}
"#,
                cert = yaml_quote(&cert.to_string_lossy()),
                key = yaml_quote(&key.to_string_lossy()),
            ),
        )
    } else {
        (String::new(), String::new())
    };
    let extra_clusters = p
        .extra_clusters_yaml
        .map(|y| reindent(y, 2))
        .unwrap_or_default();
    let chain_filters = format!(
        r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          server_header_transformation: PASS_THROUGH
          # The client address is the connection's, never a client-written X-Forwarded-For.
          use_remote_address: true
          generate_request_id: true
          # The filter normalises paths itself.
          normalize_path: false
          merge_slashes: false
{local_reply}          route_config:
            name: local_route
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream, timeout: {route_timeout} }}
          http_filters:
{wasm_filter}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    );
    let tls_filters = if extras.tls {
        format!("      filters:\n{chain_filters}")
    } else {
        String::new()
    };
    format!(
        r#"# Generated by tests/common (api-guard integration-test harness).
{stats_config}admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: api_guard_listener
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {listener} }}
{buffer_limit}{listener_filters}    filter_chains:
{tls_chain}{tls_filters}    - filters:
{chain_filters}  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {upstream} }}
{extra_clusters}{extra_bootstrap}"#,
        extra_bootstrap = extras.extra_bootstrap_yaml.unwrap_or_default(),
        stats_config = stats_config_yaml(),
        admin = p.admin_port,
        listener = p.listener_port,
        upstream = p.upstream_port,
    )
}
