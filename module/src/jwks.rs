//! Remote JWKS in the dynamic module: one driver for the whole process, on Envoy's main thread.
//!
//! The core's `jwks_refresh::JwksRefresh` decides, exactly as in the wasm filter (reload,
//! refetch requests, the lease, which waiting requests to decide again, the tick period). The
//! wasm filter runs one per worker VM, coordinated through shared data; here one instance
//! serves every worker: it is ticked by a timer thread that commits the config's scheduler (so
//! the tick runs on the main thread), it fetches with config-level HTTP callouts (main thread),
//! and after each tick or answer it publishes a snapshot of its key sets that the workers read
//! per request (a read lock and an `Arc` clone).
//!
//! A request that waits for keys registers a [`Waiter`] holding its stream's scheduler; when its
//! keys settle the main thread commits the scheduler and the stream's worker decides the
//! request again (`on_http_filter_scheduled`). The scheduler is deleted when the stream is
//! destroyed, under the waiter's lock, so the main thread never commits a deleted one.

use crate::abi::{CalloutAnswer, ConfigHandle, ConfigScheduler, StreamScheduler};
use crate::shared::{self, Metrics};
use api_guard_core::authn::jwks_refresh::{self, Command, JwksRefresh};
use api_guard_core::authn::jwt::remote::{HttpReply, RemoteKeys, WaitTicket};
use api_guard_core::pipeline::policy::Policy;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// What a copied callout body may hold (a larger key set is refused unread).
pub const COPY_LIMIT: usize = api_guard_core::authn::jwt::remote::MAX_JWKS_BYTES;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock left the value as consistent as any state between two
    // of its calls; the driver goes on rather than stop refreshing keys.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request waiting for keys: its stream's scheduler, until the stream is destroyed.
pub struct WaiterCell {
    scheduler: Mutex<Option<StreamScheduler>>,
}

pub type Waiter = Arc<WaiterCell>;

impl WaiterCell {
    pub fn new(scheduler: StreamScheduler) -> Waiter {
        Arc::new(WaiterCell {
            scheduler: Mutex::new(Some(scheduler)),
        })
    }

    fn alive(&self) -> bool {
        lock(&self.scheduler).is_some()
    }

    /// Wakes the stream's worker (nothing if the stream is gone).
    fn wake(&self) {
        if let Some(scheduler) = lock(&self.scheduler).as_ref() {
            scheduler.commit(0);
        }
    }

    /// The stream is destroyed: no wake after this.
    pub fn close(&self) {
        if let Some(scheduler) = lock(&self.scheduler).take() {
            scheduler.delete();
        }
    }
}

/// The timer thread: commits the config's scheduler every `period_ms` until stopped.
struct Timer {
    scheduler: Mutex<Option<ConfigScheduler>>,
    period_ms: AtomicU64,
    stopped: AtomicBool,
}

impl Timer {
    fn start(scheduler: ConfigScheduler, period_ms: u64) -> Arc<Timer> {
        let timer = Arc::new(Timer {
            scheduler: Mutex::new(Some(scheduler)),
            period_ms: AtomicU64::new(period_ms),
            stopped: AtomicBool::new(false),
        });
        let ticking = Arc::clone(&timer);
        let spawned = std::thread::Builder::new()
            .name("api-guard-jwks".into())
            .spawn(move || {
                let mut last = Instant::now();
                // Short sleeps, so that a period made shorter (requests now wait) takes effect
                // at once.
                while !ticking.stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    let period = Duration::from_millis(ticking.period_ms.load(Ordering::Relaxed));
                    if last.elapsed() >= period {
                        last = Instant::now();
                        if let Some(scheduler) = lock(&ticking.scheduler).as_ref() {
                            scheduler.commit(0);
                        }
                    }
                }
            });
        if spawned.is_err() {
            log::error!("api-guard: cannot start the key set timer; remote keys are not refreshed");
        }
        timer
    }

    /// On the main thread, from `config_destroy`.
    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        if let Some(scheduler) = lock(&self.scheduler).take() {
            scheduler.delete();
        }
    }
}

/// The process's remote key sets for one config.
pub struct RemoteJwks {
    driver: Mutex<JwksRefresh<Waiter>>,
    snapshot: RwLock<Arc<RemoteKeys>>,
    timer: Option<Arc<Timer>>,
    /// Callout ids Envoy gave the fetches in flight, and the driver's token for each.
    callouts: Mutex<Vec<(u64, u32)>>,
    next_token: AtomicU64,
}

impl RemoteJwks {
    /// `None` without a remote provider. Called in `config_new` (main thread).
    pub fn new(policy: &Policy, handle: &ConfigHandle) -> Option<RemoteJwks> {
        let mut random = [0u8; 8];
        let lease_owner = getrandom::getrandom(&mut random)
            .map(|()| u64::from_le_bytes(random))
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        let driver: JwksRefresh<Waiter> = JwksRefresh::new(policy, lease_owner);
        let period = driver.start_period_ms()?;
        let timer = match handle.new_scheduler() {
            Some(scheduler) => Some(Timer::start(scheduler, period)),
            None => {
                log::error!("api-guard: Envoy gave no scheduler; remote keys are not fetched");
                None
            }
        };
        Some(RemoteJwks {
            driver: Mutex::new(driver),
            snapshot: RwLock::new(Arc::new(RemoteKeys::default())),
            timer,
            callouts: Mutex::new(Vec::new()),
            next_token: AtomicU64::new(1),
        })
    }

    /// The key sets as of the last tick or answer, for a decision on a worker.
    pub fn keys(&self) -> Arc<RemoteKeys> {
        match self.snapshot.read() {
            Ok(keys) => Arc::clone(&keys),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Holds a request until its keys settle; `false` when too many wait (decide it now).
    pub fn register(&self, waiter: Waiter, ticket: WaitTicket) -> bool {
        let registered = lock(&self.driver).register(waiter, ticket).is_ok();
        if registered {
            self.adjust_period();
        }
        registered
    }

    pub fn stop(&self) {
        if let Some(timer) = &self.timer {
            timer.stop();
        }
    }

    fn adjust_period(&self) {
        if let Some(timer) = &self.timer {
            let period = lock(&self.driver).tick_period_ms();
            timer.period_ms.store(period, Ordering::Relaxed);
        }
    }

    /// After a tick or an answer: the workers' snapshot, the metrics, the timer's period.
    fn publish(&self, driver: &mut JwksRefresh<Waiter>, handle: &ConfigHandle, metrics: &Metrics) {
        let keys = Arc::new(driver.keys().clone());
        match self.snapshot.write() {
            Ok(mut snapshot) => *snapshot = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
        for id in driver.take_counts() {
            if let Some(host_id) = metrics.host_id(id) {
                handle.increment_counter(host_id);
            }
        }
        for &(id, value) in driver.gauges() {
            if let Some(host_id) = metrics.host_id(id) {
                handle.set_gauge(host_id, value);
            }
        }
        if let Some(timer) = &self.timer {
            timer
                .period_ms
                .store(driver.tick_period_ms(), Ordering::Relaxed);
        }
    }

    /// The timer fired (main thread): fetch what is due, wake the requests whose keys settled.
    pub fn tick(&self, policy: &Policy, handle: &ConfigHandle, metrics: &Metrics, now_ms: u64) {
        let mut driver = lock(&self.driver);
        let commands = driver.tick(policy, shared::store(), now_ms, |w| w.alive());
        let mut ready = Vec::new();
        for command in commands {
            match command {
                Command::Fetch { provider } => {
                    self.fetch(policy, handle, &mut driver, provider, now_ms)
                }
                Command::Resume(waiter) => ready.push(waiter),
            }
        }
        self.publish(&mut driver, handle, metrics);
        drop(driver);
        for waiter in ready {
            waiter.wake();
        }
    }

    fn fetch(
        &self,
        policy: &Policy,
        handle: &ConfigHandle,
        driver: &mut JwksRefresh<Waiter>,
        index: usize,
        now_ms: u64,
    ) {
        let Some(source) = jwks_refresh::remote_source(policy, index) else {
            return;
        };
        // Envoy 1.40's callout takes `:authority` (proxy-wasm's name, the core's) as the
        // request's host; adding `host` as well sends two (checked: `idp.test,idp.test`).
        let headers = source.request_headers();
        match handle.http_callout(&source.cluster, &headers, source.timeout_ms) {
            Ok(callout_id) => {
                let token = u32::try_from(self.next_token.fetch_add(1, Ordering::Relaxed))
                    .unwrap_or(u32::MAX);
                lock(&self.callouts).push((callout_id, token));
                driver.fetch_sent(index, token, now_ms);
            }
            Err(result) => driver.fetch_not_sent(
                policy,
                shared::store(),
                index,
                now_ms,
                &format!("http callout result {result}"),
            ),
        }
    }

    /// A fetch's answer (main thread).
    pub fn answered(
        &self,
        policy: &Policy,
        handle: &ConfigHandle,
        metrics: &Metrics,
        callout_id: u64,
        answer: &CalloutAnswer,
        now_ms: Option<u64>,
    ) {
        let token = {
            let mut callouts = lock(&self.callouts);
            let Some(position) = callouts.iter().position(|(id, _)| *id == callout_id) else {
                return;
            };
            callouts.swap_remove(position).1
        };
        let mut driver = lock(&self.driver);
        let Some(fetch) = driver.take_fetch(token) else {
            return;
        };
        let status = (answer.result == 0)
            .then(|| answer.headers.get(":status"))
            .flatten()
            .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok());
        let reply = match status {
            Some(status) => HttpReply::Response {
                status,
                body: &answer.body,
                body_size: answer.body_size,
            },
            None => HttpReply::Failed,
        };
        let ready =
            driver.fetch_answered(policy, shared::store(), fetch, now_ms, reply, |w| w.alive());
        self.publish(&mut driver, handle, metrics);
        drop(driver);
        for waiter in ready {
            waiter.wake();
        }
    }
}
