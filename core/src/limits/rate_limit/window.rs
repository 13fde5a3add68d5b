//! The sliding window, in exact integer arithmetic.

use super::*;

/// A counter as seen at one instant, rolled forward to the window that instant falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WindowView {
    pub(super) window_ms: u128,
    pub(super) window_index: u64,
    /// `now`, or the start of the stored window when the clock went back before it: a clock
    /// that goes backwards must never reset or underflow a counter.
    pub(super) effective_now_ms: u128,
    pub(super) current: u64,
    pub(super) previous: u64,
}

/// ⌈count × numerator / denominator⌉ for numerator ≤ denominator: at most `count`.
pub(super) fn ceil_share(count: u64, numerator: u128, denominator: u128) -> u64 {
    let product = u128::from(count) * numerator;
    let share = product.div_ceil(denominator.max(1));
    u64::try_from(share).unwrap_or(u64::MAX)
}

impl WindowView {
    pub(super) fn fresh(window_ms: u64, now_ms: u64) -> WindowView {
        WindowView {
            window_ms: u128::from(window_ms),
            window_index: now_ms / window_ms,
            effective_now_ms: u128::from(now_ms),
            current: 0,
            previous: 0,
        }
    }

    pub(super) fn of(entry: &Entry, window_ms: u64, now_ms: u64) -> WindowView {
        if entry.is_empty() || entry.window_ms != window_ms {
            return WindowView::fresh(window_ms, now_ms);
        }
        let now_index = now_ms / window_ms;
        if now_index <= entry.window_index {
            let start = u128::from(entry.window_index) * u128::from(window_ms);
            WindowView {
                window_ms: u128::from(window_ms),
                window_index: entry.window_index,
                effective_now_ms: u128::from(now_ms).max(start),
                current: entry.current,
                previous: entry.previous,
            }
        } else if now_index == entry.window_index.saturating_add(1) {
            WindowView {
                current: 0,
                previous: entry.current,
                ..WindowView::fresh(window_ms, now_ms)
            }
        } else {
            WindowView::fresh(window_ms, now_ms)
        }
    }

    pub(super) fn window_end_ms(&self) -> u128 {
        (u128::from(self.window_index) + 1) * self.window_ms
    }

    /// `current + ⌈previous × (share of the previous window still inside)⌉`.
    pub(super) fn weighted(&self) -> u64 {
        let still_inside_ms = self.window_end_ms() - self.effective_now_ms;
        self.current
            .saturating_add(ceil_share(self.previous, still_inside_ms, self.window_ms))
    }

    pub(super) fn with_one_more(self) -> WindowView {
        WindowView {
            current: self.current.saturating_add(1),
            ..self
        }
    }

    pub(super) fn to_entry(self, fingerprint: u64) -> Entry {
        Entry {
            fingerprint,
            window_ms: u64::try_from(self.window_ms).unwrap_or(u64::MAX),
            window_index: self.window_index,
            current: self.current,
            previous: self.previous,
        }
    }

    /// The first instant (ms) at or after the effective now at which the weighted count drops
    /// below `threshold` (≥ 1), if no further request is admitted. The weighted count never
    /// rises with time alone, so every later instant qualifies too.
    pub(super) fn free_at_ms(&self, threshold: u64) -> u128 {
        let threshold = threshold.max(1);
        let now = self.effective_now_ms;
        if self.weighted() < threshold {
            return now;
        }
        let end = self.window_end_ms();
        let window = self.window_ms;
        // In this window: need ⌈previous × r / window⌉ ≤ threshold - 1 - current, where
        // r = end - t, i.e. r ≤ spare × window / previous.
        if self.current < threshold && self.previous > 0 {
            let spare = u128::from(threshold - 1 - self.current);
            let longest_inside = spare * window / u128::from(self.previous);
            if longest_inside >= 1 {
                return end - longest_inside;
            }
        }
        // In the next window `current` has become the previous count and nothing else weighs:
        // need ⌈current × r / window⌉ ≤ threshold - 1, where r = end + window - t.
        if self.current == 0 {
            return end;
        }
        let longest_inside = u128::from(threshold - 1) * window / u128::from(self.current);
        if longest_inside >= window {
            end
        } else {
            end + window - longest_inside
        }
    }
}

/// Whole seconds from `now_ms` until `at_ms`, rounded up.
pub(super) fn seconds_until(now_ms: u64, at_ms: u128) -> u64 {
    let wait_ms = at_ms.saturating_sub(u128::from(now_ms));
    u64::try_from(wait_ms.div_ceil(1000)).unwrap_or(u64::MAX)
}
