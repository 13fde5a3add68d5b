//! Remote JWKS, the part a host drives ([`JwksRefresh`]): what its timer and its fetch answers
//! lead to (reload, refetch, claim the lease and fetch, decide waiting requests again, the tick
//! period), and the log lines about them. The adapter only executes the [`Command`]s. The
//! cross-worker protocol itself (the shared state record, the lease, publishing) is
//! `jwt::remote`.

use crate::authn::jwt::remote::{
    self, Claim, FetchReport, FetchState, HttpReply, JwksEvent, RemoteJwks, RemoteKeys, WaitTicket,
    MAX_JWKS_BYTES,
};
use crate::authn::jwt::Provider;
use crate::pipeline::policy::Policy;
use crate::support::metrics::MetricId;
use crate::support::shared_store::CounterStore;

/// The log level of a key-set event: `warn` for a failure, `info` for new content, `debug` for
/// a refresh that found the same keys.
pub fn event_level(event: &JwksEvent<'_>) -> log::Level {
    match (event.is_failure(), event.event) {
        (true, _) => log::Level::Warn,
        (false, "jwks_updated") => log::Level::Info,
        _ => log::Level::Debug,
    }
}

/// Logs what came of a fetch for `provider` (one JSON line; nothing when the lease was lost),
/// `serving_version` being the version this VM serves.
pub fn log_fetch_report(provider: &str, serving_version: u64, report: &FetchReport) {
    if let Some(event) = report.event(provider, serving_version) {
        log::log!(event_level(&event), "{}", event.to_json());
    }
}

/// While requests wait or a fetch is in flight: how soon a waiting request sees new keys.
pub const FAST_TICK_MS: u64 = 100;
/// Otherwise: how soon a worker picks up a set another worker published, and the resolution
/// of the refresh schedule.
pub const IDLE_TICK_MS: u64 = 1_000;
/// Requests one worker holds for keys at most; beyond, requests are decided at once.
pub const MAX_WAITING_REQUESTS: usize = 10_000;

/// What the host does for the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<H> {
    /// Send the fetch of `provider`'s key set (`RemoteJwks::request_headers`, its cluster and
    /// timeout), then say how it went: [`JwksRefresh::fetch_sent`] or
    /// [`JwksRefresh::fetch_not_sent`].
    Fetch { provider: usize },
    /// Decide this waiting request again: its keys have settled.
    Resume(H),
}

/// A request waiting for keys: the host's handle for it, and its ticket.
struct Waiter<H> {
    handle: H,
    ticket: WaitTicket,
}

struct InFlightFetch {
    token: u32,
    provider: usize,
    started_at_ms: u64,
}

/// A fetch whose answer came, taken out of the in-flight table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnsweredFetch {
    pub provider: usize,
    pub started_at_ms: u64,
}

/// One VM's part of remote JWKS, driven by the host's timer and its fetch answers: this VM's key
/// sets, its fetches in flight, the requests waiting for keys (`H`: the host's handle for one).
/// Every decision is here: when to reload a published set, when to ask for a refetch, when to
/// claim the lease and fetch, which waiting requests to decide again, how often to tick. The
/// cross-worker protocol underneath is `jwt::remote`.
pub struct JwksRefresh<H> {
    /// Indexes of the providers with a remote source.
    providers: Vec<usize>,
    keys: RemoteKeys,
    waiting: Vec<Waiter<H>>,
    fetches: Vec<InFlightFetch>,
    /// This VM's name in the fetch lease.
    lease_owner: u64,
    /// Fetch results to count, until the host takes them ([`JwksRefresh::take_counts`]).
    counts: Vec<MetricId>,
    /// The gauges' values as of the last tick or answer.
    gauges: Vec<(MetricId, u64)>,
    /// The first tick: the age of a set never fetched counts from here.
    first_tick_ms: Option<u64>,
}

fn provider(policy: &Policy, index: usize) -> Option<(&Provider, &RemoteJwks)> {
    let provider = policy.jwt.as_ref()?.providers.get(index)?;
    Some((provider, provider.remote.as_ref()?))
}

/// Where provider `index`'s key set is fetched from (`None`: no such provider, or its keys are
/// inline): what an adapter sends when [`JwksRefresh`] asks it to fetch.
pub fn remote_source(policy: &Policy, index: usize) -> Option<&RemoteJwks> {
    provider(policy, index).map(|(_, source)| source)
}

/// Whether a fetch answer's body of `body_size` bytes is worth copying into the VM (a larger one
/// is refused unread).
pub fn reads_body(body_size: usize) -> bool {
    body_size <= MAX_JWKS_BYTES
}

impl<H> JwksRefresh<H> {
    pub fn new(policy: &Policy, lease_owner: u64) -> JwksRefresh<H> {
        let providers = policy
            .jwt
            .as_ref()
            .map(|jwt| {
                jwt.providers
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.remote.is_some())
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default();
        JwksRefresh {
            providers,
            keys: RemoteKeys::default(),
            waiting: Vec::new(),
            fetches: Vec::new(),
            lease_owner,
            counts: Vec::new(),
            gauges: Vec::new(),
            first_tick_ms: None,
        }
    }

    /// The timer period to start with: none without a remote provider. Nothing is fetched
    /// before the first tick.
    pub fn start_period_ms(&self) -> Option<u64> {
        (!self.providers.is_empty()).then_some(FAST_TICK_MS)
    }

    /// The key sets, for a decision.
    pub fn keys(&self) -> &RemoteKeys {
        &self.keys
    }

    pub fn lease_owner(&self) -> u64 {
        self.lease_owner
    }

    /// The timer period wanted now: fast while requests wait, a fetch is in flight or a provider
    /// has no set yet; idle otherwise.
    pub fn tick_period_ms(&self) -> u64 {
        let busy = !self.waiting.is_empty()
            || !self.fetches.is_empty()
            || self.providers.iter().any(|p| !self.keys.has_set(*p));
        if busy {
            FAST_TICK_MS
        } else {
            IDLE_TICK_MS
        }
    }

    /// Holds a request until its keys settle; gives the handle back when this worker already
    /// holds [`MAX_WAITING_REQUESTS`] (decide it now). The timer then wants [`FAST_TICK_MS`].
    pub fn register(&mut self, handle: H, ticket: WaitTicket) -> Result<(), H> {
        if self.waiting.len() >= MAX_WAITING_REQUESTS {
            return Err(handle);
        }
        self.waiting.push(Waiter { handle, ticket });
        Ok(())
    }

    /// The host's timer at `now_ms`: per remote provider, reload a newer published set, ask for
    /// the refetch that waiting requests need, claim the fetch when it is due (a
    /// [`Command::Fetch`]); then the waiting requests whose keys settled ([`Command::Resume`];
    /// `alive` says whether a request still exists: one that ended is dropped).
    pub fn tick(
        &mut self,
        policy: &Policy,
        store: &dyn CounterStore,
        now_ms: u64,
        alive: impl Fn(&H) -> bool,
    ) -> Vec<Command<H>> {
        let mut commands = Vec::new();
        if self.providers.is_empty() {
            return commands;
        }
        let states = self.read_states(policy, store);
        for (index, state) in &states {
            let index = *index;
            self.reload(
                policy,
                store,
                index,
                state.as_ref().map(|s| s.published_version),
            );
            let Some((_, source)) = provider(policy, index) else {
                continue;
            };
            if self.waits_for_refetch(index) {
                // At most one per min_refetch_seconds across all workers; otherwise the requests
                // wait for the fetch in flight, or are decided at their deadline.
                let _ = remote::request_refetch(store, source, now_ms);
            }
            if !self.fetch_in_flight(index)
                && remote::try_claim(store, source, self.lease_owner, now_ms) == Ok(Claim::Claimed)
            {
                commands.push(Command::Fetch { provider: index });
            }
        }
        self.first_tick_ms.get_or_insert(now_ms);
        self.record_gauges(policy, &states, now_ms);
        commands.extend(self.settle(now_ms, &states, alive).map(Command::Resume));
        commands
    }

    /// The fetch results counted since the last call (ids of [`Policy::metrics`]).
    pub fn take_counts(&mut self) -> Vec<MetricId> {
        std::mem::take(&mut self.counts)
    }

    /// Each remote provider's gauges as of the last tick: keys this VM verifies with, and
    /// seconds since the set was last fetched successfully by any worker (since this VM's first
    /// tick when never).
    pub fn gauges(&self) -> &[(MetricId, u64)] {
        &self.gauges
    }

    fn count_fetch(&mut self, policy: &Policy, provider: usize, report: &FetchReport) {
        if matches!(report.finish, Ok(remote::Finish::LeaseLost)) {
            return;
        }
        if let Some(id) = policy.metrics.jwks_fetch(provider, report.outcome.is_ok()) {
            self.counts.push(id);
        }
    }

    fn record_gauges(
        &mut self,
        policy: &Policy,
        states: &[(usize, Option<FetchState>)],
        now_ms: u64,
    ) {
        self.gauges.clear();
        for (index, state) in states {
            if let Some(id) = policy.metrics.jwks_keys(*index) {
                self.gauges.push((id, self.keys.keys(*index).len() as u64));
            }
            let since = state
                .as_ref()
                .and_then(|s| s.last_success_at_ms)
                .or(self.first_tick_ms)
                .unwrap_or(now_ms);
            if let Some(id) = policy.metrics.jwks_seconds_since_success(*index) {
                self.gauges.push((id, now_ms.saturating_sub(since) / 1000));
            }
        }
    }

    /// The host sent the fetch of `provider` at `now_ms`; its answer will come with `token`.
    pub fn fetch_sent(&mut self, provider: usize, token: u32, now_ms: u64) {
        self.fetches.push(InFlightFetch {
            token,
            provider,
            started_at_ms: now_ms,
        });
    }

    /// The host refused to send the fetch of `provider` (`why`): recorded as a failed attempt,
    /// and logged.
    pub fn fetch_not_sent(
        &mut self,
        policy: &Policy,
        store: &dyn CounterStore,
        index: usize,
        now_ms: u64,
        why: &str,
    ) {
        let Some((provider, source)) = provider(policy, index) else {
            return;
        };
        let report = remote::fail_unsent_fetch(
            store,
            source,
            self.lease_owner,
            now_ms,
            format!(
                "dispatch_http_call refused ({why}): is cluster {:?} defined?",
                source.cluster
            ),
        );
        log_fetch_report(&provider.name, self.keys.version(index), &report);
        self.count_fetch(policy, index, &report);
    }

    /// The answer with `token` came: the fetch it answers, if this VM sent it (`None`: not ours,
    /// or already answered; ignore it).
    pub fn take_fetch(&mut self, token: u32) -> Option<AnsweredFetch> {
        let position = self.fetches.iter().position(|f| f.token == token)?;
        let fetch = self.fetches.swap_remove(position);
        Some(AnsweredFetch {
            provider: fetch.provider,
            started_at_ms: fetch.started_at_ms,
        })
    }

    /// The answer to `fetch` (`now_ms`: `None` when the clock could not be read): publish or
    /// record the failure, log it, bring this VM's keys up to date; returns the waiting requests
    /// to decide again at once (the other workers do on their next tick).
    pub fn fetch_answered(
        &mut self,
        policy: &Policy,
        store: &dyn CounterStore,
        fetch: AnsweredFetch,
        now_ms: Option<u64>,
        reply: HttpReply<'_>,
        alive: impl Fn(&H) -> bool,
    ) -> Vec<H> {
        let Some((provider, source)) = provider(policy, fetch.provider) else {
            return Vec::new();
        };
        let now_ms = now_ms.unwrap_or(fetch.started_at_ms);
        let report = remote::complete_fetch(
            store,
            source,
            &provider.algorithms,
            self.lease_owner,
            now_ms,
            reply,
            now_ms.saturating_sub(fetch.started_at_ms),
        );
        log_fetch_report(&provider.name, self.keys.version(fetch.provider), &report);
        self.count_fetch(policy, fetch.provider, &report);
        let states = self.read_states(policy, store);
        for (index, state) in &states {
            self.reload(
                policy,
                store,
                *index,
                state.as_ref().map(|s| s.published_version),
            );
        }
        self.record_gauges(policy, &states, now_ms);
        self.settle(now_ms, &states, alive).collect()
    }

    fn fetch_in_flight(&self, provider: usize) -> bool {
        self.fetches.iter().any(|fetch| fetch.provider == provider)
    }

    fn waits_for_refetch(&self, provider: usize) -> bool {
        self.waiting
            .iter()
            .any(|w| w.ticket.provider == provider && w.ticket.had_set)
    }

    /// The state record of every remote provider (`None` when unreadable or never written).
    fn read_states(
        &self,
        policy: &Policy,
        store: &dyn CounterStore,
    ) -> Vec<(usize, Option<FetchState>)> {
        self.providers
            .iter()
            .filter_map(|&index| {
                let (_, source) = provider(policy, index)?;
                let state = remote::read_state(store, source)
                    .ok()
                    .and_then(|read| read.state);
                Some((index, state))
            })
            .collect()
    }

    /// Loads a provider's published set when it is newer than the one this VM holds.
    fn reload(
        &mut self,
        policy: &Policy,
        store: &dyn CounterStore,
        index: usize,
        published_version: Option<u64>,
    ) {
        let Some((provider, source)) = provider(policy, index) else {
            return;
        };
        let stale = !self.keys.has_set(index)
            || published_version.is_some_and(|published| published > self.keys.version(index));
        if !stale {
            return;
        }
        if let Ok(Some(version)) =
            remote::reload(store, source, &provider.algorithms, &mut self.keys, index)
        {
            log::debug!(
                "api-guard: provider {}: key set version {version} loaded",
                provider.name
            );
        }
    }

    /// Takes out the waiting requests whose keys settled (new set, refetch done, deadline), and
    /// drops the ones that ended.
    fn settle(
        &mut self,
        now_ms: u64,
        states: &[(usize, Option<FetchState>)],
        alive: impl Fn(&H) -> bool,
    ) -> impl Iterator<Item = H> {
        let mut ready = Vec::new();
        let mut still_waiting = Vec::with_capacity(self.waiting.len());
        for waiter in self.waiting.drain(..) {
            if !alive(&waiter.handle) {
                continue; // the request ended while it waited
            }
            let state = states
                .iter()
                .find(|(index, _)| *index == waiter.ticket.provider)
                .and_then(|(_, state)| state.as_ref());
            let version = self.keys.version(waiter.ticket.provider);
            if waiter.ticket.settled(version, state, now_ms) {
                ready.push(waiter.handle);
            } else {
                still_waiting.push(waiter);
            }
        }
        self.waiting = still_waiting;
        ready.into_iter()
    }
}
