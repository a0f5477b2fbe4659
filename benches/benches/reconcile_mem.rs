//! Memory of a coordinator's lock table after reconciling 100,000 held
//! locks, counted by a global allocator: bytes retained per held lock
//! (the coordinator alone, the answer dropped) and the peak during the
//! round (answer included). Also times the round once. Prints one line.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use swimlock_benches::{ReconcileFixture, reconcile};

const LOCKS: usize = 100_000;

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
                let live =
                    LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
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

fn main() {
    let mut fixture = ReconcileFixture::new(LOCKS);
    let (coord, answer) = fixture.round();
    let answer_bytes = LIVE.load(Ordering::Relaxed);
    drop((coord, answer));
    let before = LIVE.load(Ordering::Relaxed);
    let (coord, answer) = fixture.round();
    let with_answer = LIVE.load(Ordering::Relaxed);
    PEAK.store(with_answer, Ordering::Relaxed);
    let start = Instant::now();
    let coord = reconcile(fixture.member_id, coord, answer);
    let elapsed = start.elapsed();
    let after = LIVE.load(Ordering::Relaxed);
    let peak = PEAK.load(Ordering::Relaxed);
    let held = coord.table_stats().map_or(0, |s| s.held);
    assert_eq!(held, LOCKS, "every reported lock is in the table");
    let retained = after.saturating_sub(before);
    let _ = answer_bytes;
    println!(
        "reconcile_mem: {LOCKS} held locks reconciled in {:.1} ms; coordinator retains {} bytes \
         ({:.0} bytes per held lock); peak above baseline {} bytes ({:.0} per lock, answer included; \
         answer alone {} bytes)",
        elapsed.as_secs_f64() * 1e3,
        retained,
        retained as f64 / LOCKS as f64,
        peak.saturating_sub(before),
        peak.saturating_sub(before) as f64 / LOCKS as f64,
        with_answer.saturating_sub(before),
    );
    drop(coord);
}
