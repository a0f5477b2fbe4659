//! The floor: a raw UDP request/response round trip between two sockets on
//! 127.0.0.1, the two ends in different threads, with the payload size of
//! a lock request datagram.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::new_hist;

/// Round trips per floor measurement, at most.
const ROUNDS: u64 = 2_000;
/// Time per floor measurement, at most.
const MAX_TIME: Duration = Duration::from_millis(300);
/// Below this p50 the other vCPU was awake (the ~4 µs mode).
const BUSY_BELOW_US: f64 = 10.0;
/// At or above this p50 each round trip paid an idle wake-up (the 60-80 µs
/// mode). Between the two: some round trips of each kind.
const IDLE_FROM_US: f64 = 40.0;

/// One floor measurement.
#[derive(Clone, Debug)]
pub struct Floor {
    /// Round trip times, nanoseconds.
    pub hist: Histogram<u64>,
}

impl Floor {
    /// p50 in µs.
    pub fn p50_us(&self) -> f64 {
        self.hist.value_at_quantile(0.5) as f64 / 1e3
    }

    /// `busy` (~4 µs), `idle-wakeup` (60-80 µs) or `mixed` (between):
    /// which loopback mode the measurement saw.
    pub fn mode(&self) -> &'static str {
        match self.p50_us() {
            p if p < BUSY_BELOW_US => "busy",
            p if p >= IDLE_FROM_US => "idle-wakeup",
            _ => "mixed",
        }
    }
}

/// Measures the floor in two fresh threads (blocking sockets).
pub async fn measure(payload: usize) -> std::io::Result<Floor> {
    tokio::task::spawn_blocking(move || measure_blocking(payload)).await.map_err(std::io::Error::other)?
}

fn measure_blocking(payload: usize) -> std::io::Result<Floor> {
    let echo = UdpSocket::bind("127.0.0.1:0")?;
    let ping = UdpSocket::bind("127.0.0.1:0")?;
    echo.set_read_timeout(Some(Duration::from_millis(100)))?;
    ping.set_read_timeout(Some(Duration::from_millis(500)))?;
    ping.connect(echo.local_addr()?)?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo_stop = stop.clone();
    let echo_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + MAX_TIME + Duration::from_secs(2);
        while !echo_stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        }
    });
    let request = vec![0x5au8; payload];
    let mut buf = [0u8; 2048];
    let mut hist = new_hist();
    let start = Instant::now();
    let mut result = Ok(());
    for _ in 0..ROUNDS {
        if start.elapsed() > MAX_TIME {
            break;
        }
        let t = Instant::now();
        if let Err(e) = ping.send(&request).and_then(|_| ping.recv(&mut buf)) {
            result = Err(e);
            break;
        }
        let _ = hist.record(t.elapsed().as_nanos() as u64);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = echo_thread.join();
    result?;
    Ok(Floor { hist })
}
