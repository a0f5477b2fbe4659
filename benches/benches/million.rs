//! A million held locks on one coordinator: 10 members each holding
//! 100,000 locks merge under a fresh coordinator (one member is built; the
//! other nine answer with its answer under names of their own, since a
//! node holding 100,000 locks takes minutes to build). Measures, with a counting
//! global allocator, the bytes the coordinator retains per held lock; the
//! time of the reconciliation round (every answer, 31,250 LOCK-INFO-RSP
//! parts, fed to the coordinator); and the rate of lock+unlock pairs of
//! the coordinator's own clients on fresh names with the million locks
//! held, next to the same rate on an empty table in the same run. Prints
//! a few lines; `SWIMLOCK_MILLION_MEMBERS` and `SWIMLOCK_MILLION_LOCKS`
//! change the size (for example 10 × 10,000 for a quick look).
//!
//! `cargo bench -p swimlock-benches --bench million`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use swimlock_benches::{ManyMembers, drain, reconcile_all, single_node};
use swimlock_lock::{LockMsg, LockNode};
use swimlock_wire::{ClientId, LockName};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let live = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Pairs per measurement of the grant/release rate.
const PAIRS: usize = 200_000;

fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Lock+unlock pairs per second of the coordinator's own clients on names
/// no one holds (the table keeps what it held).
fn pair_rate(coord: &mut LockNode, now: Duration) -> f64 {
    vouched(coord, now);
    let names: Vec<LockName> =
        (0..PAIRS).map(|i| LockName::new(format!("fresh/{i:07}")).expect("valid")).collect();
    let start = Instant::now();
    for (i, name) in names.iter().enumerate() {
        let client = ClientId(1 + (i % 1024) as u64);
        coord.lock(now, client, name.clone(), Duration::from_secs(10));
        assert_eq!(drain(coord), 1, "granted at once");
        coord.unlock(now, client, name).expect("held");
        drain(coord);
    }
    PAIRS as f64 / start.elapsed().as_secs_f64()
}

/// One own lock+unlock pair, with the witnesses' acknowledgements of the
/// vouch it calls for fed back: the coordinator of a view with members
/// grants its own clients only as far as a witness vouched, and the
/// measured pairs (all at `now`) then run inside that lease.
fn vouched(coord: &mut LockNode, now: Duration) {
    let name = LockName::new("warm-up").expect("valid");
    coord.lock(now, ClientId(1), name.clone(), Duration::from_secs(10));
    // The next vouch is due within a quarter of the own lease.
    for step in 0..20u32 {
        let at = now + Duration::from_millis(25) * step;
        coord.handle_timeout(at);
        let mut vouches = Vec::new();
        while let Some(t) = coord.poll_transmit() {
            if let LockMsg::Vouch(v) = t.msg {
                vouches.push((t.to, v));
            }
        }
        for (witness, v) in &vouches {
            coord.handle_message(at, *witness, LockMsg::Vouched(*v));
        }
        if !vouches.is_empty() {
            break;
        }
    }
    assert_eq!(drain(coord), 1, "granted once a witness vouched");
    coord.unlock(now, ClientId(1), &name).expect("held");
    drain(coord);
}

fn main() {
    let members = env_or("SWIMLOCK_MILLION_MEMBERS", 10);
    let per_member = env_or("SWIMLOCK_MILLION_LOCKS", 100_000);
    let total = members * per_member;
    let build = Instant::now();
    let mut fixture = ManyMembers::echoed(members, per_member);
    let (coord, answers) = fixture.round();
    let parts = answers.len();
    // Measure from a state with the members and one round's answers in
    // memory, so that what the coordinator keeps is what grows.
    drop((coord, answers));
    let before = LIVE.load(Ordering::Relaxed);
    let (coord, answers) = fixture.round();
    let with_answers = LIVE.load(Ordering::Relaxed);
    PEAK.store(with_answers, Ordering::Relaxed);
    let built = build.elapsed();
    let start = Instant::now();
    let mut coord = reconcile_all(coord, answers);
    let round = start.elapsed();
    let after = LIVE.load(Ordering::Relaxed);
    let peak = PEAK.load(Ordering::Relaxed);
    let held = coord.table_stats().map_or(0, |s| s.held);
    assert_eq!(held, total, "every reported lock is in the table");
    let retained = after.saturating_sub(before);
    println!(
        "million: {members} members x {per_member} held locks = {total} (fixture built in {:.1} s)",
        built.as_secs_f64()
    );
    println!(
        "  reconciliation: {parts} LOCK-INFO-RSP parts in {:.0} ms ({:.0} ns per lock)",
        round.as_secs_f64() * 1e3,
        round.as_secs_f64() * 1e9 / total as f64
    );
    println!(
        "  coordinator memory: {retained} bytes retained, {:.1} bytes per held lock; peak above baseline {:.1} per lock with the answers",
        retained as f64 / total as f64,
        peak.saturating_sub(before) as f64 / total as f64
    );
    let now = Duration::from_millis(10);
    let full = pair_rate(&mut coord, now);
    drop(coord);
    drop(fixture);
    let mut empty = single_node();
    let small = pair_rate(&mut empty, now);
    println!(
        "  grant/release: {full:.0} lock+unlock pairs/s with {total} locks held; {small:.0} pairs/s on an empty table ({:.2}x)",
        full / small
    );
    let verdict = |ok: bool| if ok { "[met ]" } else { "[MISS]" };
    println!(
        "  {} {:.1} bytes per held lock <= 150; {} reconciliation {:.0} ms <= 1500 ms",
        verdict(retained as f64 / total as f64 <= 150.0),
        retained as f64 / total as f64,
        verdict(round <= Duration::from_millis(1_500)),
        round.as_secs_f64() * 1e3
    );
}
