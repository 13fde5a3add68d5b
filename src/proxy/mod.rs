//! The adapter between Envoy (proxy-wasm ABI) and the core. It translates host data into core
//! types and core verdicts into hostcalls; it makes no decisions.
//!
//! Only the `Result`-returning `proxy_wasm::hostcalls` are used: the SDK's convenience methods
//! unwrap host errors, and under `panic = "abort"` a panic kills the worker's VM for every
//! request it carries. A host error on the request path becomes a fail-closed 503 instead.

use crate::config;
use crate::jwt::cache::TokenCache;
use crate::jwt::verifier::{
    ForeignFunctions, HostCallFailed, HostVerifier, RustVerifier, SignatureVerifier,
};
use crate::policy::{Policy, RequestEnv, Verdict};
use crate::reply::{ErrorCode, LocalReply};
use crate::request::RequestHead;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

/// Verified tokens kept per worker. Direct-mapped, so this is also the memory bound.
const TOKEN_CACHE_SLOTS: usize = 4096;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ApiGuardRoot::default()) });
}}

fn log(level: LogLevel, message: &str) {
    // Nothing sensible is left to do when the host refuses a log line.
    let _ = hostcalls::log(level, message);
}

/// Logs a message once for all the VMs of this plugin (Envoy runs one per worker, plus one on
/// the main thread, and each runs `on_configure`). Shared data has no "insert if absent"; a CAS
/// value the host never hands out (it issues them from a counter starting at 1) turns `set`
/// into one: it succeeds only while the key does not exist.
fn log_once(level: LogLevel, message: &str) {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(message.as_bytes());
    let key: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let key = format!("api-guard.logged.{key}");
    if hostcalls::set_shared_data(&key, Some(b"1"), Some(u32::MAX)).is_ok() {
        log(level, message);
    }
}

struct EnvoyForeignFunctions;

impl ForeignFunctions for EnvoyForeignFunctions {
    fn call(&self, function: &str, arguments: &[u8]) -> Result<Vec<u8>, HostCallFailed> {
        match hostcalls::call_foreign_function(function, Some(arguments)) {
            Ok(reply) => Ok(reply.unwrap_or_default()),
            Err(_) => Err(HostCallFailed),
        }
    }
}

/// Per-VM state shared by the root context and the request contexts of one worker.
struct Shared {
    policy: Policy,
    verifier: Box<dyn SignatureVerifier>,
    token_cache: RefCell<TokenCache>,
}

#[derive(Default)]
struct ApiGuardRoot {
    shared: Option<Rc<Shared>>,
}

impl Context for ApiGuardRoot {}

impl RootContext for ApiGuardRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        self.shared = None;
        let bytes = match hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        ) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                log(
                    LogLevel::Error,
                    &format!("api-guard: cannot read the plugin configuration: {status:?}"),
                );
                return false;
            }
        };
        let policy = match config::load(&bytes) {
            Ok(policy) => policy,
            Err(errors) => {
                let mut message = format!(
                    "api-guard: invalid configuration, refusing to start; every request is answered 503 until it is fixed ({} error(s)):",
                    errors.len()
                );
                for error in &errors {
                    message.push_str("\n  ");
                    message.push_str(&error.to_string());
                }
                log_once(LogLevel::Error, &message);
                // Returning false would make Envoy refuse a static bootstrap and exit, while under
                // dynamic configuration (ECDS, an Istio WasmPlugin) it behaves otherwise. Staying
                // loaded without a policy fails closed the same way everywhere: every request is
                // answered 503 and none reaches the upstream.
                return true;
            }
        };
        let verifier: Box<dyn SignatureVerifier> =
            if HostVerifier::self_test(&EnvoyForeignFunctions) {
                Box::new(HostVerifier {
                    host: EnvoyForeignFunctions,
                })
            } else {
                Box::new(RustVerifier)
            };
        log_once(
            LogLevel::Info,
            &format!(
                "api-guard: configured {} route(s); signature verification: {}",
                policy.routes.len(),
                verifier.name()
            ),
        );
        self.shared = Some(Rc::new(Shared {
            policy,
            verifier,
            token_cache: RefCell::new(TokenCache::new(TOKEN_CACHE_SLOTS)),
        }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ApiGuardHttp {
            shared: self.shared.clone(),
            request_id: String::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct ApiGuardHttp {
    /// `None` when the configuration was refused: every request then fails closed.
    shared: Option<Rc<Shared>>,
    request_id: String,
}

impl Context for ApiGuardHttp {}

impl ApiGuardHttp {
    fn send(&self, reply: &LocalReply) -> Action {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        if hostcalls::send_http_response(
            u32::from(reply.status),
            headers,
            Some(reply.body.as_bytes()),
        )
        .is_err()
        {
            // Cannot answer: reset the stream rather than let the request through.
            let _ = hostcalls::reset_http_request();
        }
        Action::Pause
    }

    fn fail_closed(&self, why: &str) -> Action {
        log(
            LogLevel::Error,
            &format!("api-guard: failing closed: {why}"),
        );
        self.send(&LocalReply::new(
            ErrorCode::ServiceUnavailable,
            &self.request_id,
        ))
    }

    fn apply_forward(
        &self,
        forward: &crate::policy::Forward,
    ) -> Result<(), proxy_wasm::types::Status> {
        for name in &forward.remove_headers {
            hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None)?;
        }
        for (name, value) in &forward.set_headers {
            hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))?;
        }
        if let Some(path) = &forward.set_path {
            hostcalls::set_map_value(MapType::HttpRequestHeaders, ":path", Some(path))?;
        }
        Ok(())
    }
}

impl HttpContext for ApiGuardHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            if let Ok(Some(request_id)) =
                hostcalls::get_map_value(MapType::HttpRequestHeaders, "x-request-id")
            {
                self.request_id = request_id;
            }
            return self.fail_closed("the plugin configuration was refused");
        };
        let headers = match hostcalls::get_map(MapType::HttpRequestHeaders) {
            Ok(headers) => headers,
            Err(status) => {
                return self.fail_closed(&format!("cannot read request headers: {status:?}"))
            }
        };
        let source = hostcalls::get_property(vec!["source", "address"])
            .ok()
            .flatten();
        let source = source.as_deref().and_then(|b| std::str::from_utf8(b).ok());
        let head = RequestHead::from_host(headers, source);
        self.request_id.clone_from(&head.request_id);
        let now = match hostcalls::get_current_time() {
            Ok(time) => time
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            Err(status) => return self.fail_closed(&format!("cannot read the clock: {status:?}")),
        };
        let decision = {
            let Ok(mut token_cache) = shared.token_cache.try_borrow_mut() else {
                return self.fail_closed("token cache busy");
            };
            let mut env = RequestEnv {
                now,
                verifier: shared.verifier.as_ref(),
                token_cache: &mut token_cache,
            };
            shared.policy.check_request(&head, &mut env)
        };
        if let Some(event) = &decision.event {
            log(LogLevel::Warn, &event.to_json());
        }
        match &decision.verdict {
            Verdict::Allow(forward) => match self.apply_forward(forward) {
                Ok(()) => Action::Continue,
                Err(status) => {
                    self.fail_closed(&format!("cannot rewrite request headers: {status:?}"))
                }
            },
            Verdict::Deny(reply) => self.send(reply),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(shared) = &self.shared {
            for (name, value) in shared.policy.response_headers(&self.request_id) {
                let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(&value));
            }
        } else if !self.request_id.is_empty() {
            let _ = hostcalls::set_map_value(
                MapType::HttpResponseHeaders,
                "x-request-id",
                Some(&self.request_id),
            );
        }
        Action::Continue
    }
}
