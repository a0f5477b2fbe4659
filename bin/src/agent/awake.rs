//! When the node task polls its socket instead of sleeping.
//!
//! A sleeping node pays a wake-up for each datagram (tens of µs on these
//! VMs when the CPU idles), which is most of a lock round trip. So after
//! lock traffic (a request or an answer, not gossip nor lease renewals)
//! the node stays awake for a few of its measured lock round trips, when
//! the answer or the peer's next request is likely to arrive: a
//! non-coordinator while its callers wait on the coordinator, the
//! coordinator after a member's request. Without lock traffic it never
//! polls, so an idle node costs no more CPU than one that always sleeps.
//!
//! Polling helps only while the node has a CPU to itself: on a host whose
//! CPUs are all taken, a polling thread uses up its share and then waits
//! behind the others (or keeps the thread it waits for from running),
//! where a sleeping one would have been run at once on its wake-up. So
//! the task polls only while the host's runnable threads (`/proc/loadavg`,
//! looked at most every [`LOAD_EVERY`]) are no more than its CPUs, and
//! it compares its own CPU time with the wall time of each poll: when it
//! got less than [`MIN_CPU_SHARE`] of it, it polls no more for [`BACKOFF`].
//!
//! The round trip is measured from the first lock message sent to the next
//! one received (on a non-coordinator the coordinator's answer, on the
//! coordinator a member's next request), as an average that favours recent
//! samples. `busy_poll` (fixed, after any datagram) stays as an explicit
//! knob on top.

use std::time::Duration;

use tokio::time::Instant;

/// Round trips the node stays awake for after lock traffic.
pub const AWAKE_RTTS: u32 = 4;
/// Bounds of the window, whatever the round trip measured.
pub const MIN_WINDOW: Duration = Duration::from_micros(20);
/// See [`MIN_WINDOW`].
pub const MAX_WINDOW: Duration = Duration::from_micros(300);
/// Round trips a non-coordinator waits for an answer before it sends more
/// lock messages anyway.
pub const HOLD_RTTS: u32 = 2;
/// Bounds of that hold.
pub const MIN_HOLD: Duration = Duration::from_micros(20);
/// See [`MIN_HOLD`].
pub const MAX_HOLD: Duration = Duration::from_micros(200);
/// Longer intervals are waits (a held lock, a client thinking), not round
/// trips, and are not sampled.
const MAX_SAMPLE: Duration = Duration::from_millis(1);
/// The round trip assumed before the first sample.
const INITIAL_RTT: Duration = Duration::from_micros(50);
/// A poll that got less than this share of its wall time as CPU time was
/// competing for the CPU: polling stops for [`BACKOFF`].
pub const MIN_CPU_SHARE: f64 = 0.75;
/// Polls shorter than this say too little about the CPU to judge.
const MIN_JUDGED: Duration = Duration::from_micros(20);
/// How long the node sleeps between inputs after a poll that competed.
pub const BACKOFF: Duration = Duration::from_millis(50);
/// How often the host's count of runnable threads is read again.
pub const LOAD_EVERY: Duration = Duration::from_millis(20);

/// The awake window of one node task.
#[derive(Debug)]
pub struct Awake {
    /// Stay awake after lock traffic (`false`: only `busy_poll`).
    adaptive: bool,
    /// [`crate::agent::AgentConfig::busy_poll`].
    busy_poll: Duration,
    /// Estimated lock round trip.
    rtt: Duration,
    /// When lock traffic left the node with nothing received since.
    sent: Option<Instant>,
    /// The adaptive window ends here.
    adaptive_until: Option<Instant>,
    /// The `busy_poll` window ends here.
    fixed_until: Option<Instant>,
    /// No adaptive polling before this (the CPU was contended).
    backoff_until: Option<Instant>,
    /// Whether the host had a CPU for each runnable thread, and when that
    /// was read.
    cpus_free: Option<(Instant, bool)>,
}

impl Awake {
    /// Adaptive if `adaptive`, plus a fixed `busy_poll` after every datagram.
    pub fn new(adaptive: bool, busy_poll: Duration) -> Awake {
        Awake {
            adaptive,
            busy_poll,
            rtt: INITIAL_RTT,
            sent: None,
            adaptive_until: None,
            fixed_until: None,
            backoff_until: None,
            cpus_free: None,
        }
    }

    /// The round trip estimate.
    #[cfg(test)]
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// How long the node stays awake after lock traffic.
    pub fn window(&self) -> Duration {
        (self.rtt * AWAKE_RTTS).clamp(MIN_WINDOW, MAX_WINDOW)
    }

    /// How long a non-coordinator holds further lock messages back while
    /// its last ones are unanswered (see `Node::set_corked`).
    pub fn hold(&self) -> Duration {
        (self.rtt * HOLD_RTTS).clamp(MIN_HOLD, MAX_HOLD)
    }

    /// Lock messages left the node at `now`.
    pub fn lock_sent(&mut self, now: Instant) {
        self.sent.get_or_insert(now);
        if self.adaptive {
            self.extend(now);
        }
    }

    /// Lock messages arrived at `now`.
    pub fn lock_received(&mut self, now: Instant) {
        if let Some(sent) = self.sent.take() {
            let sample = now.saturating_duration_since(sent);
            if sample <= MAX_SAMPLE {
                self.rtt = (self.rtt * 7 + sample) / 8;
            }
        }
        if self.adaptive {
            self.extend(now);
        }
    }

    /// A datagram arrived at `now` (for `busy_poll`).
    pub fn datagram(&mut self, now: Instant) {
        if !self.busy_poll.is_zero() {
            self.fixed_until = Some(now + self.busy_poll);
        }
    }

    fn extend(&mut self, now: Instant) {
        let until = now + self.window();
        self.adaptive_until = Some(self.adaptive_until.map_or(until, |u| u.max(until)));
    }

    /// Until when to poll from `now`, if at all: the adaptive window only
    /// while the node `expects` lock traffic (it coordinates, or its
    /// callers wait on the coordinator; asked only within a window).
    pub fn poll_until(&mut self, now: Instant, expects: impl FnOnce() -> bool) -> Option<Instant> {
        self.poll_until_with(now, expects, host_has_free_cpu)
    }

    /// [`Awake::poll_until`], with `free_cpu` telling whether the host has
    /// a CPU for each runnable thread.
    fn poll_until_with(
        &mut self,
        now: Instant,
        expects: impl FnOnce() -> bool,
        free_cpu: fn() -> bool,
    ) -> Option<Instant> {
        let backing_off = self.backoff_until.is_some_and(|b| now < b);
        let window = self.adaptive_until.filter(|u| *u > now && !backing_off && expects());
        let adaptive = window.filter(|_| self.cpus_free(now, free_cpu));
        [adaptive, self.fixed_until].into_iter().flatten().max().filter(|u| *u > now)
    }

    /// Whether the host has a CPU for each runnable thread, as `read` last
    /// said (read again after [`LOAD_EVERY`]).
    fn cpus_free(&mut self, now: Instant, read: impl FnOnce() -> bool) -> bool {
        match self.cpus_free {
            Some((at, free)) if now.saturating_duration_since(at) < LOAD_EVERY => free,
            _ => {
                let free = read();
                self.cpus_free = Some((now, free));
                free
            }
        }
    }

    /// A poll ran for `wall` and got `cpu` of CPU time in it: whether it
    /// competed for the CPU (then adaptive polling stops for [`BACKOFF`]
    /// from `now`).
    pub fn polled(&mut self, now: Instant, wall: Duration, cpu: Duration) -> bool {
        let competed = wall >= MIN_JUDGED && cpu.as_secs_f64() < wall.as_secs_f64() * MIN_CPU_SHARE;
        if competed {
            self.backoff_until = Some(now + BACKOFF);
            self.adaptive_until = None;
        }
        competed
    }
}

/// Whether the host's runnable threads (this one included) are no more
/// than its CPUs; true where that cannot be read.
fn host_has_free_cpu() -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let Ok(load) = std::fs::read_to_string("/proc/loadavg") else { return true };
    // "0.20 0.18 0.12 2/150 6708": the fourth field is running/total.
    let running = load.split_whitespace().nth(3).and_then(|f| f.split('/').next()?.parse::<usize>().ok());
    running.is_none_or(|r| r <= cpus)
}

/// CPU time of the calling thread.
pub fn thread_cpu_time() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn idle() -> bool {
        true
    }

    fn busy() -> bool {
        false
    }

    #[test]
    fn no_lock_traffic_no_polling() {
        let mut a = Awake::new(true, Duration::ZERO);
        let t = Instant::now();
        a.datagram(t);
        assert_eq!(a.poll_until_with(t, || true, idle), None);
    }

    #[test]
    fn window_follows_the_measured_round_trip_within_bounds() {
        let mut a = Awake::new(true, Duration::ZERO);
        let t = Instant::now();
        for i in 0..64 {
            let at = t + us(100) * i;
            a.lock_sent(at);
            a.lock_received(at + us(30));
        }
        assert!(a.rtt() > us(29) && a.rtt() < us(32), "{:?}", a.rtt());
        assert_eq!(a.window(), a.rtt() * AWAKE_RTTS);
        let end = t + us(100) * 63 + us(30);
        assert_eq!(a.poll_until_with(end, || true, idle), Some(end + a.window()));
        // A long wait (a held lock) is not a round trip.
        a.lock_sent(end);
        a.lock_received(end + Duration::from_millis(50));
        assert!(a.rtt() < us(32));
        // Slow round trips stretch the window up to its bound only.
        for i in 0..64 {
            let at = t + Duration::from_secs(1) + Duration::from_millis(1) * i;
            a.lock_sent(at);
            a.lock_received(at + us(900));
        }
        assert_eq!(a.window(), MAX_WINDOW);
    }

    #[test]
    fn polls_only_while_expecting_and_within_the_window() {
        let mut a = Awake::new(true, Duration::ZERO);
        let t = Instant::now();
        a.lock_sent(t);
        let w = a.window();
        assert_eq!(a.poll_until_with(t, || true, idle), Some(t + w));
        assert_eq!(a.poll_until_with(t, || false, idle), None);
        assert_eq!(a.poll_until_with(t + w, || true, idle), None);
    }

    #[test]
    fn a_poll_that_competed_for_the_cpu_stops_polling_for_a_while() {
        let mut a = Awake::new(true, Duration::ZERO);
        let t = Instant::now();
        a.lock_sent(t);
        assert!(!a.polled(t, us(100), us(90)));
        assert!(!a.polled(t, us(10), us(1)), "too short to judge");
        assert!(a.poll_until_with(t, || true, idle).is_some());
        assert!(a.polled(t, us(100), us(40)));
        assert_eq!(a.poll_until_with(t, || true, idle), None);
        a.lock_sent(t + BACKOFF / 2);
        assert_eq!(a.poll_until_with(t + BACKOFF / 2, || true, idle), None);
        a.lock_sent(t + BACKOFF);
        assert!(a.poll_until_with(t + BACKOFF, || true, idle).is_some());
    }

    #[test]
    fn no_polling_while_every_cpu_is_taken() {
        let mut a = Awake::new(true, Duration::ZERO);
        let t = Instant::now();
        a.lock_sent(t);
        assert_eq!(a.poll_until_with(t, || true, busy), None);
        // The host's load is read again only after a while.
        assert_eq!(a.poll_until_with(t + us(10), || true, idle), None);
        a.lock_sent(t + LOAD_EVERY);
        assert!(a.poll_until_with(t + LOAD_EVERY, || true, idle).is_some());
    }

    #[test]
    fn busy_poll_is_fixed_and_independent() {
        let mut a = Awake::new(false, us(50));
        let t = Instant::now();
        a.lock_sent(t);
        assert_eq!(a.poll_until_with(t, || true, idle), None);
        a.datagram(t);
        assert_eq!(a.poll_until_with(t, || false, idle), Some(t + us(50)));
    }
}
