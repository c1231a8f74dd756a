//! Leader election against a real 3-member etcd (Debian's etcd-server, on loopback)
//! with three real daemons: failover after a graceful stop, a crash, a crash with the
//! daemon restarted on its live host, and fencing of a frozen leader, checked in
//! etcd's own history. Bounds are loose (a loaded 2-core machine); the benchmark
//! measures the real figures.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, WatchOptions};
use support::cluster::{by_name, client, daemons, leader, next_acting, Etcd, ACTING_KEY, TTL_SECS};
use tempfile::TempDir;

/// Counts the acting writes in etcd's history from revision `from`: those of `old`
/// (node, term) accepted after revision `after`, and those of `new`.
async fn acting_writes(
    client: &mut Client,
    from: i64,
    old: &(String, i64),
    after: i64,
    new: &(String, i64),
) -> (usize, usize) {
    let now = client
        .get(ACTING_KEY, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut history = client
        .watch(
            ACTING_KEY,
            Some(WatchOptions::new().with_start_revision(from)),
        )
        .await
        .unwrap();
    let (mut old_after, mut new_writes, mut seen_to) = (0, 0, 0);
    while seen_to < now {
        let Ok(Ok(Some(message))) =
            tokio::time::timeout(Duration::from_secs(5), history.message()).await
        else {
            break;
        };
        for event in message.events() {
            let kv = event.kv().unwrap();
            seen_to = seen_to.max(kv.mod_revision());
            if event.event_type() != EventType::Put {
                continue;
            }
            let value = kv.value_str().unwrap();
            if value == format!("{} {}", old.0, old.1) && kv.mod_revision() > after {
                old_after += 1;
            }
            if value == format!("{} {}", new.0, new.1) {
                new_writes += 1;
            }
        }
    }
    assert!(seen_to >= now, "read etcd's history up to revision {now}");
    (old_after, new_writes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd-server: scripts/test-all.sh runs it"]
async fn leadership_moves_fast_and_a_deposed_leader_cannot_write() {
    let dir = TempDir::new().unwrap();
    let etcd = Etcd::start(dir.path());
    let mut client = client(&etcd).await;
    let mut daemons = daemons(dir.path(), &etcd);

    // One leader, and it acts under its term.
    let ((first, term), _) =
        next_acting(&mut client, 0, Instant::now(), Duration::from_secs(15)).await;
    assert_eq!(leader(&mut client).await, Some((first.clone(), term)));

    // Graceful stop: the leader resigns at once.
    let stopped = Instant::now();
    by_name(&mut daemons, &first).signal("-TERM");
    let ((second, term2), took) =
        next_acting(&mut client, term, stopped, Duration::from_secs(5)).await;
    assert_ne!(second, first);
    eprintln!("graceful failover: {took:?}");
    assert!(
        took < Duration::from_millis(1500),
        "graceful failover took {took:?}"
    );
    let old = by_name(&mut daemons, &first);
    assert_eq!(old.reap(), Some(0), "a clean exit on SIGTERM");
    assert!(
        old.log().contains("stopped being the leader"),
        "{}",
        old.log()
    );
    old.start();

    // Crash: the lease must run out; a new leader acts within TTL + 0.5 s (etcd's expiry
    // scan) plus slack for a loaded machine.
    let killed = Instant::now();
    by_name(&mut daemons, &second).signal("-KILL");
    let ((third, term3), took) = next_acting(
        &mut client,
        term2,
        killed,
        Duration::from_secs(TTL_SECS + 8),
    )
    .await;
    assert_ne!(third, second);
    eprintln!("crash failover: {took:?}");
    assert!(
        took < Duration::from_secs(TTL_SECS + 2),
        "crash failover took {took:?}"
    );
    by_name(&mut daemons, &second).reap();
    by_name(&mut daemons, &second).start();

    // Crash with the daemon restarted on its live host (what systemd does after
    // RestartSec=200ms): it revokes its predecessor's lease, so a leader acts again
    // well before the TTL.
    let killed = Instant::now();
    let crashed = by_name(&mut daemons, &third);
    crashed.signal("-KILL");
    crashed.reap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    crashed.start();
    let ((fourth, term4), took) = next_acting(
        &mut client,
        term3,
        killed,
        Duration::from_secs(TTL_SECS + 8),
    )
    .await;
    eprintln!("crash failover, daemon restarted after 200 ms: {took:?}");
    assert!(
        took < Duration::from_secs(TTL_SECS - 2),
        "failover with restart took {took:?}"
    );

    // A frozen leader is deposed; after it thaws, not one of its writes is accepted.
    let frozen = by_name(&mut daemons, &fourth);
    frozen.signal("-STOP");
    let ((fifth, term5), _) = next_acting(
        &mut client,
        term4,
        Instant::now(),
        Duration::from_secs(TTL_SECS + 8),
    )
    .await;
    assert_ne!(fifth, fourth);
    frozen.signal("-CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (old_after, new_writes) = acting_writes(
        &mut client,
        term4,
        &(fourth.clone(), term4),
        term5,
        &(fifth.clone(), term5),
    )
    .await;
    assert_eq!(
        old_after, 0,
        "writes of the old term accepted after the new term began"
    );
    assert!(new_writes >= 2, "the new leader keeps acting");
    let thawed = by_name(&mut daemons, &fourth).log();
    assert!(
        thawed.matches("stopped being the leader").count() >= 1,
        "{thawed}"
    );

    // The hardest case for fencing: the leader's lease ends while it is frozen for less
    // than the TTL, so when it thaws its own clock says it still leads. Only the guard on
    // its writes (the term compared in etcd) stops them.
    let ((leader_now, term6), _) = next_acting(
        &mut client,
        term5 - 1,
        Instant::now(),
        Duration::from_secs(5),
    )
    .await;
    let victim = by_name(&mut daemons, &leader_now);
    let lease: i64 = fs::read_to_string(victim.state.join("leader-lease"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    victim.signal("-STOP");
    client.lease_revoke(lease).await.unwrap();
    let ((successor, term7), _) =
        next_acting(&mut client, term6, Instant::now(), Duration::from_secs(5)).await;
    assert_ne!(successor, leader_now);
    by_name(&mut daemons, &leader_now).signal("-CONT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (old_after, new_writes) = acting_writes(
        &mut client,
        term6,
        &(leader_now.clone(), term6),
        term7,
        &(successor.clone(), term7),
    )
    .await;
    assert_eq!(
        old_after, 0,
        "a thawed leader whose lease was revoked wrote after the new term began"
    );
    assert!(new_writes >= 1);
    let log = by_name(&mut daemons, &leader_now).log();
    assert!(
        log.contains("reason=\"fenced\"") || log.contains("reason=\"lease lost\""),
        "{log}"
    );
    drop(daemons);
    drop(etcd);
}
