//! The simulated network and clock: an event queue in simulated time with
//! delay, loss, duplication, reordering and partitions.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::RngExt;
use rand::rngs::SmallRng;

/// How the network misbehaves during the fault phase of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message is held back long enough to overtake
    /// later ones.
    pub reorder: f64,
}

impl Faults {
    /// A network that delivers everything once, in a few milliseconds.
    pub const NONE: Faults = Faults { loss: 0.0, duplicate: 0.0, reorder: 0.0 };

    /// A fault mix drawn from the seed.
    pub fn draw(rng: &mut SmallRng) -> Faults {
        Faults {
            loss: rng.random_range(0.0..0.12),
            duplicate: rng.random_range(0.0..0.05),
            reorder: rng.random_range(0.0..0.1),
        }
    }
}

/// A queue of events in simulated time; ties keep insertion order, so one
/// seed gives one schedule.
#[derive(Debug)]
pub struct Queue<E> {
    events: BTreeMap<(Duration, u64), E>,
    seq: u64,
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Queue { events: BTreeMap::new(), seq: 0 }
    }
}

impl<E> Queue<E> {
    /// Schedules `event` at `at`.
    pub fn push(&mut self, at: Duration, event: E) {
        self.seq += 1;
        self.events.insert((at, self.seq), event);
    }

    /// The earliest event, if any.
    pub fn pop(&mut self) -> Option<(Duration, E)> {
        self.events.pop_first().map(|((at, _), e)| (at, e))
    }
}

/// The delivery times of one message: none if lost, two if duplicated.
pub fn delivery_times(rng: &mut SmallRng, now: Duration, faults: Faults) -> Vec<Duration> {
    if rng.random_bool(faults.loss) {
        return Vec::new();
    }
    let copies = if rng.random_bool(faults.duplicate) { 2 } else { 1 };
    (0..copies)
        .map(|_| {
            let base = Duration::from_micros(rng.random_range(100..3_000));
            let late = if rng.random_bool(faults.reorder) {
                Duration::from_micros(rng.random_range(5_000..60_000))
            } else {
                Duration::ZERO
            };
            now + base + late
        })
        .collect()
}

/// Which hosts can reach each other: hosts in the same group can.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    group: Vec<u8>,
}

impl Partition {
    /// Everyone connected.
    pub fn healed(hosts: usize) -> Partition {
        Partition { group: vec![0; hosts] }
    }

    /// A random split of the hosts (at least two) into two non-empty sides.
    pub fn split(rng: &mut SmallRng, hosts: usize) -> Partition {
        assert!(hosts > 1, "one host cannot be split");
        loop {
            let group: Vec<u8> = (0..hosts).map(|_| u8::from(rng.random_bool(0.5))).collect();
            if group.contains(&0) && group.contains(&1) {
                return Partition { group };
            }
        }
    }

    /// `host` cut off from everyone (its seeds unreachable), the rest as
    /// they were.
    pub fn isolate(&self, host: usize) -> Partition {
        let mut group = self.group.clone();
        group[host] = u8::MAX;
        Partition { group }
    }

    /// `host` back with `like`'s side.
    pub fn rejoin(&self, host: usize, like: usize) -> Partition {
        let mut group = self.group.clone();
        group[host] = group[like];
        Partition { group }
    }

    /// Whether `a` reaches `b`.
    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.group[a] == self.group[b]
    }

    /// Whether no split is in force.
    pub fn is_healed(&self) -> bool {
        self.group.iter().all(|g| *g == self.group[0])
    }

    /// The sides, as lists of hosts.
    pub fn sides(&self) -> Vec<Vec<usize>> {
        let mut sides: BTreeMap<u8, Vec<usize>> = BTreeMap::new();
        for (host, g) in self.group.iter().enumerate() {
            sides.entry(*g).or_default().push(host);
        }
        sides.into_values().collect()
    }
}
