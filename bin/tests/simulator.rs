//! The deterministic simulator over many seeds, and the seeds that once
//! found bugs.

use std::time::Duration;

use swimlock::sim::{RunConfig, parse_mode, print_failure, run, run_seeds};
use swimlock_lock::Mode;

/// Scripted views: the scenario decides who sees whom, and when.
fn base(nodes: usize) -> RunConfig {
    RunConfig::new(0, nodes)
}

/// Real SWIM membership over the simulated network.
fn gossip(nodes: usize) -> RunConfig {
    RunConfig { gossip: true, ..RunConfig::new(0, nodes) }
}

fn assert_clean(summary: &swimlock::sim::Summary, base: &RunConfig) {
    for failure in &summary.failures {
        let replay = run(RunConfig { seed: failure.seed, trace: true, ..base.clone() });
        print_failure(&replay, base, false);
    }
    assert!(summary.failures.is_empty(), "{}", summary.line());
}

#[test]
fn one_seed_gives_one_trace() {
    for cfg in [base(5), gossip(5)] {
        let a = run(RunConfig { seed: 7, ..cfg.clone() });
        let b = run(RunConfig { seed: 7, ..cfg.clone() });
        let c = run(RunConfig { seed: 8, ..cfg.clone() });
        assert_eq!(a.trace_hash, b.trace_hash);
        assert_eq!(a.counts.steps, b.counts.steps);
        assert_ne!(a.trace_hash, c.trace_hash);
    }
}

#[test]
fn a_thousand_seeds_keep_every_invariant() {
    let base = base(5);
    let summary = run_seeds(0..1_000, &base, 2);
    println!("{}", summary.line());
    assert!(
        summary.counts.grants > 10_000 && summary.counts.merges > 100 && summary.counts.failovers > 100,
        "{}",
        summary.line()
    );
    assert_clean(&summary, &base);
}

#[test]
fn real_membership_keeps_every_invariant() {
    let base = gossip(5);
    let summary = run_seeds(30_000..30_300, &base, 2);
    println!("{}", summary.line());
    assert!(summary.counts.merges > 100 && summary.counts.duplicates > 50, "{}", summary.line());
    assert_clean(&summary, &base);
}

/// Majority mode has no exception to invariant 1. Before leases and the
/// lock-delay for departed holders, 3 of 8,000 seeds (and 4 of 10,000 with
/// long waits) had a minority node keep a lock past the majority's grant.
#[test]
fn majority_mode_never_has_two_holders_anywhere() {
    for (mut base, seeds, long_waits) in [
        (base(5), 10_000..10_300, false),
        (gossip(5), 11_000..11_300, false),
        (gossip(5), 12_000..12_300, true),
    ] {
        base.mode = parse_mode("majority", 5).unwrap();
        base.long_waits = long_waits;
        assert!(matches!(base.mode, Mode::Majority { .. }));
        let summary = run_seeds(seeds, &base, 2);
        println!("{}", summary.line());
        assert_eq!(summary.counts.duplicates, 0, "a majority never has two sides granting");
        assert!(summary.counts.pauses > 0 && summary.counts.restarts > 0, "{}", summary.line());
        assert_clean(&summary, &base);
    }
}

/// Requests made during the faults that wait for a minute are, once the
/// cluster has converged, all granted or queued at the coordinator (checked
/// at the end of every run). Before the fix a lock request held back behind
/// its client's unlock across a coordinator change kept an id the new
/// coordinator took as finished: 886 of 1000 gossip seeds (and 857 of 1000
/// scripted ones) ended with such a request waiting for nothing.
#[test]
fn waiting_requests_are_never_forgotten() {
    for (mut base, seeds) in [(gossip(5), 40_000..40_300), (base(5), 41_000..41_300)] {
        base.long_waits = true;
        let summary = run_seeds(seeds, &base, 2);
        println!("{}", summary.line());
        assert_clean(&summary, &base);
    }
}

/// Seeds that found bugs, with what they found. The schedules they name
/// belong to the simulator as it was then; they stay as cheap extra seeds.
#[test]
fn regression_seeds() {
    let scripted = [
        8,   // a repeat of a request sent before its round re-synced a member from a stale snapshot
        43,  // a restarted coordinator alone repeated its tokens (now: durable term floor)
        73,  // a duplicate lost to a grant whose answer never arrived
        333, // grants judged when received instead of when issued
        583, // a late answer's term raised the issuer only for later grants
        801, // DUPLICATE-LOCK overtook the grant it revoked
    ];
    let summary = run_seeds(scripted.into_iter(), &base(5), 2);
    assert_clean(&summary, &base(5));
    let mut majority = base(5);
    majority.mode = parse_mode("majority", 5).unwrap();
    // 10054 and 10107: a new round's table forgot holders out of reach;
    // 10006: lock-delay timers spun while grants were held.
    let summary = run_seeds([10_006, 10_054, 10_107].into_iter(), &majority, 2);
    assert_clean(&summary, &majority);
    // 170: a late LOCK-INFO-REQ of an older round rolled a member back;
    // 4 and 12: a member back from its own group was never re-synced;
    // 1743: a late report re-installed a grant already declared a duplicate,
    // and the same token was granted again.
    let summary = run_seeds([4, 12, 170, 543, 560, 991, 1743].into_iter(), &gossip(5), 2);
    assert_clean(&summary, &gossip(5));
    // Majority mode, from the issue on restarts and pauses: 3059, 6055 and
    // 9162 (and 3008, 4783, 5039, 6906 with long waits) had a minority node
    // keep its lock after the majority granted it again.
    let mut majority = gossip(5);
    majority.mode = parse_mode("majority", 5).unwrap();
    let summary = run_seeds([3_059, 6_055, 9_162].into_iter(), &majority, 2);
    assert_clean(&summary, &majority);
    majority.long_waits = true;
    let summary = run_seeds([3_008, 4_783, 5_039, 6_906].into_iter(), &majority, 2);
    assert_clean(&summary, &majority);
    // 30207: a restarted coordinator granted under a term a member had
    // already seen granted (before terms travelled in gossip); 40020 (long
    // waits): a stale coordinator back from a pause granted beside its
    // successor.
    // 2067 (scripted): a member paused past failure detection came back,
    // took a view without the coordinator for a departure and granted at
    // once, trusting the old coordinator's short leases (the simulator did
    // not tell a scripted node of its gap, as an agent's membership does).
    // 1903 (scripted): a coordinator paused 4.5 s kept its pre-pause view
    // (the view computed meanwhile was superseded) and granted on it after
    // its stale period; a resumed node now gets the current view promptly.
    let summary = run_seeds([1_903, 2_067].into_iter(), &base(5), 2);
    assert_clean(&summary, &base(5));
    let summary = run_seeds([30_207].into_iter(), &gossip(5), 2);
    assert_clean(&summary, &gossip(5));
    // 9683 and 11 more of 10,000: foca sent "you are down" to a live
    // coordinator after a suspicion of it was refuted; while its renewal
    // backed off it answered no probe, the others dropped it and granted,
    // and it kept granting to its own clients (now: it holds still from
    // "you are down" to the view after its renewal).
    let falsely_down = [1_239, 1_586, 2_055, 4_787, 4_998, 5_951, 7_077, 7_909, 8_227, 8_990, 9_360, 9_683];
    let summary = run_seeds(falsely_down.into_iter(), &gossip(5), 2);
    assert_clean(&summary, &gossip(5));
    // Found while fixing those: 366, a member renewed after "you are down"
    // kept a paused member in its view (foca probes nobody until spoken to)
    // and granted beside it; 893, two members renewed at once and each
    // waited for the other; 1131, a coordinator paused at 4.805 s was out of
    // a view 248 ms later, and its successor trusted its own clients'
    // leases to be shorter than failure detection; 9186, a held coordinator
    // counted as serving.
    let summary = run_seeds([366, 893, 1_131, 9_186].into_iter(), &gossip(5), 2);
    assert_clean(&summary, &gossip(5));
    // 30057 granted inside another holder's lease once a coordinator
    // re-asked a member at once on its HELLO (before the falsely-down
    // fixes); the re-ask is back, the seed stays.
    let summary = run_seeds([30_057].into_iter(), &gossip(5), 2);
    assert_clean(&summary, &gossip(5));
    // 1762 (with witnessed own leases): a paused member applied a grant of
    // a loss-made split brain after its coordinator had crashed and come
    // back as a new identity; the checker lost track of who granted it.
    let summary = run_seeds([1_762].into_iter(), &gossip(5), 2);
    assert_clean(&summary, &gossip(5));
    // 173 (scripted, with sudden crashes): a restarted host whose only live
    // peer crashed before they met formed a group of its own and reused a
    // lower term; the checker now treats a scripted view of one host as a
    // group of its own, as a join timeout is with real membership.
    let summary = run_seeds([173].into_iter(), &base(5), 2);
    assert_clean(&summary, &base(5));
    // 5853 and 8414 (with the refuted-suspicion filter and witnessed own
    // leases): an older node merged with a group whose coordinator had just
    // seen a lock holder leave; the new coordinator never saw that member
    // and granted inside its lease. The former coordinator now reports it.
    let summary = run_seeds([5_853, 8_414].into_iter(), &gossip(5), 2);
    assert_clean(&summary, &gossip(5));
    // 2123 and 7475 (found with the re-ask back): a node paused while it
    // joined gave up on its seed before reading the answers queued in its
    // socket, formed a group of its own and granted; its hold, reported
    // when it joined, cleared the lock-delay of a departed holder of the
    // same lock, whose next waiter was then granted inside that lease.
    let summary = run_seeds([2_123, 7_475].into_iter(), &gossip(5), 2);
    assert_clean(&summary, &gossip(5));
    // 3595 (found with foca's refused "you are down" dropped): a node
    // restarted while its only seed was across a partition; the member on
    // its side still addressed its previous process, so it never met that
    // member, formed a group of its own after its join timeout and granted
    // beside it (now: it announces to a member that addresses an earlier
    // process at its address).
    // 4482 (same batch): a node left alone granted under a term another
    // node, alone too, had used: each formed its group while the other was
    // paused, and nothing reached it meanwhile. Two components of one, as
    // after a join timeout; the checker took a paused host for a reachable
    // one.
    let summary = run_seeds([3_595, 4_482].into_iter(), &gossip(5), 2);
    assert_clean(&summary, &gossip(5));
    let waits = RunConfig { long_waits: true, ..gossip(5) };
    let summary = run_seeds([40_020].into_iter(), &waits, 2);
    assert_clean(&summary, &waits);
}

/// The batches quoted when an issue touching the protocol is resolved:
/// 10,000 seeds each of real membership, scripted views, and majority mode
/// with long waits. Minutes long, so only on request:
/// `cargo test --release --test simulator long_batches -- --ignored --nocapture`.
#[test]
#[ignore = "10,000 seeds per batch: run by hand before resolving"]
fn long_batches() {
    let mut majority = RunConfig { long_waits: true, ..gossip(5) };
    majority.mode = parse_mode("majority", 5).unwrap();
    let mut failed = false;
    for (label, base) in [("gossip", gossip(5)), ("scripted", base(5)), ("majority --long-waits", majority)] {
        let summary = run_seeds(0..10_000, &base, 2);
        println!("{label}: {}", summary.line());
        for f in &summary.failures {
            println!("  seed {}: {:?}", f.seed, f.violation);
        }
        failed |= !summary.failures.is_empty();
    }
    assert!(!failed, "some seeds broke an invariant (listed above)");
}

#[test]
fn small_and_large_clusters() {
    for nodes in [1, 2, 3, 9] {
        for mut base in [base(nodes), gossip(nodes)] {
            base.fault_phase = Duration::from_secs(8);
            let summary = run_seeds(20_000..20_030, &base, 2);
            assert_clean(&summary, &base);
        }
    }
}

/// `SWIMLOCK_SEED=S cargo test --release --test simulator replay -- --ignored --nocapture`
/// prints the whole trace of one seed (also `SWIMLOCK_NODES`, `SWIMLOCK_MODE=majority`,
/// `SWIMLOCK_MEMBERSHIP=scripted`, `SWIMLOCK_LONG_WAITS=1`).
#[test]
#[ignore = "a tool for replaying one seed"]
fn replay() {
    let seed = std::env::var("SWIMLOCK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let nodes = std::env::var("SWIMLOCK_NODES").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut cfg = RunConfig { seed, trace: true, ..base(nodes) };
    cfg.gossip = std::env::var("SWIMLOCK_MEMBERSHIP").as_deref() != Ok("scripted");
    cfg.long_waits = std::env::var("SWIMLOCK_LONG_WAITS").is_ok();
    if std::env::var("SWIMLOCK_MODE").as_deref() == Ok("majority") {
        cfg.mode = parse_mode("majority", 5).unwrap();
    }
    let outcome = run(cfg);
    for line in &outcome.trace {
        println!("{line}");
    }
    println!("{:?}", outcome.violation);
}
