//! The copy of a body read whole for a check (`webhook`, `body_schema`), with a per-worker
//! budget of held bytes. Why bodies are copied out of the host's buffer at all is a host fact:
//! see the proxy-wasm adapter's `body_hold` module.

use std::cell::Cell;
use std::rc::Rc;

/// Body bytes one worker holds for all its requests at most (the capacity of their copies).
/// A request whose body would go beyond is answered 503: an allocation failure inside the VM
/// would abort it, and with it every request of the worker.
pub const MAX_HELD_BODY_BYTES_PER_WORKER: usize = 256 * 1024 * 1024;

/// The bytes every held body of one worker takes, against its maximum.
#[derive(Debug)]
pub struct HeldBudget {
    held: Cell<usize>,
    max: usize,
}

impl HeldBudget {
    pub fn new(max: usize) -> HeldBudget {
        HeldBudget {
            held: Cell::new(0),
            max,
        }
    }

    /// The bytes held now (the capacity of every live copy).
    pub fn held(&self) -> usize {
        self.held.get()
    }
}

impl Default for HeldBudget {
    fn default() -> HeldBudget {
        HeldBudget::new(MAX_HELD_BODY_BYTES_PER_WORKER)
    }
}

/// Why a chunk could not be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFull {
    /// The worker's budget of held bytes is spent.
    Budget,
    /// The allocator refused.
    Memory,
}

impl StoreFull {
    /// Why the request fails closed, for the log.
    pub fn reason(self) -> String {
        match self {
            StoreFull::Budget => format!(
                "this worker already holds {MAX_HELD_BODY_BYTES_PER_WORKER} bytes of request bodies"
            ),
            StoreFull::Memory => "no memory left to hold the request body".to_string(),
        }
    }
}

/// A held body's bytes, copied out of the host: `drained` of them were removed from the host's
/// buffer and go back in front of it when the request is allowed; the rest (the last chunk)
/// was copied for the check and is still in the host's buffer.
#[derive(Debug)]
pub struct BodyStore {
    bytes: Vec<u8>,
    drained: usize,
    /// The most this body may grow to: the route's bound plus the chunk that crosses it.
    cap_hint: usize,
    budget: Rc<HeldBudget>,
}

impl BodyStore {
    pub fn new(budget: Rc<HeldBudget>, max_bytes: u64) -> BodyStore {
        BodyStore {
            bytes: Vec::new(),
            drained: 0,
            cap_hint: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            budget,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The part drained from the host's buffer, which must go back before the request does.
    pub fn into_drained(mut self) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.truncate(self.drained);
        let capacity = bytes.capacity();
        // The copy leaves the budget with the store: it goes back to the host at once.
        self.budget
            .held
            .set(self.budget.held.get().saturating_sub(capacity));
        bytes
    }

    /// Appends `chunk`: growth doubles (up to the route's bound) within the worker's budget,
    /// and an allocation the allocator refuses is an error, never an abort.
    pub fn push(&mut self, chunk: &[u8], drained: bool) -> Result<(), StoreFull> {
        let needed = self.bytes.len().saturating_add(chunk.len());
        let capacity = self.bytes.capacity();
        if needed > capacity {
            let target = needed.max(capacity.saturating_mul(2).min(self.cap_hint));
            let held = self.budget.held.get();
            let after = held.saturating_sub(capacity).saturating_add(target);
            if after > self.budget.max {
                return Err(StoreFull::Budget);
            }
            self.bytes
                .try_reserve_exact(target - self.bytes.len())
                .map_err(|_| StoreFull::Memory)?;
            let grown = self.bytes.capacity();
            self.budget
                .held
                .set(held.saturating_sub(capacity).saturating_add(grown));
        }
        self.bytes.extend_from_slice(chunk);
        if drained {
            self.drained = self.bytes.len();
        }
        Ok(())
    }
}

impl Drop for BodyStore {
    fn drop(&mut self) {
        let held = self.budget.held.get();
        self.budget
            .held
            .set(held.saturating_sub(self.bytes.capacity()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn held_bytes_count_against_the_workers_budget_and_come_back() {
        let budget = Rc::new(HeldBudget::new(64));
        let mut first = BodyStore::new(Rc::clone(&budget), 40);
        first.push(&[1; 30], true).unwrap();
        first.push(&[2; 5], false).unwrap();
        assert!(budget.held() >= 35);
        let mut second = BodyStore::new(Rc::clone(&budget), 40);
        assert_eq!(second.push(&[3; 40], true), Err(StoreFull::Budget));
        let drained = first.into_drained();
        assert_eq!(drained, vec![1; 30]);
        assert_eq!(budget.held(), 0);
        second.push(&[3; 40], true).unwrap();
        drop(second);
        assert_eq!(budget.held(), 0);
    }
}
