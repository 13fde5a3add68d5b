//! `api-guard check`: finds api-guard's plugin configuration in a file and validates it with
//! `api_guard::config::load`, the very function the filter runs in `on_configure`.
//!
//! Accepted inputs:
//! - a plugin configuration (JSON), passed to `load` byte for byte;
//! - an Envoy configuration (YAML or JSON, several YAML documents allowed): every wasm
//!   `PluginConfig` (the object holding `vm_config`) that names api-guard in its `name`,
//!   `root_id`, `vm_id` or module file/URL; its `configuration` must be a
//!   `google.protobuf.StringValue`, whose `value` is what Envoy hands the filter;
//! - an Istio `WasmPlugin` whose name or module URL names api-guard: its `pluginConfig`, which
//!   Istio hands the filter as JSON.

use serde::Deserialize;
use serde_json::{Map, Value};

const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// What `check` found: how many api-guard configurations, and every error (one line each).
pub struct Report {
    pub configurations: usize,
    pub findings: Vec<String>,
}

/// An api-guard configuration found inside a larger file.
struct Embedded {
    /// Where it sits, as a path into the file (`static_resources.listeners[0]...config`).
    location: String,
    /// The bytes the filter would receive, or why there are none.
    content: Result<Vec<u8>, String>,
}

#[derive(Default)]
struct Search {
    found: Vec<Embedded>,
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
            search.walk(&document, "");
            if !search.found.is_empty() {
                return check_embedded(search.found);
            }
        }
        return Report {
            configurations: 1,
            findings: load_errors(bytes),
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
        search.walk(document, &root);
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
    }
}

fn load_errors(bytes: &[u8]) -> Vec<String> {
    match api_guard::config::load(bytes) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn check_embedded(found: Vec<Embedded>) -> Report {
    let mut findings = Vec::new();
    for embedded in &found {
        match &embedded.content {
            Err(message) => findings.push(format!("[{}] {message}", embedded.location)),
            Ok(bytes) => findings.extend(
                load_errors(bytes)
                    .into_iter()
                    .map(|error| format!("[{}] {error}", embedded.location)),
            ),
        }
    }
    Report {
        configurations: found.len(),
        findings,
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

impl Search {
    fn walk(&mut self, value: &Value, path: &str) {
        match value {
            Value::Object(object) => {
                if object.contains_key("vm_config") {
                    self.plugin_config(value, object, path);
                } else if object.get("kind").and_then(Value::as_str) == Some("WasmPlugin") {
                    self.istio_wasm_plugin(value, path);
                } else {
                    for (key, child) in object {
                        self.walk(child, &join(path, key));
                    }
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    self.walk(child, &format!("{path}[{i}]"));
                }
            }
            _ => {}
        }
    }

    /// An Envoy `envoy.extensions.wasm.v3.PluginConfig`.
    fn plugin_config(&mut self, value: &Value, object: &Map<String, Value>, path: &str) {
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
        self.found.push(Embedded { location, content });
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
        self.found.push(Embedded { location, content });
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
    fn yaml_syntax_errors_are_findings() {
        let report = check(b"static_resources:\n  - a\n b: [\n");
        assert_eq!(report.findings.len(), 1);
        assert!(report.findings[0].starts_with("the file is not valid YAML"));
    }
}
