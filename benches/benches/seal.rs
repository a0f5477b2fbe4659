//! Sealing and opening a typical lock datagram (one LOCK request), against
//! the same datagram in clear (insecure mode). Target: each at most 2 µs.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use swimlock::node::Security;
use swimlock::node::seal::{Key, Keyring, Sealing};
use swimlock_benches::{frame_of, sample_messages};
use swimlock_wire::frame::{Kind, write_lock_body};

fn security(sealed: bool, salt: u8) -> Security {
    if sealed {
        Security::Sealed { keyring: Keyring::new(Key::from_bytes([9; 32])), salt: [salt; 16] }
    } else {
        Security::Insecure
    }
}

fn seal(c: &mut Criterion) {
    let (_, msg) = sample_messages().into_iter().find(|(name, _)| *name == "lock_req").expect("lock_req");
    let frame = frame_of(msg);
    for (group, sealed) in [("sealed", true), ("plain", false)] {
        let mut g = c.benchmark_group(group);
        let mut sender = Sealing::new(frame.from, "swimlock", security(sealed, 1));
        let sample = sender.seal(frame.to, Kind::Lock, |out| write_lock_body(&frame, out)).expect("seals");
        g.throughput(Throughput::Bytes(sample.len() as u64));
        // Encoding the frame and sealing it, as the node does per datagram.
        g.bench_function("seal_lock_req", |b| {
            b.iter(|| {
                sender
                    .seal(black_box(frame.to), Kind::Lock, |out| write_lock_body(&frame, out))
                    .expect("seals")
            })
        });
        // Opening (a fresh datagram each time, so the replay window accepts
        // it); the sealing of the input is not timed.
        let mut receiver = Sealing::new(frame.to, "swimlock", security(sealed, 2));
        let mut scratch = Vec::with_capacity(2048);
        g.bench_function("open_lock_req", |b| {
            b.iter_batched(
                || sender.seal(frame.to, Kind::Lock, |out| write_lock_body(&frame, out)).expect("seals"),
                |d| receiver.open(black_box(&d), &mut scratch).map(|o| o.body.len()).expect("opens"),
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

criterion_group!(benches, seal);
criterion_main!(benches);
