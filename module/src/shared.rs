//! What the workers share and what each keeps.
//!
//! Envoy creates one filter config on its main thread and hands the same pointer to every
//! stream on every worker, so [`ModuleConfig`] is read-only after creation (`Sync`). The
//! counters of the rate limiter and the webhook replay tables are one [`ProcessStore`] for the
//! whole process, as proxy-wasm shared data is one map for every worker: a limit is exact
//! across workers, and survives a configuration update. What a worker keeps for itself (the
//! token cache, the event budget, the held-body budget) is thread-local, found by the config's
//! id.

use crate::abi::ConfigHandle;
use crate::crypto::NativeVerifier;
use crate::jwks::RemoteJwks;
use api_guard_core::authn::jwt::cache::TokenCache;
use api_guard_core::authn::jwt::verifier::SignatureVerifier;
use api_guard_core::body::held::HeldBudget;
use api_guard_core::config;
use api_guard_core::limits::rate_limit::{shared_seed, Limiter};
use api_guard_core::pipeline::policy::Policy;
use api_guard_core::support::events::EventBudget;
use api_guard_core::support::logging;
use api_guard_core::support::metrics::{MetricId, MetricKind, MetricsPlan, CONFIG_REFUSED_ID};
use api_guard_core::support::process_store::ProcessStore;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

/// Verified tokens kept per worker (as in the wasm filter).
const TOKEN_CACHE_SLOTS: usize = 4096;

/// The process's counter table. Every limit's table is bounded by its `max_tracked_keys`
/// (at most 1,000,000 each), the replay tables by their slots; this bounds the sum.
const MAX_STORE_KEYS: usize = 4 << 20;

pub fn store() -> &'static ProcessStore {
    static STORE: OnceLock<ProcessStore> = OnceLock::new();
    STORE.get_or_init(|| ProcessStore::new(MAX_STORE_KEYS))
}

/// The host's ids of the policy's metrics (`None`: Envoy refused to define it).
pub struct Metrics {
    ids: Vec<Option<usize>>,
}

impl Metrics {
    fn define(handle: &ConfigHandle, plan: &MetricsPlan) -> Metrics {
        let ids: Vec<Option<usize>> = plan
            .definitions()
            .iter()
            .map(|d| handle.define_metric(&d.name, matches!(d.kind, MetricKind::Gauge)))
            .collect();
        let refused = ids.iter().filter(|id| id.is_none()).count();
        if refused > 0 {
            log::warn!("api-guard: the host refused to define {refused} metrics");
        }
        Metrics { ids }
    }

    pub fn host_id(&self, id: MetricId) -> Option<usize> {
        self.ids.get(usize::try_from(id.0).ok()?).copied().flatten()
    }
}

pub struct ModuleConfig {
    /// Which worker state belongs to this config.
    pub id: u64,
    /// `None`: the configuration was refused; every request fails closed.
    pub policy: Option<Policy>,
    pub verifier: NativeVerifier,
    /// `None` when no seed could be agreed: rate-limited routes then fail closed.
    pub limiter: Option<Limiter>,
    pub metrics: Metrics,
    /// Remote key sets (`None` without a remote provider).
    pub jwks: Option<RemoteJwks>,
}

impl ModuleConfig {
    /// Reads the plugin JSON. A refused configuration still makes a config (every request then
    /// answers 503), as the wasm filter stays loaded without a policy: the same behaviour
    /// under static and dynamic configuration.
    pub fn load(handle: &ConfigHandle, bytes: &[u8]) -> ModuleConfig {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let refused = |metrics: Metrics| {
            if let Some(gauge) = metrics.host_id(CONFIG_REFUSED_ID) {
                handle.set_gauge(gauge, 1);
            }
            ModuleConfig {
                id,
                policy: None,
                verifier: NativeVerifier,
                limiter: None,
                metrics,
                jwks: None,
            }
        };
        let policy = match config::load(bytes) {
            Ok(policy) => policy,
            Err(errors) => {
                logging::log_refusal(store(), &errors);
                return refused(Metrics::define(handle, &MetricsPlan::fixed()));
            }
        };
        logging::log_warnings(store(), &policy);
        let limiter = if policy.rate_limits.is_empty() {
            None
        } else {
            let mut fresh = [0u8; 32];
            let seeded = getrandom::getrandom(&mut fresh).map_err(|_| ());
            match seeded.and_then(|()| shared_seed(store(), fresh).map_err(|_| ())) {
                Ok(seed) => Some(Limiter::new(seed)),
                Err(()) => {
                    log::error!("api-guard: no rate-limit seed; rate-limited routes answer 503");
                    None
                }
            }
        };
        let verifier = NativeVerifier;
        logging::log_configured(store(), &policy, verifier.name());
        let metrics = Metrics::define(handle, &policy.metrics);
        if let Some(gauge) = metrics.host_id(CONFIG_REFUSED_ID) {
            handle.set_gauge(gauge, 0);
        }
        let jwks = RemoteJwks::new(&policy, handle);
        ModuleConfig {
            id,
            policy: Some(policy),
            verifier,
            limiter,
            metrics,
            jwks,
        }
    }
}

/// What one worker keeps for one config.
pub struct WorkerState {
    pub token_cache: RefCell<TokenCache>,
    pub event_budget: RefCell<EventBudget>,
    pub held_budget: Rc<HeldBudget>,
}

/// One worker state, the config it belongs to (to prune states of configs gone) and its id.
type WorkerEntry = (u64, Weak<ModuleConfig>, Rc<WorkerState>);

thread_local! {
    /// This worker's states, by config id (a config updated or removed leaves its entry until
    /// the next miss prunes it).
    static WORKER_STATES: RefCell<Vec<WorkerEntry>> =
        const { RefCell::new(Vec::new()) };
}

/// This worker's state for `config`.
pub fn worker_state(config: &Arc<ModuleConfig>) -> Rc<WorkerState> {
    WORKER_STATES.with(|states| {
        let mut states = states.borrow_mut();
        if let Some((_, _, state)) = states.iter().find(|(id, _, _)| *id == config.id) {
            return Rc::clone(state);
        }
        states.retain(|(_, weak, _)| weak.strong_count() > 0);
        let per_second = config
            .policy
            .as_ref()
            .map_or(0, |policy| policy.events.max_per_second);
        let state = Rc::new(WorkerState {
            token_cache: RefCell::new(TokenCache::new(TOKEN_CACHE_SLOTS)),
            event_budget: RefCell::new(EventBudget::new(per_second)),
            held_budget: Rc::new(HeldBudget::default()),
        });
        states.push((config.id, Arc::downgrade(config), Rc::clone(&state)));
        state
    })
}

/// Envoy hands one config to every worker thread: it must be shareable (checked at compile
/// time, since the pointer Envoy carries hides it from the compiler).
const _: () = {
    const fn shared_by_workers<T: Send + Sync>() {}
    shared_by_workers::<ModuleConfig>();
    shared_by_workers::<api_guard_core::support::process_store::ProcessStore>();
};
