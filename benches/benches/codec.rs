//! Frame encode and decode of every lock message (one message per frame).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use swimlock_benches::{frame_of, sample_messages};
use swimlock_wire::frame::{ClusterId, decode_lock, encode_lock, split_frame};

fn codec(c: &mut Criterion) {
    let cluster = ClusterId::from_name("swimlock");
    let mut encode = c.benchmark_group("encode");
    for (name, msg) in sample_messages() {
        let frame = frame_of(msg);
        let len = encode_lock(&frame, cluster).expect("encodes").len();
        encode.throughput(Throughput::Bytes(len as u64));
        encode.bench_function(name, |b| b.iter(|| encode_lock(black_box(&frame), cluster).expect("encodes")));
    }
    encode.finish();
    let mut decode = c.benchmark_group("decode");
    for (name, msg) in sample_messages() {
        let datagram = encode_lock(&frame_of(msg), cluster).expect("encodes");
        decode.throughput(Throughput::Bytes(datagram.len() as u64));
        decode.bench_function(name, |b| {
            b.iter(|| {
                let (_, body) = split_frame(black_box(&datagram), cluster).expect("header");
                decode_lock(body).expect("decodes")
            })
        });
    }
    decode.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
