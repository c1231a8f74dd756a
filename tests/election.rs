//! Leader election against a real 3-member etcd (Debian's etcd-server, on loopback)
//! with three real daemons: failover after a graceful stop, a crash, a crash with the
//! daemon restarted on its live host, and fencing of a frozen leader, checked in
//! etcd's own history. Bounds are loose (a loaded 2-core machine); the benchmark
//! measures the real figures.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, WatchOptions};
use tempfile::TempDir;

const CLUSTER: &str = "elect";
const LEADER_KEY: &str = "/milvus-fleet/elect/leader";
const ACTING_KEY: &str = "/milvus-fleet/elect/leader-acting";

/// Three etcd members on their own loopback addresses; killed when dropped.
struct Etcd {
    members: Vec<Child>,
    endpoints: Vec<String>,
}

impl Etcd {
    fn start(dir: &Path) -> Self {
        // A /24 of loopback no other test uses: 127.<pid-derived>.<pid-derived>.1..3.
        let pid = std::process::id();
        let base = format!("127.{}.{}", 100 + pid % 100, 1 + (pid / 100) % 250);
        let ips: Vec<String> = (1..=3).map(|i| format!("{base}.{i}")).collect();
        for ip in &ips {
            for port in [2379, 2380] {
                TcpListener::bind((ip.as_str(), port))
                    .unwrap_or_else(|e| panic!("{ip}:{port} is taken: {e}"));
            }
        }
        let cluster: Vec<String> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("m{i}=http://{ip}:2380"))
            .collect();
        let members = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let log = fs::File::create(dir.join(format!("etcd-m{i}.log"))).unwrap();
                Command::new("etcd")
                    .args([
                        format!("--name=m{i}"),
                        format!("--data-dir={}", dir.join(format!("m{i}")).display()),
                        format!("--listen-client-urls=http://{ip}:2379"),
                        format!("--advertise-client-urls=http://{ip}:2379"),
                        format!("--listen-peer-urls=http://{ip}:2380"),
                        format!("--initial-advertise-peer-urls=http://{ip}:2380"),
                        format!("--initial-cluster={}", cluster.join(",")),
                        "--initial-cluster-state=new".into(),
                        "--initial-cluster-token=election-test".into(),
                    ])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("etcd from etcd-server (scripts/install-prereqs.sh)")
            })
            .collect();
        let endpoints = ips.iter().map(|ip| format!("http://{ip}:2379")).collect();
        Self { members, endpoints }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = member.kill();
            let _ = member.wait();
        }
    }
}

/// One `milvus-fleet daemon` with its own state directory and log.
struct Daemon {
    name: String,
    child: Option<Child>,
    config: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn new(dir: &Path, name: &str, endpoints: &[String]) -> Self {
        let nodes: String = (1..=3)
            .map(|i| format!("[[nodes]]\nname = \"n{i}\"\naddress = \"10.9.0.{i}\"\n\n"))
            .collect();
        let quoted: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let config = dir.join(format!("{name}.toml"));
        fs::write(
            &config,
            format!(
                "[local]\nnode_name = \"{name}\"\n[cluster]\nname = \"{CLUSTER}\"\n\
                 [etcd]\nmode = \"external\"\nendpoints = [{}]\n[object_storage]\nkind = \"s3\"\n\
                 endpoint = \"s3.example:9000\"\n[daemon]\nlease_ttl_secs = 2\n\n{nodes}",
                quoted.join(", ")
            ),
        )
        .unwrap();
        let state = dir.join(format!("state-{name}"));
        fs::create_dir_all(&state).unwrap();
        let mut daemon = Self {
            name: name.to_owned(),
            child: None,
            config,
            state,
            log: dir.join(format!("{name}.log")),
        };
        daemon.start();
        daemon
    }

    fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_milvus-fleet"))
            .args(["daemon", "--no-dropins", "--config"])
            .arg(&self.config)
            .env("STATE_DIRECTORY", &self.state)
            .env("MILVUS_FLEET_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for the process to end and returns its exit code (None: killed by a signal).
    fn reap(&mut self) -> Option<i32> {
        self.child.take().unwrap().wait().unwrap().code()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The leader key: (node, term).
async fn leader(client: &mut Client) -> Option<(String, i64)> {
    let response = client.get(LEADER_KEY, None).await.ok()?;
    let kv = response.kvs().first()?;
    Some((kv.value_str().unwrap().to_owned(), kv.create_revision()))
}

/// The leader that last acted: (node, term) from the acting key's value.
async fn acting(client: &mut Client) -> Option<(String, i64)> {
    let response = client.get(ACTING_KEY, None).await.ok()?;
    let kv = response.kvs().first()?;
    let (node, term) = kv.value_str().unwrap().split_once(' ')?;
    Some((node.to_owned(), term.parse().ok()?))
}

/// Polls until a leader other than `old_term` has acted; returns it and the time taken.
async fn next_acting(
    client: &mut Client,
    old_term: i64,
    since: Instant,
    limit: Duration,
) -> ((String, i64), Duration) {
    loop {
        if let Some((node, term)) = acting(client).await {
            if term > old_term {
                return ((node, term), since.elapsed());
            }
        }
        assert!(
            since.elapsed() < limit,
            "no new leader acted within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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

fn by_name<'a>(daemons: &'a mut [Daemon], name: &str) -> &'a mut Daemon {
    daemons.iter_mut().find(|d| d.name == name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd-server: scripts/test-all.sh runs it"]
async fn leadership_moves_fast_and_a_deposed_leader_cannot_write() {
    let dir = TempDir::new().unwrap();
    let etcd = Etcd::start(dir.path());
    let mut client = {
        let start = Instant::now();
        loop {
            if let Ok(mut c) = Client::connect(&etcd.endpoints, None).await {
                if c.status().await.is_ok() {
                    break c;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "etcd did not come up"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let mut daemons: Vec<Daemon> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| Daemon::new(dir.path(), n, &etcd.endpoints))
        .collect();

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

    // Crash: the lease (2 s) must run out; a new leader acts within TTL + 1 s.
    let killed = Instant::now();
    by_name(&mut daemons, &second).signal("-KILL");
    let ((third, term3), took) =
        next_acting(&mut client, term2, killed, Duration::from_secs(8)).await;
    assert_ne!(third, second);
    eprintln!("crash failover: {took:?}");
    assert!(
        took < Duration::from_millis(3000 + 1000),
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
    let ((fourth, term4), took) =
        next_acting(&mut client, term3, killed, Duration::from_secs(8)).await;
    eprintln!("crash failover, daemon restarted after 200 ms: {took:?}");
    assert!(
        took < Duration::from_millis(1900),
        "failover with restart took {took:?}"
    );

    // A frozen leader is deposed; after it thaws, not one of its writes is accepted.
    let frozen = by_name(&mut daemons, &fourth);
    frozen.signal("-STOP");
    let ((fifth, term5), _) =
        next_acting(&mut client, term4, Instant::now(), Duration::from_secs(8)).await;
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
