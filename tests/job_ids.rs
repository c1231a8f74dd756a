//! Job ids under load: 200 jobs submitted at once through two daemons on a real 3-member
//! etcd. (Its own test binary: each binary runs one etcd on addresses made from its pid.)

mod support;

use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use serde_json::Value;
use support::cluster::{cli, client, daemons, next_acting, Etcd, PREFIX};
use tempfile::TempDir;

/// 200 jobs on 200 resources, submitted as fast as two daemons' APIs take them, both at
/// once: 200 distinct records (an id drawn twice would overwrite one and leave its lock
/// held forever), all run, and every lock released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd-server: scripts/test-all.sh runs it"]
async fn two_hundred_jobs_from_two_daemons_get_distinct_records_and_release_every_lock() {
    let dir = TempDir::new().unwrap();
    let etcd = Etcd::start(dir.path());
    let mut client = client(&etcd).await;
    let daemons = daemons(dir.path(), &etcd);
    next_acting(&mut client, 0, Instant::now(), Duration::from_secs(15)).await;
    let sockets: Vec<_> = daemons[..2]
        .iter()
        .map(|d| d.runtime.join("api.sock"))
        .collect();
    // Four submitters per daemon at once: two requests to one daemon in the same
    // millisecond is what once made two jobs share an id.
    let ids: Vec<String> = std::thread::scope(|scope| {
        let submitters: Vec<_> = (0..8)
            .map(|worker| {
                let socket = &sockets[worker % 2];
                scope.spawn(move || {
                    (0..25)
                        .map(|n| {
                            let resource = format!("many-{worker}-{n}");
                            let out = cli(
                                socket,
                                &[
                                    "job",
                                    "submit",
                                    "drill",
                                    "--steps",
                                    "1",
                                    "--sleep-ms",
                                    "0",
                                    "--resource",
                                    &resource,
                                ],
                            );
                            assert!(
                                out.status.success(),
                                "submit {resource}: {}",
                                String::from_utf8_lossy(&out.stderr)
                            );
                            String::from_utf8_lossy(&out.stdout).trim().to_owned()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        submitters
            .into_iter()
            .flat_map(|s| s.join().unwrap())
            .collect()
    });
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 200, "job ids handed out: {ids:?}");
    let start = Instant::now();
    loop {
        let records = client
            .get(
                format!("{PREFIX}jobs/"),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        let succeeded = records
            .kvs()
            .iter()
            .filter(|kv| {
                serde_json::from_slice::<Value>(kv.value())
                    .is_ok_and(|job| job["state"] == "succeeded")
            })
            .count();
        let locks = client
            .get(
                format!("{PREFIX}locks/"),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap()
            .count();
        if records.kvs().len() == 200 && succeeded == 200 && locks == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{} records, {succeeded} succeeded, {locks} locks still held",
            records.kvs().len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(daemons);
    drop(etcd);
}
