use super::*;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const SEED: [u8; 32] = [7; 32];
/// A unix time (ms) at the start of an hour, hence at the start of every window used here.
const T0: u64 = 1_699_999_200_000;

fn limit(requests: u64, window_seconds: u64) -> RateLimit {
    RateLimit {
        name: "test".into(),
        requests,
        window_seconds,
        key: LimitKey::Ip,
        max_tracked_keys: 1000,
        on_contention: OnContention::Refuse,
    }
}

fn limiter() -> Limiter {
    Limiter::new(SEED)
}

/// Sends requests until the first refusal (at most `max`); returns how many were admitted.
fn burst(store: &MemoryStore, limit: &RateLimit, key: &str, now_ms: u64, max: u64) -> u64 {
    let limiter = limiter();
    for admitted in 0..max {
        if !limiter.check(store, limit, key, now_ms).allowed {
            return admitted;
        }
    }
    max
}

fn bucket_of(store: &MemoryStore, limit: &RateLimit, key: &str) -> Bucket {
    let identity = limiter().identity(limit, key);
    match store.get(&table_key(&limit.name, identity.bucket)) {
        Ok(Some((bytes, _))) => Bucket::decode(&bytes),
        _ => Bucket::default(),
    }
}

fn entry_of(store: &MemoryStore, limit: &RateLimit, key: &str) -> Option<Entry> {
    let fingerprint = limiter().identity(limit, key).fingerprint;
    bucket_of(store, limit, key)
        .ways
        .into_iter()
        .find(|e| !e.is_empty() && e.fingerprint == fingerprint)
}

/// Writes `entry` (with the key's fingerprint) into way 0 of the key's bucket.
fn put_entry(store: &MemoryStore, limit: &RateLimit, key: &str, mut entry: Entry) {
    let identity = limiter().identity(limit, key);
    entry.fingerprint = identity.fingerprint;
    let mut bucket = Bucket::default();
    bucket.ways[0] = entry;
    store
        .set(
            &table_key(&limit.name, identity.bucket),
            &bucket.encode(),
            None,
        )
        .unwrap();
}

fn entry_at(limit: &RateLimit, now_ms: u64, current: u64, previous: u64) -> Entry {
    Entry {
        fingerprint: 0,
        window_ms: limit.window_seconds * 1000,
        window_index: now_ms / (limit.window_seconds * 1000),
        current,
        previous,
    }
}

/// xorshift64*: deterministic pseudo-randomness for the property and interleaving tests.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// --- the sliding window ------------------------------------------------------------------

#[test]
fn a_burst_is_admitted_exactly_requests_times_then_refused_until_the_window_slides() {
    let store = MemoryStore::new();
    let login = limit(5, 900);
    let limiter = limiter();
    for i in 0..5 {
        let d = limiter.check(&store, &login, "ip:10.0.0.1", T0 + i);
        assert!(d.allowed, "request {i}");
        assert_eq!(d.remaining, 4 - i);
        assert_eq!(d.reason, None);
    }
    let refused = limiter.check(&store, &login, "ip:10.0.0.1", T0 + 5);
    assert!(!refused.allowed);
    assert_eq!(refused.remaining, 0);
    assert_eq!(refused.reason, Some(REASON_LIMIT_EXCEEDED));
    // The burst weighs ⌈5 × r / 900 000⌉ in the next window: it drops to 4 once
    // r ≤ 720 000 ms, i.e. at 900 000 + 180 000 ms.
    assert_eq!(refused.retry_after_seconds, Some(1080));
    assert_eq!(refused.reset_seconds, 1080);
    for now in [
        T0 + 6,
        T0 + 899_999,
        T0 + 900_000,
        T0 + 1_000_000,
        T0 + 1_079_999,
    ] {
        assert!(
            !limiter.check(&store, &login, "ip:10.0.0.1", now).allowed,
            "{now}"
        );
    }
    assert!(
        limiter
            .check(&store, &login, "ip:10.0.0.1", T0 + 1_080_000)
            .allowed
    );
    assert!(
        !limiter
            .check(&store, &login, "ip:10.0.0.1", T0 + 1_080_000)
            .allowed
    );
    assert_eq!(entry_of(&store, &login, "ip:10.0.0.1").unwrap().current, 1);
}

#[test]
fn window_edges_last_millisecond_and_first_millisecond() {
    let edge = limit(3, 10);
    let limiter = limiter();
    // A burst in the last millisecond of a window still weighs fully one ms later.
    let store = MemoryStore::new();
    assert_eq!(burst(&store, &edge, "k", T0 + 9_999, 10), 3);
    let last = limiter.check(&store, &edge, "k", T0 + 9_999);
    // ⌈3 × r / 10 000⌉ ≤ 2 once r ≤ 6 666: at T0 + 13 334, 3 335 ms later.
    assert_eq!(last.retry_after_seconds, Some(4));
    let first = limiter.check(&store, &edge, "k", T0 + 10_000);
    assert!(!first.allowed);
    assert_eq!(first.retry_after_seconds, Some(4));
    assert!(!limiter.check(&store, &edge, "k", T0 + 13_333).allowed);
    assert!(limiter.check(&store, &edge, "k", T0 + 13_334).allowed);

    // A burst in the first millisecond of a window.
    let store = MemoryStore::new();
    assert_eq!(burst(&store, &edge, "k", T0 + 10_000, 10), 3);
    let d = limiter.check(&store, &edge, "k", T0 + 10_000);
    assert_eq!(d.retry_after_seconds, Some(14));
    assert!(!limiter.check(&store, &edge, "k", T0 + 19_999).allowed);
    assert!(!limiter.check(&store, &edge, "k", T0 + 23_333).allowed);
    assert!(limiter.check(&store, &edge, "k", T0 + 23_334).allowed);
}

/// Admissions in window 1 at `elapsed_ms`, after 100 in window 0.
fn admitted_after_a_full_previous_window(elapsed_ms: u64) -> u64 {
    let store = MemoryStore::new();
    let hundred = limit(100, 10);
    assert_eq!(burst(&store, &hundred, "k", T0, 200), 100);
    burst(&store, &hundred, "k", T0 + 10_000 + elapsed_ms, 200)
}

#[test]
fn the_previous_window_weighs_by_the_share_still_inside_the_sliding_window() {
    assert_eq!(admitted_after_a_full_previous_window(0), 0); // 100 % inside
    assert_eq!(admitted_after_a_full_previous_window(100), 1); // 99 %
    assert_eq!(admitted_after_a_full_previous_window(5_000), 50); // 50 %
                                                                  // 33.33 % of 100 is 33.33: rounded up (stricter), so 66, not 67.
    assert_eq!(admitted_after_a_full_previous_window(6_667), 66);
    assert_eq!(admitted_after_a_full_previous_window(9_900), 99); // 1 %
    assert_eq!(admitted_after_a_full_previous_window(9_999), 99); // 0.01 % still weighs 1
    assert_eq!(admitted_after_a_full_previous_window(10_000), 100); // 0 %: slid out
}

#[test]
fn two_keys_are_independent() {
    let store = MemoryStore::new();
    let l = limit(4, 60);
    assert_eq!(burst(&store, &l, "ip:10.0.0.1", T0, 10), 4);
    assert_eq!(burst(&store, &l, "ip:10.0.0.2", T0, 10), 4);
    assert!(!limiter().check(&store, &l, "ip:10.0.0.1", T0).allowed);
    // The same client key under another limit is another counter.
    let other = RateLimit {
        name: "other".into(),
        ..limit(4, 60)
    };
    assert_eq!(burst(&store, &other, "ip:10.0.0.1", T0, 10), 4);
}

#[test]
fn a_clock_going_backwards_neither_resets_nor_underflows_a_counter() {
    let l = limit(3, 10);
    let limiter = limiter();
    let store = MemoryStore::new();
    assert_eq!(burst(&store, &l, "k", T0 + 15_000, 10), 3);
    let stored = entry_of(&store, &l, "k").unwrap();
    // Back into the previous window: treated as the stored window's start, T0 + 10 000,
    // from which the count frees a request at T0 + 23 334.
    let back = limiter.check(&store, &l, "k", T0 + 5_000);
    assert!(!back.allowed);
    assert_eq!(back.retry_after_seconds, Some(19));
    let far_back = limiter.check(&store, &l, "k", T0);
    assert_eq!(far_back.retry_after_seconds, Some(24));
    let epoch = limiter.check(&store, &l, "k", 0);
    assert!(!epoch.allowed);
    assert_eq!(
        epoch.retry_after_seconds,
        Some((T0 + 23_334).div_ceil(1000))
    );
    assert_eq!(entry_of(&store, &l, "k").unwrap(), stored);
    assert!(!limiter.check(&store, &l, "k", T0 + 23_333).allowed);
    assert!(limiter.check(&store, &l, "k", T0 + 23_334).allowed);

    // Admissions while the clock is behind count in the stored window.
    let l = limit(5, 10);
    let store = MemoryStore::new();
    assert_eq!(burst(&store, &l, "k", T0 + 15_000, 2), 2);
    assert_eq!(burst(&store, &l, "k", T0 + 5_000, 10), 3);
    assert!(!limiter.check(&store, &l, "k", T0 + 15_000).allowed);
    let entry = entry_of(&store, &l, "k").unwrap();
    assert_eq!(
        (entry.window_index, entry.current),
        ((T0 + 10_000) / 10_000, 5)
    );
}

#[test]
fn counters_near_the_integer_limits_saturate_and_never_wrap() {
    let limiter = limiter();
    let max = limit(u64::MAX, 10);
    let store = MemoryStore::new();
    put_entry(&store, &max, "k", entry_at(&max, T0, u64::MAX - 2, 0));
    let d = limiter.check(&store, &max, "k", T0);
    assert!(d.allowed);
    assert_eq!(d.remaining, 1);
    assert!(limiter.check(&store, &max, "k", T0).allowed);
    let refused = limiter.check(&store, &max, "k", T0);
    assert!(!refused.allowed);
    assert_eq!(entry_of(&store, &max, "k").unwrap().current, u64::MAX);
    // u64::MAX in the current window and u64::MAX previous: weighted saturates, refused.
    put_entry(&store, &max, "k", entry_at(&max, T0, u64::MAX, u64::MAX));
    assert!(!limiter.check(&store, &max, "k", T0 + 5_000).allowed);

    // A full previous window of u64::MAX weighs u64::MAX at the first ms of the window and
    // one less a millisecond later.
    let store = MemoryStore::new();
    put_entry(&store, &max, "k", entry_at(&max, T0, 0, u64::MAX));
    let d = limiter.check(&store, &max, "k", T0);
    assert!(!d.allowed);
    assert_eq!(d.retry_after_seconds, Some(1));
    assert!(limiter.check(&store, &max, "k", T0 + 1).allowed);

    // Huge counts against a small limit: freed only when both windows have slid out.
    let small = limit(5, 10);
    let store = MemoryStore::new();
    put_entry(
        &store,
        &small,
        "k",
        entry_at(&small, T0, u64::MAX, u64::MAX),
    );
    let d = limiter.check(&store, &small, "k", T0 + 1_234);
    assert_eq!(d.retry_after_seconds, Some(19)); // 20 000 - 1 234 ms
    assert!(!limiter.check(&store, &small, "k", T0 + 19_999).allowed);
    assert!(limiter.check(&store, &small, "k", T0 + 20_000).allowed);

    // The end of time.
    let store = MemoryStore::new();
    let one = limit(1, MAX_WINDOW_SECONDS);
    let d = limiter.check(&store, &one, "k", u64::MAX);
    assert!(d.allowed);
    let refused = limiter.check(&store, &one, "k", u64::MAX);
    assert!(!refused.allowed);
    let wait = refused.retry_after_seconds.unwrap();
    assert!(
        wait > MAX_WINDOW_SECONDS && wait <= 2 * MAX_WINDOW_SECONDS,
        "{wait}"
    );
}

#[test]
fn retry_after_and_reset_are_exact_to_the_second() {
    let limiter = limiter();
    let mut rng = Rng(0x5eed);
    let mut refusals_seen = 0;
    for _ in 0..300 {
        let l = limit(1 + rng.below(12), 1 + rng.below(30));
        let window_ms = l.window_seconds * 1000;
        let store = MemoryStore::new();
        let mut now = T0 + rng.below(window_ms);
        for _ in 0..rng.below(40) {
            now += rng.below(window_ms / 3 + 1);
            let d = limiter.check(&store, &l, "k", now);
            assert!(d.reset_seconds >= 1);
            let probe =
                |seconds: u64| limiter.check(&store.snapshot(), &l, "k", now + seconds * 1000);
            if d.allowed {
                let reset = d.reset_seconds;
                let freed = probe(reset);
                assert!(
                    freed.allowed && freed.remaining >= d.remaining,
                    "{l:?} {now}"
                );
                if reset >= 2 {
                    let before = probe(reset - 1);
                    if d.remaining == 0 {
                        assert!(!before.allowed, "{l:?} {now}");
                    } else {
                        assert_eq!(before.remaining, d.remaining - 1, "{l:?} {now}");
                    }
                }
            } else {
                refusals_seen += 1;
                let wait = d.retry_after_seconds.unwrap();
                assert_eq!(wait, d.reset_seconds);
                assert!(probe(wait).allowed, "{l:?} {now}");
                if wait >= 2 {
                    assert!(!probe(wait - 1).allowed, "{l:?} {now}");
                }
            }
        }
    }
    assert!(refusals_seen > 100, "{refusals_seen}");
}

#[test]
fn headers_are_the_spec_strings() {
    let store = MemoryStore::new();
    let login = RateLimit {
        name: "login".into(),
        ..limit(5, 900)
    };
    let first = limiter().check(&store, &login, "ip:10.0.0.1", T0);
    let expected: Vec<(&str, String)> = [
        ("x-ratelimit-limit", "5"),
        ("x-ratelimit-remaining", "4"),
        // A single request weighs ⌈1 × r / window⌉ = 1 until the next window has passed.
        ("x-ratelimit-reset", "1800"),
        ("ratelimit-policy", "\"login\";q=5;w=900"),
        ("ratelimit", "\"login\";r=4;t=1800"),
    ]
    .iter()
    .map(|(n, v)| (*n, v.to_string()))
    .collect();
    assert_eq!(first.headers("login", 900), expected);
    burst(&store, &login, "ip:10.0.0.1", T0, 10);
    let refused = limiter().check(&store, &login, "ip:10.0.0.1", T0);
    let expected: Vec<(&str, String)> = [
        ("x-ratelimit-limit", "5"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1080"),
        ("ratelimit-policy", "\"login\";q=5;w=900"),
        ("ratelimit", "\"login\";r=0;t=1080"),
        ("retry-after", "1080"),
    ]
    .iter()
    .map(|(n, v)| (*n, v.to_string()))
    .collect();
    assert_eq!(refused.headers("login", 900), expected);
    assert_eq!(
        refused.headers("a\"b\\c\n", 1)[3].1,
        "\"a\\\"b\\\\c\";q=5;w=1"
    );
}

// --- compare-and-swap ---------------------------------------------------------------------

#[test]
fn the_memory_store_has_the_hosts_semantics() {
    let store = MemoryStore::new();
    assert_eq!(store.get("k"), Ok(None));
    // A set on a missing key succeeds whatever the CAS.
    store.set("k", b"a", Some(12345)).unwrap();
    let (value, token) = store.get("k").unwrap().unwrap();
    assert_eq!(value, b"a");
    assert_ne!(token, 0);
    assert_ne!(token, INSERT_IF_ABSENT);
    // Insert-if-absent fails once the key exists; a stale token fails; the current succeeds.
    assert_eq!(
        store.set("k", b"b", Some(INSERT_IF_ABSENT)),
        Err(StoreError::CasMismatch)
    );
    store.set("k", b"c", Some(token)).unwrap();
    assert_eq!(
        store.set("k", b"d", Some(token)),
        Err(StoreError::CasMismatch)
    );
    // No CAS: unconditional.
    store.set("k", b"e", None).unwrap();
    assert_eq!(store.get("k").unwrap().unwrap().0, b"e");
    assert_eq!(store.cas_mismatches(), 2);
    store.inject_failures(1);
    assert_eq!(store.get("k"), Err(StoreError::Unavailable));
    assert!(store.get("k").is_ok());
    store.inject_conflicts(1);
    let (_, token) = store.get("k").unwrap().unwrap();
    assert_eq!(
        store.set("k", b"f", Some(token)),
        Err(StoreError::CasMismatch)
    );
    assert_eq!(store.get("k").unwrap().unwrap().0, b"e");
}

#[test]
fn injected_cas_conflicts_are_retried_and_counted_once() {
    let store = MemoryStore::new();
    let l = limit(5, 60);
    store.inject_conflicts(3);
    let d = limiter().check(&store, &l, "k", T0);
    assert!(d.allowed);
    assert_eq!(d.remaining, 4);
    assert_eq!(store.cas_mismatches(), 3);
    assert_eq!(entry_of(&store, &l, "k").unwrap().current, 1);
    store.inject_conflicts(7);
    assert!(limiter().check(&store, &l, "k", T0).allowed);
    assert_eq!(entry_of(&store, &l, "k").unwrap().current, 2);
}

#[test]
fn exhausted_retries_refuse_by_default_and_count_nothing() {
    let store = MemoryStore::new();
    let l = limit(5, 60);
    store.inject_conflicts(DEFAULT_CAS_ATTEMPTS);
    let d = limiter().check(&store, &l, "k", T0);
    assert!(!d.allowed);
    assert_eq!(d.reason, Some(REASON_CONTENTION));
    assert_eq!(d.retry_after_seconds, Some(1));
    assert_eq!(
        d.headers("test", 60).last().unwrap(),
        &("retry-after", "1".to_string())
    );
    assert_eq!(limiter().check(&store, &l, "k", T0).remaining, 4);

    let store = MemoryStore::new();
    store.inject_conflicts(3);
    let d = limiter().with_cas_attempts(3).check(&store, &l, "k", T0);
    assert_eq!(d.reason, Some(REASON_CONTENTION));
    store.inject_conflicts(2);
    assert!(
        limiter()
            .with_cas_attempts(3)
            .check(&store, &l, "k", T0)
            .allowed
    );
}

#[test]
fn on_contention_allow_admits_uncounted() {
    let store = MemoryStore::new();
    let l = RateLimit {
        on_contention: OnContention::Allow,
        ..limit(5, 60)
    };
    assert!(limiter().check(&store, &l, "k", T0).allowed);
    store.inject_conflicts(DEFAULT_CAS_ATTEMPTS);
    let d = limiter().check(&store, &l, "k", T0);
    assert!(d.allowed);
    assert_eq!(d.reason, Some(REASON_CONTENTION));
    assert_eq!(d.remaining, 3);
    assert_eq!(entry_of(&store, &l, "k").unwrap().current, 1);
    store.inject_failures(1);
    let d = limiter().check(&store, &l, "k", T0);
    assert!(d.allowed);
    assert_eq!(d.reason, Some(REASON_STORE_ERROR));
}

#[test]
fn a_failing_store_refuses_by_default() {
    let store = MemoryStore::new();
    let l = limit(5, 60);
    store.inject_failures(1);
    let d = limiter().check(&store, &l, "k", T0);
    assert!(!d.allowed);
    assert_eq!(d.reason, Some(REASON_STORE_ERROR));
    assert_eq!(d.retry_after_seconds, Some(1));
    // A failed write, after a good read.
    store.set_before_set_hook(|store, _| store.inject_failures(1));
    let d = limiter().check(&store, &l, "k", T0);
    assert_eq!(d.reason, Some(REASON_STORE_ERROR));
    store.clear_before_set_hook();
    assert_eq!(limiter().check(&store, &l, "k", T0).remaining, 4);
}

#[test]
fn the_first_insert_of_a_bucket_does_not_race() {
    // Worker B runs entirely between worker A's get (nothing there) and A's set.
    for (key_a, key_b, both_admitted) in [("k", "k", false), ("k", "other", true)] {
        let store = MemoryStore::new();
        let one = RateLimit {
            max_tracked_keys: 4, // one bucket: both keys meet in it
            ..limit(1, 60)
        };
        let b_admitted = Arc::new(AtomicBool::new(false));
        let interleaved = Arc::new(AtomicBool::new(false));
        let (one_for_b, b_result) = (one.clone(), b_admitted.clone());
        let key_b_owned = key_b.to_string();
        store.set_before_set_hook(move |store, _| {
            if !interleaved.swap(true, Ordering::SeqCst) {
                let d = limiter().check(store, &one_for_b, &key_b_owned, T0);
                b_result.store(d.allowed, Ordering::SeqCst);
            }
        });
        let a = limiter().check(&store, &one, key_a, T0);
        assert!(b_admitted.load(Ordering::SeqCst));
        assert_eq!(a.allowed, both_admitted, "{key_a} {key_b}");
        assert_eq!(store.cas_mismatches(), 1);
        assert_eq!(entry_of(&store, &one, key_b).unwrap().current, 1);
        assert_eq!(entry_of(&store, &one, key_a).unwrap().current, 1);
    }
}

/// Requests served by "workers" that interleave: whenever one is about to write, another may
/// run a whole request first (nested up to a depth), as Envoy's workers do between a
/// shared-data get and set.
struct Workers {
    limit: RateLimit,
    limiter: Limiter,
    pending: Mutex<Vec<(String, u64)>>,
    admitted: Mutex<HashMap<String, u64>>,
    contention: AtomicU64,
    rng: Mutex<Rng>,
    depth: AtomicUsize,
}

impl Workers {
    fn serve_one(&self, store: &MemoryStore) -> bool {
        let next = self.pending.lock().unwrap().pop();
        let Some((key, now)) = next else {
            return false;
        };
        let d = self.limiter.check(store, &self.limit, &key, now);
        if d.allowed {
            *self.admitted.lock().unwrap().entry(key).or_default() += 1;
        } else if d.reason == Some(REASON_CONTENTION) {
            self.contention.fetch_add(1, Ordering::SeqCst);
        }
        true
    }
}

#[test]
fn interleaved_workers_admit_exactly_the_limit() {
    let mut rng = Rng(42);
    let mut pending = Vec::new();
    for i in 0..300 {
        let key = if i % 2 == 0 { "a" } else { "b" };
        pending.push((key.to_string(), T0 + rng.below(60_000)));
    }
    let workers = Arc::new(Workers {
        limit: RateLimit {
            max_tracked_keys: 4, // "a" and "b" share one bucket, so they contend too
            ..limit(40, 60)
        },
        limiter: limiter().with_cas_attempts(64),
        pending: Mutex::new(pending),
        admitted: Mutex::new(HashMap::new()),
        contention: AtomicU64::new(0),
        rng: Mutex::new(rng),
        depth: AtomicUsize::new(0),
    });
    let store = MemoryStore::new();
    let hook_workers = workers.clone();
    store.set_before_set_hook(move |store, _| {
        let w = &hook_workers;
        if w.depth.load(Ordering::SeqCst) < 3 && w.rng.lock().unwrap().below(2) == 0 {
            w.depth.fetch_add(1, Ordering::SeqCst);
            w.serve_one(store);
            w.depth.fetch_sub(1, Ordering::SeqCst);
        }
    });
    while workers.serve_one(&store) {}
    let admitted = workers.admitted.lock().unwrap().clone();
    assert_eq!(admitted.get("a"), Some(&40));
    assert_eq!(admitted.get("b"), Some(&40));
    assert_eq!(workers.contention.load(Ordering::SeqCst), 0);
    assert!(store.cas_mismatches() > 50, "{}", store.cas_mismatches());
}

#[test]
fn threads_hammering_one_key_get_exactly_the_limit() {
    let store = MemoryStore::new();
    // Widen the window between each get and set.
    store.set_before_set_hook(|_, _| std::thread::yield_now());
    let l = limit(37, 60);
    let limiter = limiter().with_cas_attempts(100_000);
    let admitted = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for i in 0..60 {
                    if limiter.check(&store, &l, "hot", T0 + i).allowed {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::SeqCst), 37);
    assert_eq!(entry_of(&store, &l, "hot").unwrap().current, 37);
}

// --- the bounded table --------------------------------------------------------------------

fn one_bucket(requests: u64) -> RateLimit {
    RateLimit {
        max_tracked_keys: 4,
        ..limit(requests, 10)
    }
}

#[test]
fn beyond_the_table_new_keys_share_a_stricter_overflow_counter() {
    let store = MemoryStore::new();
    let l = one_bucket(2);
    let limiter = limiter();
    for key in ["a", "b", "c", "d"] {
        assert_eq!(limiter.check(&store, &l, key, T0).reason, None);
    }
    let e = limiter.check(&store, &l, "e", T0);
    assert!(e.allowed);
    assert_eq!(e.reason, Some(REASON_OVERFLOW_ADMITTED));
    assert!(limiter.check(&store, &l, "f", T0).allowed);
    // "e" has one admission of its own but shares the overflow count of 2: refused.
    let e = limiter.check(&store, &l, "e", T0);
    assert!(!e.allowed);
    assert_eq!(e.reason, Some(REASON_OVERFLOW_EXCEEDED));
    // Keys with an entry keep their own exact counters.
    let a = limiter.check(&store, &l, "a", T0);
    assert!(a.allowed);
    assert_eq!(a.reason, None);
    assert_eq!(
        limiter.check(&store, &l, "a", T0).reason,
        Some(REASON_LIMIT_EXCEEDED)
    );
    assert_eq!(store.len(), 1);
}

#[test]
fn a_key_taking_a_freed_entry_starts_from_the_overflow_counts() {
    let store = MemoryStore::new();
    let l = one_bucket(2);
    let limiter = limiter();
    for key in ["a", "b", "c", "d"] {
        assert!(limiter.check(&store, &l, key, T0).allowed);
    }
    // Window 1: the table is still live, "e" and "f" are counted on the overflow entry.
    for key in ["e", "f"] {
        let d = limiter.check(&store, &l, key, T0 + 10_000);
        assert_eq!(d.reason, Some(REASON_OVERFLOW_ADMITTED));
    }
    // Window 2: a..d are idle. The overflow's 2 from window 1 still weigh fully.
    assert!(!limiter.check(&store, &l, "e", T0 + 20_000).allowed);
    // Halfway: they weigh 1, so "e" is admitted into a freed entry, inheriting them...
    let d = limiter.check(&store, &l, "e", T0 + 25_000);
    assert!(d.allowed);
    assert_eq!(d.reason, None);
    let entry = entry_of(&store, &l, "e").unwrap();
    assert_eq!((entry.current, entry.previous), (1, 2));
    // ...so it is refused now, although only one of its requests was counted as its own.
    assert!(!limiter.check(&store, &l, "e", T0 + 25_000).allowed);
}

#[test]
fn a_key_is_found_in_its_own_entry_even_behind_a_freed_one() {
    let store = MemoryStore::new();
    let l = one_bucket(3);
    let limiter = limiter();
    for key in ["a", "b", "c", "d"] {
        assert!(limiter.check(&store, &l, key, T0).allowed);
    }
    let d_way = {
        let fp = limiter.identity(&l, "d").fingerprint;
        bucket_of(&store, &l, "d")
            .ways
            .iter()
            .position(|e| e.fingerprint == fp)
            .unwrap()
    };
    // "d" keeps its entry live in window 1; a, b and c go idle in window 2.
    assert_eq!(burst(&store, &l, "d", T0 + 19_999, 10), 2);
    // Window 2: "d" weighs its 2 from window 1 (a fresh start in a freed entry would give
    // it 3), then the next request is freed when they weigh 1, halfway.
    assert_eq!(burst(&store, &l, "d", T0 + 20_000, 10), 1);
    assert_eq!(burst(&store, &l, "d", T0 + 24_999, 10), 0);
    assert_eq!(burst(&store, &l, "d", T0 + 25_000, 10), 1);
    let fp = limiter.identity(&l, "d").fingerprint;
    let bucket = bucket_of(&store, &l, "d");
    assert_eq!(
        bucket.ways.iter().filter(|e| e.fingerprint == fp).count(),
        1
    );
    assert_eq!(bucket.ways[d_way].fingerprint, fp);
}

#[test]
fn a_million_distinct_keys_stay_within_the_table_and_cannot_loosen_any_limit() {
    let store = MemoryStore::new();
    let l = RateLimit {
        max_tracked_keys: 1000,
        ..limit(20, 60)
    };
    let limiter = limiter();
    assert!(limiter.check(&store, &l, "good", T0).allowed);
    assert!(limiter.check(&store, &l, "bad", T0).allowed);
    let mut good_refused = 0;
    let mut bad_by_window = [(0u64, 0u64); 11]; // (admitted, refused)
    let mut late = (0, 0);
    for i in 0..1_000_000u64 {
        // 0.6 ms apart: ten windows.
        let now = T0 + 1 + i * 3 / 5;
        limiter.check(&store, &l, &format!("flood-{i}"), now);
        if i % 10_000 == 0 && !limiter.check(&store, &l, "good", now).allowed {
            good_refused += 1;
        }
        if i % 2_000 == 0 {
            let window = ((now - T0) / 60_000) as usize;
            if limiter.check(&store, &l, "bad", now).allowed {
                bad_by_window[window].0 += 1;
            } else {
                bad_by_window[window].1 += 1;
            }
        }
        if i == 500_000 {
            // A new key bursting in the middle of the flood: never more than its limit.
            for _ in 0..30 {
                if limiter.check(&store, &l, "late", now).allowed {
                    late.0 += 1;
                } else {
                    late.1 += 1;
                }
            }
        }
    }
    assert!(store.len() <= 250, "{}", store.len());
    assert_eq!(good_refused, 0);
    for (window, (admitted, refused)) in bad_by_window.iter().enumerate().take(10) {
        // Over its limit (50 a window) it is refused; it keeps its own counter, so it still
        // gets about its 20 (on the saturated overflow counter it would get almost none).
        assert!(*admitted <= 20, "window {window}: {admitted}");
        assert!(*refused >= 20, "window {window}: {refused}");
        if window > 0 {
            assert!(*admitted >= 15, "window {window}: {admitted}");
        }
    }
    assert!(late.0 <= 20 && late.1 >= 10, "{late:?}");
}

#[test]
fn unreadable_bucket_bytes_read_as_an_empty_bucket() {
    let l = limit(5, 60);
    let limiter = limiter();
    let key = table_key(&l.name, limiter.identity(&l, "k").bucket);
    let valid = Bucket::default().encode();
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![BUCKET_VERSION],
        vec![2; BUCKET_BYTES],
        vec![0; BUCKET_BYTES],
        valid[..BUCKET_BYTES - 1].to_vec(),
        [valid.clone(), vec![0]].concat(),
        (0..500).map(|i| (i * 37 % 256) as u8).collect(),
    ];
    for bytes in garbage {
        let store = MemoryStore::new();
        store.set(&key, &bytes, None).unwrap();
        let d = limiter.check(&store, &l, "k", T0);
        assert!(d.allowed, "{bytes:?}");
        assert_eq!(d.remaining, 4);
        assert_eq!(entry_of(&store, &l, "k").unwrap().current, 1);
    }
}

#[test]
fn arbitrary_bucket_contents_never_panic() {
    let mut rng = Rng(7);
    let edge = [
        0,
        1,
        2,
        999,
        1000,
        10_000,
        u64::MAX / 1000,
        u64::MAX - 1,
        u64::MAX,
    ];
    let limiter = limiter();
    for _ in 0..3000 {
        let l = limit(1 + rng.below(5), 1 + rng.below(20));
        let fp = limiter.identity(&l, "k").fingerprint;
        let pick = |rng: &mut Rng| {
            if rng.below(2) == 0 {
                edge[rng.below(edge.len() as u64) as usize]
            } else {
                rng.next()
            }
        };
        let mut bucket = Bucket::default();
        for entry in std::iter::once(&mut bucket.overflow).chain(bucket.ways.iter_mut()) {
            *entry = Entry {
                fingerprint: if rng.below(3) == 0 {
                    fp
                } else {
                    pick(&mut rng)
                },
                window_ms: if rng.below(2) == 0 {
                    l.window_seconds * 1000
                } else {
                    pick(&mut rng)
                },
                window_index: pick(&mut rng),
                current: pick(&mut rng),
                previous: pick(&mut rng),
            };
        }
        let store = MemoryStore::new();
        let key = table_key(&l.name, limiter.identity(&l, "k").bucket);
        store.set(&key, &bucket.encode(), None).unwrap();
        let now = pick(&mut rng);
        let d = limiter.check(&store, &l, "k", now);
        assert!(d.allowed || d.retry_after_seconds >= Some(1));
    }
}

#[test]
fn buckets_encode_to_a_fixed_size_and_back() {
    let mut bucket = Bucket {
        overflow: Entry {
            fingerprint: 0,
            window_ms: 60_000,
            window_index: 3,
            current: 4,
            previous: 5,
        },
        ways: [Entry::default(); WAYS],
    };
    bucket.ways[3] = Entry {
        fingerprint: u64::MAX,
        window_ms: 1000,
        window_index: u64::MAX,
        current: 1,
        previous: u64::MAX,
    };
    let bytes = bucket.encode();
    assert_eq!(bytes.len(), BUCKET_BYTES);
    assert_eq!(bytes[0], BUCKET_VERSION);
    assert_eq!(Bucket::decode(&bytes), bucket);
}

#[test]
fn a_reconfigured_window_starts_afresh_in_the_same_table() {
    let store = MemoryStore::new();
    assert_eq!(burst(&store, &limit(3, 10), "k", T0, 10), 3);
    assert_eq!(burst(&store, &limit(3, 20), "k", T0, 10), 3);
    // A changed `requests` keeps the counts.
    assert_eq!(burst(&store, &limit(4, 10), "k", T0, 10), 1);
}

// --- seed ----------------------------------------------------------------------------------

#[test]
fn every_worker_ends_up_with_the_first_stored_seed() {
    let store = MemoryStore::new();
    assert_eq!(shared_seed(&store, [1; 32]), Ok([1; 32]));
    assert_eq!(shared_seed(&store, [2; 32]), Ok([1; 32]));

    // Another worker stores its seed between this one's get and set.
    let store = MemoryStore::new();
    let interleaved = AtomicBool::new(false);
    let other = Arc::new(Mutex::new(None));
    let other_result = other.clone();
    store.set_before_set_hook(move |store, _| {
        if !interleaved.swap(true, Ordering::SeqCst) {
            *other_result.lock().unwrap() = Some(shared_seed(store, [3; 32]));
        }
    });
    assert_eq!(shared_seed(&store, [4; 32]), Ok([3; 32]));
    assert_eq!(*other.lock().unwrap(), Some(Ok([3; 32])));

    // Unreadable: replaced. Failing store: an error, never a seed of one's own.
    let store = MemoryStore::new();
    store.set(SEED_KEY, b"junk", None).unwrap();
    assert_eq!(shared_seed(&store, [5; 32]), Ok([5; 32]));
    let store = MemoryStore::new();
    store.inject_failures(1);
    assert_eq!(shared_seed(&store, [6; 32]), Err(StoreError::Unavailable));
}

#[test]
fn the_seed_decides_placement() {
    let l = limit(5, 60);
    let (a, b) = (Limiter::new([1; 32]), Limiter::new([2; 32]));
    let moved = (0..100)
        .filter(|i| a.identity(&l, &format!("ip:{i}")) != b.identity(&l, &format!("ip:{i}")))
        .count();
    assert_eq!(moved, 100);
    assert_eq!(a.identity(&l, "x"), a.clone().identity(&l, "x"));
    assert!(!format!("{a:?}").contains("placement_keys"));
}

#[test]
fn placement_hash_is_siphash_2_4() {
    use std::hash::Hasher;
    // The reference vectors of the SipHash paper (Aumasson and Bernstein, appendix A): key
    // 00 01 .. 0f, messages 00 01 .. (n - 1).
    let (k0, k1) = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
    let hash = |n: u8| {
        let mut hasher = SipHasher24::new_with_keys(k0, k1);
        hasher.write(&(0..n).collect::<Vec<u8>>());
        hasher.finish()
    };
    assert_eq!(hash(0), 0x726f_db47_dd0e_0e31);
    assert_eq!(hash(15), 0xa129_ca61_49be_45e5);
}

/// The placement of every client is what std's `SipHasher` (the hasher used before) gave:
/// the same (limit, window, key) fields land in the same bucket with the same fingerprint.
#[test]
#[allow(deprecated)]
fn placement_hash_matches_the_std_sip_hasher_it_replaced() {
    use std::hash::Hasher;
    let limiter = limiter();
    for (requests, window_seconds) in [(1, 1), (10, 60), (1000, 3600)] {
        let limit = limit(requests, window_seconds);
        for client in ["", "1.2.3.4", "tenant-\u{e9}", &"k".repeat(300)] {
            for &(k0, k1) in &limiter.placement_keys {
                let mut std_hasher = std::hash::SipHasher::new_with_keys(k0, k1);
                std_hasher.write(&(limit.name.len() as u64).to_le_bytes());
                std_hasher.write(limit.name.as_bytes());
                std_hasher.write(&limit.window_ms().to_le_bytes());
                std_hasher.write(&(client.len() as u64).to_le_bytes());
                std_hasher.write(client.as_bytes());
                assert_eq!(
                    keyed_placement_hash((k0, k1), &limit, client),
                    std_hasher.finish(),
                    "{client:?}"
                );
            }
        }
    }
}

// --- client keys ---------------------------------------------------------------------------

#[test]
fn client_keys_are_resolved_per_kind_and_fall_back_to_the_ip() {
    let head = RequestHead::from_host(
        vec![
            ("x-tenant".into(), "acme".into()),
            ("x-forwarded-for".into(), "1.2.3.4".into()),
        ],
        Some("10.0.0.1:5555"),
    );
    let ip = "ip:10.0.0.1";
    assert_eq!(
        LimitKey::Ip.client_key(&head, Some("alice"), Some("svc")),
        ip
    );
    assert_eq!(
        LimitKey::Principal.client_key(&head, Some("alice"), Some("svc")),
        "sub:alice"
    );
    assert_eq!(
        LimitKey::Principal.client_key(&head, None, Some("svc")),
        "key:svc"
    );
    assert_eq!(LimitKey::Principal.client_key(&head, None, None), ip);
    assert_eq!(
        LimitKey::ApiKey.client_key(&head, Some("alice"), Some("svc")),
        "key:svc"
    );
    assert_eq!(LimitKey::ApiKey.client_key(&head, Some("alice"), None), ip);
    let tenant = LimitKey::Header("x-tenant".into());
    assert_eq!(tenant.client_key(&head, None, None), "header:acme");
    assert_eq!(
        LimitKey::Header("x-other".into()).client_key(&head, None, None),
        ip
    );
    // A subject spelt like an IP key is another counter.
    assert_ne!(
        LimitKey::Principal.client_key(&head, Some("10.0.0.1"), None),
        ip
    );
}

// --- configuration -------------------------------------------------------------------------

fn errors_of(section: Value) -> Vec<String> {
    match compile_section(&section, "rate_limits") {
        Ok(limits) => panic!("accepted: {limits:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_section_compiles_with_defaults_and_overrides() {
    let limits = compile_section(
        &json!({
            "login": { "requests": 5, "window_seconds": 900, "key": "ip" },
            "authenticated_read": { "requests": 500, "window_seconds": 60, "key": "principal" },
            "partner": { "requests": 100, "window_seconds": 60, "key": "api_key" },
            "tenant": { "requests": 10, "window_seconds": 1, "key": "header:X-Tenant",
                        "max_tracked_keys": 64, "on_contention": "allow" }
        }),
        "rate_limits",
    )
    .unwrap();
    assert_eq!(
        limits["login"],
        RateLimit {
            name: "login".into(),
            requests: 5,
            window_seconds: 900,
            key: LimitKey::Ip,
            max_tracked_keys: DEFAULT_MAX_TRACKED_KEYS,
            on_contention: OnContention::Refuse,
        }
    );
    assert_eq!(limits["authenticated_read"].key, LimitKey::Principal);
    assert_eq!(limits["partner"].key, LimitKey::ApiKey);
    let tenant = &limits["tenant"];
    assert_eq!(tenant.key, LimitKey::Header("x-tenant".into()));
    assert_eq!(
        (tenant.max_tracked_keys, tenant.on_contention),
        (64, OnContention::Allow)
    );

    let limits = compile_section(
        &json!({
            "max_tracked_keys": 5000, "on_contention": "allow",
            "login": { "requests": 5, "window_seconds": 900, "key": "ip" },
            "strict": { "requests": 5, "window_seconds": 900, "key": "ip",
                        "max_tracked_keys": 40, "on_contention": "refuse" }
        }),
        "rate_limits",
    )
    .unwrap();
    assert_eq!(limits.len(), 2);
    assert_eq!(
        (
            limits["login"].max_tracked_keys,
            limits["login"].on_contention
        ),
        (5000, OnContention::Allow)
    );
    assert_eq!(
        (
            limits["strict"].max_tracked_keys,
            limits["strict"].on_contention
        ),
        (40, OnContention::Refuse)
    );
    assert!(compile_section(&json!({}), "rate_limits")
        .unwrap()
        .is_empty());
}

#[test]
fn config_errors_name_their_json_path() {
    let ok = |extra: Value| {
        let mut entry = json!({ "requests": 5, "window_seconds": 900, "key": "ip" });
        for (k, v) in extra.as_object().unwrap() {
            entry[k] = v.clone();
        }
        json!({ "login": entry })
    };
    assert_eq!(
        errors_of(ok(json!({ "requests": 0 }))),
        ["rate_limits.login.requests: must be at least 1"]
    );
    assert_eq!(
        errors_of(ok(json!({ "window_seconds": 0 }))),
        ["rate_limits.login.window_seconds: must be between 1 and 31536000"]
    );
    assert_eq!(
        errors_of(ok(json!({ "window_seconds": 31_536_001 }))),
        ["rate_limits.login.window_seconds: must be between 1 and 31536000"]
    );
    assert_eq!(
        errors_of(ok(json!({ "key": "ipx" }))),
        ["rate_limits.login.key: unknown key \"ipx\": expected \"ip\", \"principal\", \"api_key\" or \"header:<name>\""]
    );
    for bad in ["header:", "header:x bad", "header::authority", "header:é"] {
        assert_eq!(
            errors_of(ok(json!({ "key": bad }))),
            [format!(
                "rate_limits.login.key: {bad:?}: not a valid header name after \"header:\""
            )]
        );
    }
    let unknown = errors_of(ok(json!({ "burst": 3 })));
    assert_eq!(unknown.len(), 1);
    assert!(
        unknown[0].starts_with("rate_limits.login") && unknown[0].contains("unknown field `burst`"),
        "{unknown:?}"
    );
    assert_eq!(
        errors_of(json!({ "login": { "requests": 5, "window_seconds": 900 } })),
        ["rate_limits.login: missing field `key`"]
    );
    let negative = errors_of(ok(json!({ "requests": -1 })));
    assert!(
        negative[0].starts_with("rate_limits.login.requests: invalid value"),
        "{negative:?}"
    );
    for bad in [0, 3, 10_000_001] {
        assert_eq!(
            errors_of(ok(json!({ "max_tracked_keys": bad }))),
            ["rate_limits.login.max_tracked_keys: must be between 4 and 10000000"]
        );
    }
    assert!(errors_of(ok(json!({ "on_contention": "maybe" })))[0]
        .starts_with("rate_limits.login.on_contention: unknown variant `maybe`"));
    assert_eq!(
        errors_of(
            json!({ "max_tracked_keys": 2, "login": { "requests": 5, "window_seconds": 9, "key": "ip" } })
        ),
        ["rate_limits.max_tracked_keys: must be between 4 and 10000000"]
    );
    assert_eq!(
        errors_of(json!({ "max_tracked_keys": "many" })),
        ["rate_limits.max_tracked_keys: must be a positive integer"]
    );
    assert!(errors_of(json!({ "on_contention": "maybe" }))[0]
        .starts_with("rate_limits.on_contention: unknown variant `maybe`"));
    assert_eq!(
        errors_of(json!({ "bad name": { "requests": 5, "window_seconds": 9, "key": "ip" } })),
        ["rate_limits.bad name: a rate limit name is 1 to 64 letters, digits, '-' or '_'"]
    );
    assert_eq!(errors_of(json!({ "login": 5 })).len(), 1);
    assert!(errors_of(json!({ "login": 5 }))[0].starts_with("rate_limits.login: invalid type"));
    assert_eq!(
        errors_of(json!([])),
        ["rate_limits: must be an object mapping limit names to limits"]
    );
    // All errors, not just the first.
    let many = errors_of(json!({
        "a": { "requests": 0, "window_seconds": 0, "key": "x" },
        "b": { "requests": 1, "window_seconds": 1, "key": "ip", "extra": 1 }
    }));
    assert_eq!(many.len(), 4, "{many:?}");
}

#[test]
fn rate_limit_compile_takes_one_entry() {
    let cfg: RateLimitConfig = serde_json::from_value(
        json!({ "requests": 3, "window_seconds": 3600, "key": "header:x-reset-token" }),
    )
    .unwrap();
    let l = RateLimit::compile("password_reset", &cfg, "rate_limits.password_reset").unwrap();
    assert_eq!(l.key, LimitKey::Header("x-reset-token".into()));
    assert_eq!(l.max_tracked_keys, DEFAULT_MAX_TRACKED_KEYS);
    assert_eq!(l.buckets(), DEFAULT_MAX_TRACKED_KEYS / 4);
    let errors = RateLimit::compile("a.b", &cfg, "rate_limits.a.b").unwrap_err();
    assert_eq!(errors[0].path, "rate_limits.a.b");
}
