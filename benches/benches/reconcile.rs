//! Reconciliation of 100,000 held locks: a coordinator whose merged view
//! holds a member reporting 100k locks (3,125 LOCK-INFO-RSP parts) builds
//! its table from the answer. Peak memory and bytes per held lock are
//! printed by the `reconcile_mem` bench.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use swimlock_benches::{ReconcileFixture, reconcile as finish};

const LOCKS: usize = 100_000;

fn reconcile(c: &mut Criterion) {
    let mut fixture = ReconcileFixture::new(LOCKS);
    let member = fixture.member_id;
    let mut group = c.benchmark_group("reconcile");
    group.sample_size(10);
    group.throughput(Throughput::Elements(LOCKS as u64));
    group.bench_function("100k_held", |b| {
        b.iter_batched(
            || fixture.round(),
            |(coord, answer)| finish(member, coord, answer),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, reconcile);
criterion_main!(benches);
