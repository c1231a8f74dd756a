//! Peer-down alerts on a real 3-member etcd with three real daemons: a follower killed
//! (kill -9) and a follower frozen (SIGSTOP) each raise exactly one "down" alert, on the
//! leader only, within the lease TTL plus slack, and exactly one "recovered" when the
//! daemon is back; /metrics counts them.

mod support;

use std::time::{Duration, Instant};

use support::cluster::{by_name, client, daemons, next_acting, Daemon, Etcd, TTL_SECS};
use tempfile::TempDir;

/// How many lines of every daemon's log contain `text`, by daemon.
fn count(daemons: &[Daemon], text: &str) -> Vec<(String, usize)> {
    daemons
        .iter()
        .map(|d| (d.name.clone(), d.log().matches(text).count()))
        .collect()
}

/// Waits until `leader`'s log holds `text` once; returns how long that took.
async fn alert(daemons: &[Daemon], leader: &str, text: &str, since: Instant) -> Duration {
    let limit = Duration::from_secs(TTL_SECS + 5);
    loop {
        let d = daemons.iter().find(|d| d.name == leader).unwrap();
        if d.log().contains(text) {
            return since.elapsed();
        }
        assert!(since.elapsed() < limit, "no {text:?} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd-server: scripts/test-all.sh runs it"]
async fn the_leader_raises_one_alert_per_lost_peer_and_one_recovered() {
    let dir = TempDir::new().unwrap();
    let etcd = Etcd::start(dir.path());
    let mut etcd_client = client(&etcd).await;
    let mut daemons = daemons(dir.path(), &etcd);
    let ((leader, _), _) =
        next_acting(&mut etcd_client, 0, Instant::now(), Duration::from_secs(15)).await;
    let followers: Vec<String> = daemons
        .iter()
        .map(|d| d.name.clone())
        .filter(|n| *n != leader)
        .collect();
    // Every daemon registered and seen before the faults; no alert at start.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        count(&daemons, "is down").iter().all(|(_, n)| *n == 0),
        "no alert while every daemon runs"
    );

    // kill -9: down once, on the leader only; recovered once after a restart.
    let killed = &followers[0];
    let down = format!("peer {killed} is down");
    let started = Instant::now();
    by_name(&mut daemons, killed).signal("-KILL");
    let took = alert(&daemons, &leader, &down, started).await;
    eprintln!("peer killed -> alert: {took:?}");
    by_name(&mut daemons, killed).reap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expected: Vec<(String, usize)> = daemons
        .iter()
        .map(|d| (d.name.clone(), usize::from(d.name == leader)))
        .collect();
    assert_eq!(
        count(&daemons, &down),
        expected,
        "exactly one alert, from the leader"
    );
    by_name(&mut daemons, killed).start();
    let recovered = format!("peer {killed} recovered");
    alert(&daemons, &leader, &recovered, Instant::now()).await;

    // SIGSTOP: the frozen daemon's lease runs out like a dead one's.
    let frozen = &followers[1];
    let down = format!("peer {frozen} is down");
    let started = Instant::now();
    by_name(&mut daemons, frozen).signal("-STOP");
    let took = alert(&daemons, &leader, &down, started).await;
    eprintln!("peer frozen -> alert: {took:?}");
    by_name(&mut daemons, frozen).signal("-CONT");
    let recovered = format!("peer {frozen} recovered");
    alert(&daemons, &leader, &recovered, Instant::now()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&daemons, &down), expected);
    assert_eq!(count(&daemons, &recovered), expected);

    // The leader's metrics count both events.
    let metrics = by_name(&mut daemons, &leader).metrics();
    assert!(
        metrics.contains("milvus_fleet_peer_alerts_total{event=\"down\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("milvus_fleet_peer_alerts_total{event=\"recovered\"} 2"));
}
