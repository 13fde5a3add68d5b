//! The root context's one timer, shared by the remote JWKS driver and the body-wait table.
//!
//! Proxy-wasm gives a root context a single tick period. Each user says which period it wants
//! (0: none); the timer runs at the shortest wanted period, and a user whose own period has
//! not elapsed yet is skipped on a tick, so a user that wants frequent ticks does not make the
//! other run more often than it asked.
//!
//! `set_tick_period` re-arms the timer, so the period is set only when the shortest wanted one
//! changes: a busy worker that set it on every request would keep postponing its own tick.

use crate::host;
use std::cell::Cell;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TickUser {
    Jwks = 0,
    BodyWait = 1,
}

const USERS: usize = 2;

#[derive(Default)]
pub(super) struct Ticker {
    /// The period last set on the host (0: none).
    period_ms: Cell<u64>,
    wanted_ms: [Cell<u64>; USERS],
    last_run_ms: [Cell<u64>; USERS],
}

impl Ticker {
    /// `user` wants a tick every `period_ms` (0: no ticks).
    pub(super) fn want(&self, user: TickUser, period_ms: u64) {
        if let Some(wanted) = self.wanted_ms.get(user as usize) {
            wanted.set(period_ms);
        }
        let shortest = self
            .wanted_ms
            .iter()
            .map(Cell::get)
            .filter(|&ms| ms > 0)
            .min()
            .unwrap_or(0);
        if shortest != self.period_ms.get() && host::set_tick_period_ms(shortest).is_ok() {
            self.period_ms.set(shortest);
        }
    }

    /// Whether `user`'s own period has elapsed at `now_ms` (a tick early by less than half the
    /// timer's period counts as on time); if so, its next period starts now.
    pub(super) fn due(&self, user: TickUser, now_ms: u64) -> bool {
        let (Some(wanted), Some(last_run)) = (
            self.wanted_ms.get(user as usize),
            self.last_run_ms.get(user as usize),
        ) else {
            return false;
        };
        let wanted = wanted.get();
        if wanted == 0 {
            return false;
        }
        let slack = self.period_ms.get() / 2;
        if now_ms.saturating_sub(last_run.get()) + slack < wanted {
            return false;
        }
        last_run.set(now_ms);
        true
    }
}
