//! The control-plane benchmark: real etcd (3 members on loopback) and three real daemons
//! at the packaged lease TTL, faults injected for real (SIGTERM, kill -9, kill -9 with the
//! daemon restarted as systemd would), each repeated; p50/p99 against the goals of
//! issue 8. Writes target/bench/control-plane.{json,md} and prints the table.
//!
//!   cargo bench --bench control_plane            # the full run (20 repeats each)
//!   cargo bench --bench control_plane -- --quick # 3 repeats (what the test command runs)
//!
//! Figures this suite does not measure yet are listed as "not measured", never left out.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etcd_client::{Client, WatchOptions, WatchStream};
use serde_json::json;
use support::cluster::{client, Daemon, Etcd, ACTING_KEY};

/// The packaged default (config `daemon.lease_ttl_secs`).
const LEASE_TTL_SECS: u64 = 2;
/// etcd as milvus-fleet renders it (config `etcd.heartbeat_interval_ms`,
/// `etcd.election_timeout_ms`): it grants leases down to 1 s.
const ETCD_TUNING: [&str; 2] = ["--heartbeat-interval=50", "--election-timeout=500"];

struct Row {
    figure: &'static str,
    goal: &'static str,
    /// Some((limit, unit)) when the goal is "p99 <= limit".
    limit: Option<f64>,
    unit: &'static str,
    samples: Vec<f64>,
    note: String,
    peer: &'static str,
}

impl Row {
    fn new(
        figure: &'static str,
        goal: &'static str,
        limit: Option<f64>,
        unit: &'static str,
        peer: &'static str,
    ) -> Self {
        Self {
            figure,
            goal,
            limit,
            unit,
            samples: vec![],
            note: String::new(),
            peer,
        }
    }

    fn percentile(&self, p: f64) -> Option<f64> {
        let mut sorted = self.samples.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        if sorted.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    fn verdict(&self) -> &'static str {
        match (self.limit, self.percentile(99.0)) {
            (_, None) => "not measured",
            (None, Some(_)) => "reported",
            (Some(limit), Some(p99)) if p99 <= limit => "met",
            _ => "MISSED",
        }
    }

    fn measured(&self) -> String {
        let (Some(p50), Some(p99)) = (self.percentile(50.0), self.percentile(99.0)) else {
            return "-".into();
        };
        let n = self.samples.len();
        let unit = self.unit;
        // Small values keep two decimals, so 0.13 % is not shown as a goal-meeting 0.1 %.
        let show = |v: f64| {
            if v < 1.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.1}")
            }
        };
        if n == 1 {
            format!("{} {unit}", show(p50)).trim_end().to_owned()
        } else {
            format!("p50 {} / p99 {} {unit} (n={n})", show(p50), show(p99))
        }
    }
}

/// Waits on `watch` (opened before the fault) for an acting write of a term above
/// `old_term`; returns the new (node, term) and the time since `since`.
async fn next_acting(
    watch: &mut WatchStream,
    old_term: i64,
    since: Instant,
) -> Option<(String, i64, Duration)> {
    let deadline = since + Duration::from_secs(30);
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let message = tokio::time::timeout(left, watch.message())
            .await
            .ok()?
            .ok()??;
        for event in message.events() {
            let Some(kv) = event.kv() else { continue };
            let value = kv.value_str().unwrap_or_default();
            let Some((node, term)) = value.rsplit_once(' ') else {
                continue;
            };
            let term: i64 = term.parse().unwrap_or(0);
            if term > old_term {
                return Some((node.to_owned(), term, since.elapsed()));
            }
        }
    }
}

async fn current_acting(client: &mut Client) -> Option<(String, i64)> {
    let answer = client.get(ACTING_KEY, None).await.ok()?;
    let value = answer.kvs().first()?.value_str().ok()?.to_owned();
    let (node, term) = value.rsplit_once(' ')?;
    Some((node.to_owned(), term.parse().ok()?))
}

/// The leader that is acting now (waits until one does).
async fn settled_leader(client: &mut Client) -> (String, i64) {
    let start = Instant::now();
    loop {
        if let Some(acting) = current_acting(client).await {
            return acting;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no leader acts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn watch_acting(client: &mut Client) -> WatchStream {
    client
        .watch(ACTING_KEY, Some(WatchOptions::new()))
        .await
        .unwrap()
}

fn by_name<'a>(daemons: &'a mut [Daemon], name: &str) -> &'a mut Daemon {
    daemons.iter_mut().find(|d| d.name == name).unwrap()
}

/// One GET over a daemon's local socket; the status code.
fn local_get(socket: &Path, path: &str) -> Option<u16> {
    let mut stream = UnixStream::connect(socket).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}

fn rss_kb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_ticks(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let repeats = if quick { 3 } else { 20 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rows = runtime.block_on(run(repeats, quick));
    report(&rows, repeats, quick);
}

/// The leader's host lost: kill -9, the daemon stays dead until a new leader acts (then
/// it comes back as a follower). Milliseconds to the new leader acting.
async fn lose_leader(
    client: &mut Client,
    daemons: &mut [Daemon],
    leader: &mut String,
    term: &mut i64,
) -> f64 {
    let mut watch = watch_acting(client).await;
    let since = Instant::now();
    let dead = by_name(daemons, leader);
    dead.signal("-KILL");
    dead.reap();
    let (next, next_term, took) = next_acting(&mut watch, *term, since)
        .await
        .expect("a new leader after the loss");
    by_name(daemons, leader).start();
    (*leader, *term) = (next, next_term);
    tokio::time::sleep(Duration::from_millis(500)).await;
    took.as_secs_f64() * 1000.0
}

/// etcd (tuned as rendered) and three daemons at `ttl_secs`, in a temporary directory.
struct Cluster {
    daemons: Vec<Daemon>,
    client: Client,
    etcd: Etcd,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(ttl_secs: u64) -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        let etcd = Etcd::start_with(dir.path(), &ETCD_TUNING);
        let client = client(&etcd).await;
        let daemons = ["n1", "n2", "n3"]
            .iter()
            .map(|n| {
                let mut d = Daemon::prepare_with_ttl(dir.path(), n, &etcd.endpoints, ttl_secs);
                d.start();
                d
            })
            .collect();
        Self {
            daemons,
            client,
            etcd,
            dir,
        }
    }
}

async fn run(repeats: usize, quick: bool) -> Vec<Row> {
    let Cluster {
        mut daemons,
        mut client,
        etcd,
        dir: _dir,
    } = Cluster::start(LEASE_TTL_SECS).await;

    let mut graceful = Row::new(
        "graceful leader stop (SIGTERM) to new leader acting",
        "p99 <= 25 ms",
        Some(25.0),
        "ms",
        "196 / 227 / 351 ms",
    );
    let mut restarted = Row::new("leader daemon killed (kill -9), restarted 200 ms later as systemd does, to a leader acting again", "p99 <= 500 ms", Some(500.0), "ms", "10.3 / 13.6 / 15.2 s");
    let mut lost = Row::new(
        "leader lost (kill -9, not restarted) to new leader acting, lease TTL 2 s",
        "p99 <= 1.5 s (needs TTL 1 s)",
        Some(1500.0),
        "ms",
        "10.3 / 13.6 / 15.2 s",
    );
    let mut ready = Row::new(
        "daemon start to local API answering",
        "p99 <= 50 ms",
        Some(50.0),
        "ms",
        "667 / 772 / 909 ms",
    );
    let mut latency = Row::new(
        "API `status` latency at 100 req/s (local socket)",
        "p99 <= 5 ms",
        Some(5.0),
        "ms",
        "",
    );
    let mut rss = Row::new(
        "daemon idle RSS (a follower)",
        "<= 15 MB",
        Some(15.0),
        "MB",
        "55.8 MB",
    );
    let mut cpu = Row::new(
        "daemon idle CPU (a follower)",
        "<= 0.1% of a core",
        Some(0.1),
        "%",
        "0.35%",
    );
    let mut deb = Row::new(".deb size", "<= 8 MB", Some(8.0), "MB", "no package");

    let (mut leader, mut term) = settled_leader(&mut client).await;
    for _ in 0..repeats {
        // Graceful stop.
        let mut watch = watch_acting(&mut client).await;
        let since = Instant::now();
        by_name(&mut daemons, &leader).signal("-TERM");
        let (next, next_term, took) = next_acting(&mut watch, term, since)
            .await
            .expect("a new leader after SIGTERM");
        graceful.samples.push(took.as_secs_f64() * 1000.0);
        let old = by_name(&mut daemons, &leader);
        old.reap();
        old.start();
        (leader, term) = (next, next_term);
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Crash, the daemon restarted on its live host.
        let mut watch = watch_acting(&mut client).await;
        let since = Instant::now();
        let crashed = by_name(&mut daemons, &leader);
        crashed.signal("-KILL");
        crashed.reap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        crashed.start();
        let (next, next_term, took) = next_acting(&mut watch, term, since)
            .await
            .expect("a leader after the restart");
        restarted.samples.push(took.as_secs_f64() * 1000.0);
        (leader, term) = (next, next_term);
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Host lost: the daemon stays dead until a new leader acts.
        let took = lose_leader(&mut client, &mut daemons, &mut leader, &mut term).await;
        lost.samples.push(took);
    }

    // Start to answering: a follower restarted, its socket polled every millisecond.
    let follower = daemons
        .iter()
        .find(|d| d.name != leader)
        .unwrap()
        .name
        .clone();
    for _ in 0..repeats.max(5) {
        let daemon = by_name(&mut daemons, &follower);
        daemon.signal("-TERM");
        daemon.reap();
        let socket: PathBuf = daemon.runtime.join("api.sock");
        let _ = std::fs::remove_file(&socket);
        let since = Instant::now();
        daemon.start();
        while local_get(&socket, "/v1/status") != Some(200) {
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "the daemon's API did not answer"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        ready.samples.push(since.elapsed().as_secs_f64() * 1000.0);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Status latency at 100 requests per second.
    let socket = by_name(&mut daemons, &follower).runtime.join("api.sock");
    let requests = if quick { 200 } else { 1000 };
    let mut next = Instant::now();
    for _ in 0..requests {
        let started = Instant::now();
        assert_eq!(local_get(&socket, "/v1/status"), Some(200));
        latency
            .samples
            .push(started.elapsed().as_secs_f64() * 1000.0);
        next += Duration::from_millis(10);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }

    // Idle: RSS and CPU of a follower over a quiet window.
    let pid = by_name(&mut daemons, &follower).pid().unwrap();
    let window = Duration::from_secs(if quick { 5 } else { 30 });
    let ticks_per_sec: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    let before = cpu_ticks(pid).unwrap();
    tokio::time::sleep(window).await;
    let used = cpu_ticks(pid).unwrap() - before;
    cpu.samples
        .push(used / ticks_per_sec / window.as_secs_f64() * 100.0);
    cpu.note = format!("{used} ticks in {} s", window.as_secs());
    rss.samples.push(rss_kb(pid).unwrap() / 1024.0);

    let debs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    if let Some(size) = std::fs::read_dir(&debs)
        .ok()
        .and_then(|entries| {
            entries
                .flatten()
                .find(|e| e.path().extension().is_some_and(|x| x == "deb"))
        })
        .and_then(|e| e.metadata().ok())
    {
        deb.samples.push(size.len() as f64 / 1_000_000.0);
    } else {
        deb.note = "no .deb in target/debian: run scripts/build-packages.sh".into();
    }
    drop(daemons);
    drop(etcd);

    let mut rows = vec![graceful, restarted, lost];
    rows.extend(short_lease(repeats, quick).await);
    rows.extend([ready, latency, rss, cpu, deb]);
    for (figure, goal, peer) in NOT_YET {
        let mut row = Row::new(figure, goal, None, "", peer);
        row.note = "not measured by this suite yet".into();
        rows.push(row);
    }
    rows
}

/// A 1 s lease (what the rendered etcd allows): leader loss, and whether a lease that
/// short survives both cores saturated without a failover nobody asked for.
async fn short_lease(repeats: usize, quick: bool) -> Vec<Row> {
    const TTL: u64 = 1;
    let Cluster {
        mut daemons,
        mut client,
        etcd,
        dir: _dir,
    } = Cluster::start(TTL).await;
    let mut lost = Row::new(
        "leader lost (kill -9, not restarted) to new leader acting, lease TTL 1 s, etcd as rendered",
        "p99 <= 1.5 s",
        Some(1500.0),
        "ms",
        "10.3 / 13.6 / 15.2 s",
    );
    let (mut leader, mut term) = settled_leader(&mut client).await;
    for _ in 0..repeats {
        let took = lose_leader(&mut client, &mut daemons, &mut leader, &mut term).await;
        lost.samples.push(took);
    }

    // Saturation: twice as many spinning threads as cores, nothing else happens; every
    // new term in that window is a false failover.
    let window = Duration::from_secs(if quick { 15 } else { 600 });
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..cores * 2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let (_, before) = settled_leader(&mut client).await;
    let mut watch = watch_acting(&mut client).await;
    tokio::time::sleep(window).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Every term that acted in the window other than the one before it (terms are etcd
    // revisions, so a new term is a leadership change).
    let mut terms = std::collections::BTreeSet::new();
    while let Ok(Ok(Some(message))) =
        tokio::time::timeout(Duration::from_millis(300), watch.message()).await
    {
        for event in message.events() {
            let value = event
                .kv()
                .and_then(|kv| kv.value_str().ok())
                .unwrap_or_default();
            if let Some(term) = value
                .rsplit_once(' ')
                .and_then(|(_, t)| t.parse::<i64>().ok())
            {
                if term != before {
                    terms.insert(term);
                }
            }
        }
    }
    for spinner in spinners {
        spinner.join().unwrap();
    }
    let mut false_failovers = Row::new(
        "false failovers with both cores saturated, lease TTL 1 s",
        "0 in 10 minutes",
        Some(0.0),
        "",
        "",
    );
    false_failovers.samples.push(terms.len() as f64);
    false_failovers.note = format!("{} s, {} spinning threads", window.as_secs(), cores * 2);
    drop(daemons);
    drop(etcd);
    vec![lost, false_failovers]
}

/// Issue 8's figures that need the test hosts; listed so that a missing one shows.
const NOT_YET: [(&str, &str, &str); 7] = [
    (
        "writes accepted from a cut-off old leader after the new term starts",
        "0, in every run",
        "two leaders for 55 s",
    ),
    (
        "jobs resumed after leader loss",
        "100%, exactly once",
        "0 of 5",
    ),
    (
        "wedged (frozen) component to restarted, p99",
        "<= 10 s",
        "about 120 s",
    ),
    (
        "peer killed / frozen to alert, p99; alerts per event",
        "<= 5 s; exactly 1",
        "50-58 s; N-1 / never",
    ),
    (
        "`join` start to node healthy in status",
        "<= 15 s, 0 restarts elsewhere",
        "restarts MinIO on every peer",
    ),
    (
        "cluster size run in one go on this machine",
        "15 test hosts",
        "3-4",
    ),
    (
        "memory supervision adds per component unit",
        "<= 10 MB",
        "none (compose up -d, unsupervised)",
    ),
];

fn report(rows: &[Row], repeats: usize, quick: bool) {
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let json_rows: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "figure": r.figure, "goal": r.goal, "unit": r.unit,
                "samples": r.samples, "p50": r.percentile(50.0), "p99": r.percentile(99.0),
                "verdict": r.verdict(), "note": r.note, "peer": r.peer,
            })
        })
        .collect();
    let document =
        json!({ "suite": "control-plane", "quick": quick, "repeats": repeats, "rows": json_rows });
    std::fs::write(
        out.join("control-plane.json"),
        serde_json::to_string_pretty(&document).unwrap(),
    )
    .unwrap();
    let mut table =
        String::from("| figure | goal | measured | verdict | the peer |\n|---|---|---|---|---|\n");
    for r in rows {
        let measured = if r.note.is_empty() {
            r.measured()
        } else {
            format!("{} ({})", r.measured(), r.note)
        };
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.figure,
            r.goal,
            measured,
            r.verdict(),
            r.peer
        ));
    }
    std::fs::write(out.join("control-plane.md"), &table).unwrap();
    println!("{table}");
    println!("written: {}/control-plane.{{json,md}}", out.display());
}
