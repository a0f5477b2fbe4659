//! Link latency without netem: a relay per node, in the node's namespace,
//! that the node's agent advertises as its address. Every datagram to the
//! node reaches the relay first and is handed to the agent after a delay
//! drawn uniformly from `base ± jitter` (so datagrams can overtake each
//! other). Partition rules still apply: they match the sender's address at
//! the relay's input.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// The delay every datagram to a node gets.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    /// Mean one-way delay.
    pub base: Duration,
    /// Largest deviation from `base`, either way.
    pub jitter: Duration,
}

/// One node's relay; stops (and its thread ends) on drop.
pub struct Relay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay in namespace `netns` listening on `listen`, handing
    /// datagrams to `agent` after `latency`.
    pub fn start(netns: &str, listen: SocketAddr, agent: SocketAddr, latency: Latency, seed: u64) -> Relay {
        let path = format!("/run/netns/{netns}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            setns(&ns, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            let socket = UdpSocket::bind(listen).unwrap_or_else(|e| panic!("relay bind {listen}: {e}"));
            ready_tx.send(()).unwrap();
            run(socket, agent, latency, SmallRng::seed_from_u64(seed), &stopping);
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("relay started");
        Relay { stop, thread: Some(thread) }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(socket: UdpSocket, agent: SocketAddr, latency: Latency, mut rng: SmallRng, stop: &AtomicBool) {
    let mut queue: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 65_536];
    let jitter = latency.jitter.as_micros() as i64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while queue.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
            let Reverse((_, _, bytes)) = queue.pop().unwrap();
            // A full socket buffer of a paused agent drops, as a kernel would.
            let _ = socket.send_to(&bytes, agent);
        }
        let wait = queue
            .peek()
            .map_or(Duration::from_millis(5), |Reverse((at, _, _))| at.saturating_duration_since(now));
        let _ =
            socket.set_read_timeout(Some(wait.clamp(Duration::from_micros(100), Duration::from_millis(5))));
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            let offset = if jitter > 0 { rng.random_range(-jitter..=jitter) } else { 0 };
            let delay = (latency.base.as_micros() as i64 + offset).max(0) as u64;
            seq += 1;
            queue.push(Reverse((Instant::now() + Duration::from_micros(delay), seq, buf[..len].to_vec())));
        }
    }
}
