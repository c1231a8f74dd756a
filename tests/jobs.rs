//! Durable jobs on a real 3-member etcd with three real daemons: a job whose leader is
//! killed after every step is resumed by the next leader and finishes with each step's
//! effect recorded exactly once; a second job on a locked resource is refused; cancel
//! stops a job at a step boundary; bad input is refused with a message.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use serde_json::Value;
use support::cluster::{by_name, cli, client, daemons, leader, next_acting, Etcd, PREFIX};
use tempfile::TempDir;

fn submit(socket: &Path, steps: u32, sleep_ms: u32) -> String {
    let out = cli(
        socket,
        &[
            "job",
            "submit",
            "drill",
            "--steps",
            &steps.to_string(),
            "--sleep-ms",
            &sleep_ms.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "submit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn job(client: &mut Client, id: &str) -> Value {
    let response = client
        .get(format!("{PREFIX}jobs/{id}"), None)
        .await
        .unwrap();
    serde_json::from_slice(response.kvs()[0].value()).unwrap()
}

async fn wait_final(client: &mut Client, id: &str, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let record = job(client, id).await;
        if ["succeeded", "failed", "cancelled"].contains(&record["state"].as_str().unwrap()) {
            return record;
        }
        assert!(
            start.elapsed() < limit,
            "job {id} did not end within {limit:?}: {record}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each step's side effect: (step key, how many times it was written).
async fn effects(client: &mut Client, id: &str) -> Vec<(String, i64)> {
    let response = client
        .get(
            format!("{PREFIX}drill-effects/{id}/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    response
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_owned(), kv.version()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd-server: scripts/test-all.sh runs it"]
async fn jobs_survive_their_leader_are_locked_per_resource_and_cancel_at_a_step() {
    let dir = TempDir::new().unwrap();
    let mut etcd = Etcd::start(dir.path());
    let mut client = client(&etcd).await;
    let mut daemons = daemons(dir.path(), &etcd);
    let socket = daemons[0].runtime.join("api.sock");
    let ((_, first_term), _) =
        next_acting(&mut client, 0, Instant::now(), Duration::from_secs(15)).await;

    let id = submit(&socket, 5, 400);
    // The resource is locked while the job lives.
    let second = cli(&socket, &["job", "submit", "drill", "--steps", "1"]);
    assert!(!second.status.success());
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(
        message.contains(&format!("is locked by job {id}")),
        "{message}"
    );

    // Kill the leader (and restart it, as systemd would) right after every step it commits.
    let start = Instant::now();
    let (mut seen, mut kills) = (0, 0);
    loop {
        let record = job(&mut client, &id).await;
        if record["state"] == "succeeded" {
            break;
        }
        let done = record["done_steps"].as_u64().unwrap();
        if done > seen && done < 5 {
            // Between two leaders there is briefly none: try again at the next poll.
            if let Some((node, _)) = leader(&mut client).await {
                seen = done;
                let victim = by_name(&mut daemons, &node);
                victim.signal("-KILL");
                victim.reap();
                tokio::time::sleep(Duration::from_millis(200)).await;
                victim.start();
                kills += 1;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "job did not finish: {record}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        kills >= 4,
        "the leader was killed after each of the first steps ({kills})"
    );
    let record = job(&mut client, &id).await;
    assert!(
        record["owner_term"].as_i64().unwrap() > first_term,
        "finished under a later term"
    );
    // `job follow` of an ended job prints its whole log and succeeds.
    let followed = cli(&socket, &["job", "follow", &id]);
    assert!(
        followed.status.success(),
        "{}",
        String::from_utf8_lossy(&followed.stderr)
    );
    let log = String::from_utf8_lossy(&followed.stdout);
    assert_eq!(log.matches("done (term").count(), 5, "{log}");
    assert!(log.trim_end().ends_with("succeeded"), "{log}");
    let written = effects(&mut client, &id).await;
    assert_eq!(written.len(), 5, "{written:?}");
    assert!(
        written.iter().all(|(_, times)| *times == 1),
        "each effect exactly once: {written:?}"
    );

    // The lock went with the job; cancel stops the next one at a step boundary.
    let id = submit(&socket, 50, 200);
    let start = Instant::now();
    while job(&mut client, &id).await["done_steps"].as_u64().unwrap() < 2 {
        assert!(start.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancel = cli(&socket, &["job", "cancel", &id]);
    assert!(
        cancel.status.success(),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    // Following it to its end: non-zero, since it did not succeed.
    let followed = cli(&socket, &["job", "follow", &id]);
    assert_eq!(followed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&followed.stderr).contains("ended cancelled"));
    let record = wait_final(&mut client, &id, Duration::from_secs(10)).await;
    assert_eq!(record["state"], "cancelled");
    let done = record["done_steps"].as_u64().unwrap();
    assert!(done < 50);
    assert_eq!(
        effects(&mut client, &id).await.len() as u64,
        done,
        "no effect past the last committed step"
    );
    let again = cli(&socket, &["job", "cancel", &id]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("has already ended"));

    // Bad input: refused with a message, nothing queued.
    let unknown = cli(&socket, &["job", "cancel", "nope"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no job \"nope\""));
    let zero = cli(&socket, &["job", "submit", "drill", "--steps", "0"]);
    assert_eq!(zero.status.code(), Some(2));
    let bad_resource = cli(&socket, &["job", "submit", "drill", "--resource", "a/b"]);
    assert!(String::from_utf8_lossy(&bad_resource.stderr).contains("resource \"a/b\": use 1-64"));
    let listed = cli(&socket, &["job", "list", "--json"]);
    let jobs: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        jobs.as_array().unwrap().len(),
        2,
        "only the two accepted jobs exist"
    );

    // An etcd member (not raft's leader) is stopped: the commands an operator runs right
    // after it still work, although the daemon learns of it only at its next probe.
    let mut follower = None;
    for (index, url) in etcd.endpoints.iter().enumerate() {
        let mut one = Client::connect([url], None).await.unwrap();
        let status = one.status().await.unwrap();
        if status.leader() != status.header().unwrap().member_id() {
            follower = Some(index);
        }
    }
    etcd.stop(follower.expect("two of three members follow raft's leader"));
    for round in 0..10 {
        let listed = cli(&socket, &["job", "list"]);
        assert!(
            listed.status.success(),
            "job list {round} after the member stopped: {}",
            String::from_utf8_lossy(&listed.stderr)
        );
        let resource = format!("after-crash-{round}");
        let submitted = cli(
            &socket,
            &[
                "job",
                "submit",
                "drill",
                "--steps",
                "1",
                "--resource",
                &resource,
            ],
        );
        assert!(
            submitted.status.success(),
            "job submit {round} after the member stopped: {}",
            String::from_utf8_lossy(&submitted.stderr)
        );
    }
    drop(daemons);
    drop(etcd);
}
