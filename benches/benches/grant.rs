//! The coordinator's grant/release path without I/O: a single-node
//! cluster (its own coordinator; messages to itself are delivered inside
//! the machine) doing lock+unlock pairs for distinct clients and names.
//! Throughput is pairs per second.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use swimlock_benches::{drain, name, single_node};
use swimlock_wire::ClientId;

const NAMES: usize = 1024;

fn grant_release(c: &mut Criterion) {
    let names: Vec<_> = (0..NAMES).map(name).collect();
    let mut group = c.benchmark_group("coordinator");
    group.throughput(Throughput::Elements(1));
    group.bench_function("lock_unlock_pair", |b| {
        let mut n = single_node();
        let now = Duration::from_millis(10);
        let mut i = 0usize;
        b.iter(|| {
            let k = i % NAMES;
            i += 1;
            let client = ClientId(k as u64 + 1);
            n.lock(now, client, names[k].clone(), Duration::from_secs(10));
            assert_eq!(drain(&mut n), 1);
            n.unlock(now, client, &names[k]).expect("held");
            drain(&mut n);
        })
    });
    group.bench_function("try_lock_unlock_pair", |b| {
        let mut n = single_node();
        let now = Duration::from_millis(10);
        let mut i = 0usize;
        b.iter(|| {
            let k = i % NAMES;
            i += 1;
            let client = ClientId(k as u64 + 1);
            n.try_lock(now, client, names[k].clone());
            assert_eq!(drain(&mut n), 1);
            n.unlock(now, client, &names[k]).expect("held");
            drain(&mut n);
        })
    });
    group.finish();
}

criterion_group!(benches, grant_release);
criterion_main!(benches);
