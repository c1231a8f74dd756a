//! The control-plane benchmark: real etcd (3 members on loopback, tuned as rendered) and
//! three real daemons at the packaged lease TTL, faults injected for real (SIGTERM,
//! kill -9, kill -9 with the daemon restarted as systemd would, SIGSTOP), each repeated;
//! p50/p99 against the goals of issue 8. Writes target/bench/control-plane.{json,md} and
//! prints the table. The figures that need whole hosts come from `cargo bench --bench hosts`.
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

use etcd_client::{Client, GetOptions, WatchOptions, WatchStream};
use serde_json::json;
use support::cluster::{client, Daemon, Etcd, ACTING_KEY};

/// The packaged default (config `daemon.lease_ttl_secs`).
const LEASE_TTL_SECS: u64 = 1;
const PREFIX: &str = "/milvus-fleet/elect/";
/// etcd as milvus-fleet renders it (config `etcd.heartbeat_interval_ms`,
/// `etcd.election_timeout_ms`): it grants leases down to 1 s.
const ETCD_TUNING: [&str; 2] = ["--heartbeat-interval=50", "--election-timeout=500"];

struct Row {
    figure: &'static str,
    goal: &'static str,
    /// Some(limit) when the goal is "p99 <= limit".
    limit: Option<f64>,
    /// Some(floor) when every sample must also be at least this (goals like "exactly 1").
    floor: Option<f64>,
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
            floor: None,
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

    /// A goal of exactly `value` in every sample.
    fn exactly(mut self, value: f64) -> Self {
        (self.limit, self.floor) = (Some(value), Some(value));
        self
    }

    fn verdict(&self) -> &'static str {
        let low_enough = self
            .floor
            .is_none_or(|floor| self.percentile(0.0).is_some_and(|lowest| lowest >= floor));
        let Some(p99) = self.percentile(99.0) else {
            return "not measured";
        };
        if self.limit.is_none() && self.floor.is_none() {
            "reported"
        } else if self.limit.is_none_or(|limit| p99 <= limit) && low_enough {
            "met"
        } else {
            "MISSED"
        }
    }

    fn measured(&self) -> String {
        let (Some(p50), Some(p99)) = (self.percentile(50.0), self.percentile(99.0)) else {
            return "-".into();
        };
        let n = self.samples.len();
        let unit = self.unit;
        // Small values keep two decimals, so 0.13 % is not shown as a goal-meeting 0.1 %
        // (nor 1.51 s as 1.5 s).
        let show = |v: f64| {
            if v < 10.0 {
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

/// The acting leader's name and a follower's.
async fn leader_and_follower(client: &mut Client, daemons: &[Daemon]) -> (String, String) {
    let (leader, _) = settled_leader(client).await;
    let follower = daemons.iter().find(|d| d.name != leader).unwrap();
    (leader, follower.name.clone())
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
        "leader lost (kill -9, not restarted) to new leader acting",
        "p99 <= 1.5 s",
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
        "daemon idle RSS (the leader, a follower)",
        "<= 15 MB",
        Some(15.0),
        "MB",
        "55.8 MB",
    );
    let mut cpu = Row::new(
        "daemon idle CPU (the leader, a follower)",
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

    let mut rows = vec![graceful, restarted, lost];
    rows.extend(jobs_across_leader_loss(&mut client, &mut daemons, repeats).await);
    rows.extend(zombie_writes(&mut client, &mut daemons, repeats).await);
    rows.extend(peer_alerts(&mut client, &mut daemons, repeats).await);
    let (leader, follower) = leader_and_follower(&mut client, &daemons).await;

    // Start to answering: a follower restarted, its socket polled every millisecond.
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

    // Idle: RSS and CPU of the leader and a follower over one quiet window.
    let pids = [
        by_name(&mut daemons, &leader).pid().unwrap(),
        by_name(&mut daemons, &follower).pid().unwrap(),
    ];
    let window = Duration::from_secs(if quick { 10 } else { 60 });
    let ticks_per_sec: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    let before = pids.map(|pid| cpu_ticks(pid).unwrap());
    tokio::time::sleep(window).await;
    let used: Vec<f64> = pids
        .iter()
        .zip(before)
        .map(|(pid, before)| cpu_ticks(*pid).unwrap() - before)
        .collect();
    for ticks in &used {
        cpu.samples
            .push(ticks / ticks_per_sec / window.as_secs_f64() * 100.0);
    }
    cpu.note = format!(
        "{} and {} ticks of {} ms in {} s",
        used[0],
        used[1],
        1000.0 / ticks_per_sec,
        window.as_secs()
    );
    for pid in pids {
        rss.samples.push(rss_kb(pid).unwrap() / 1024.0);
    }

    rows.push(saturated(&mut client, quick).await);
    drop(daemons);
    drop(etcd);

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
    rows.extend([ready, latency, rss, cpu, deb]);
    rows.extend(host_rows());
    rows.extend(client_view_rows());
    rows
}

/// A drill job through `daemon`'s local socket: its id.
fn submit_drill(daemon: &Daemon, steps: u32, sleep_ms: u64, resource: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_milvus-fleet"))
        .args(["job", "submit", "drill", "--steps", &steps.to_string()])
        .args(["--sleep-ms", &sleep_ms.to_string(), "--resource", resource])
        .arg("--socket")
        .arg(daemon.runtime.join("api.sock"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "job submit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A drill submitted through `daemon`, once its first step is committed: its id.
async fn drill_under_way(
    client: &mut Client,
    daemon: &Daemon,
    steps: u32,
    sleep_ms: u64,
    resource: &str,
) -> String {
    let id = submit_drill(daemon, steps, sleep_ms, resource);
    job_until(client, &id, |r| r["done_steps"].as_u64() >= Some(1)).await;
    id
}

/// The job record as etcd holds it.
async fn job(client: &mut Client, id: &str) -> serde_json::Value {
    let answer = client
        .get(format!("{PREFIX}jobs/{id}"), None)
        .await
        .unwrap();
    serde_json::from_slice(answer.kvs()[0].value()).unwrap()
}

/// Polls the job until `done` says so (at most 60 s); the record.
async fn job_until(
    client: &mut Client,
    id: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let record = job(client, id).await;
        if done(&record) {
            return record;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "job {id} stuck: {record}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_final(record: &serde_json::Value) -> bool {
    ["succeeded", "failed", "cancelled"].contains(&record["state"].as_str().unwrap_or(""))
}

/// Whether the job succeeded with every step's side effect written exactly once.
async fn ran_exactly_once(client: &mut Client, id: &str, steps: u32) -> bool {
    let record = job_until(client, id, is_final).await;
    let effects = client
        .get(
            format!("{PREFIX}drill-effects/{id}/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    record["state"] == "succeeded"
        && effects.kvs().len() == steps as usize
        && effects.kvs().iter().all(|kv| kv.version() == 1)
}

/// A job whose leader is lost (kill -9, not restarted) after its first step: resumed by
/// the next leader and finished with every step's effect recorded exactly once?
async fn jobs_across_leader_loss(
    client: &mut Client,
    daemons: &mut [Daemon],
    repeats: usize,
) -> Vec<Row> {
    const STEPS: u32 = 4;
    let mut not_resumed = Row::new(
        "jobs not resumed exactly once after leader loss (kill -9 mid-job)",
        "0 of N (100% resumed, exactly once)",
        Some(0.0),
        "",
        "5 of 5 lost; marked failed after 61-81 s",
    );
    let mut resumed_after = Row::new(
        "leader lost mid-job to the new leader's first step committed (steps take 300 ms)",
        "reported",
        None,
        "ms",
        "never",
    );
    let (mut leader, mut term) = settled_leader(client).await;
    for run in 0..repeats {
        let resource = format!("bench-job-{run}");
        let id = drill_under_way(client, by_name(daemons, &leader), STEPS, 300, &resource).await;
        let since = Instant::now();
        lose_leader(client, daemons, &mut leader, &mut term).await;
        let new_term = term;
        job_until(client, &id, |r| r["owner_term"].as_i64() == Some(new_term)).await;
        resumed_after
            .samples
            .push(since.elapsed().as_secs_f64() * 1000.0);
        let ok = ran_exactly_once(client, &id, STEPS).await;
        not_resumed.samples.push(if ok { 0.0 } else { 1.0 });
    }
    let failed = not_resumed.samples.iter().filter(|s| **s > 0.0).count();
    not_resumed.note = format!(
        "{} of {repeats} resumed, each of {STEPS} steps recorded once",
        repeats - failed
    );
    vec![not_resumed, resumed_after]
}

/// The old leader frozen (SIGSTOP) mid-step until the new leader has committed a step of
/// the same job, then thawed: every write etcd accepted after the new term began, made
/// under the old term, is a split-brain write. The old leader wakes with its step done
/// and tries to commit it; the term fence must refuse that.
async fn zombie_writes(client: &mut Client, daemons: &mut [Daemon], repeats: usize) -> Vec<Row> {
    const STEPS: u32 = 5;
    let mut accepted = Row::new(
        "writes accepted from a cut-off (frozen) old leader after the new term starts",
        "0, in every run",
        Some(0.0),
        "",
        "two leaders for 55 s",
    );
    let (mut leader, mut term) = settled_leader(client).await;
    let (mut refused_tries, mut stood_down) = (0, 0);
    for run in 0..repeats {
        let resource = format!("bench-zombie-{run}");
        let id = drill_under_way(client, by_name(daemons, &leader), STEPS, 400, &resource).await;
        let start_revision = current_revision(client).await;
        let mut watch = watch_acting(client).await;
        let zombie = leader.clone();
        let outcomes = |daemons: &mut [Daemon]| {
            let log = by_name(daemons, &zombie).log();
            (
                log.matches("no longer leads").count(),
                // Its own deadline passed ("lease unconfirmed"), or etcd said so.
                log.matches("reason=\"lease unconfirmed\"").count()
                    + log.matches("reason=\"lease lost\"").count(),
            )
        };
        let (fenced_before, lapsed_before) = outcomes(daemons);
        by_name(daemons, &zombie).signal("-STOP");
        let (next, next_term, _) = next_acting(&mut watch, term, Instant::now())
            .await
            .expect("a new leader while the old one is frozen");
        job_until(client, &id, |r| r["owner_term"].as_i64() == Some(next_term)).await;
        by_name(daemons, &zombie).signal("-CONT");
        // The thawed leader's step ends within its 400 ms sleep; give it time to try.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (fenced, lapsed) = outcomes(daemons);
        refused_tries += usize::from(fenced > fenced_before);
        stood_down += usize::from(lapsed > lapsed_before);
        let writes = old_term_writes(client, start_revision, term, next_term, &zombie).await;
        accepted.samples.push(writes as f64);
        assert!(ran_exactly_once(client, &id, STEPS).await, "job {id}");
        (leader, term) = (next, next_term);
    }
    accepted.note = format!(
        "{repeats} runs; thawed, the old leader saw its lease deadline passed and stood down in {stood_down}, tried a guarded commit and was refused in {refused_tries}"
    );
    vec![accepted]
}

/// etcd's revision now.
async fn current_revision(client: &mut Client) -> i64 {
    let answer = client.get(ACTING_KEY, None).await.unwrap();
    answer.header().unwrap().revision()
}

/// Writes under `prefix` after `since_revision` that etcd accepted after `new_term` began
/// and that carry `old_term` (a job record or step effect of that term, or the old
/// leader's acting record).
async fn old_term_writes(
    client: &mut Client,
    since_revision: i64,
    old_term: i64,
    new_term: i64,
    old_node: &str,
) -> usize {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(since_revision + 1);
    let mut history = client.watch(PREFIX, Some(options)).await.unwrap();
    let now = current_revision(client).await;
    let mut count = 0;
    let mut seen = since_revision;
    while seen < now {
        let Ok(Ok(Some(message))) =
            tokio::time::timeout(Duration::from_secs(5), history.message()).await
        else {
            break;
        };
        for event in message.events() {
            let Some(kv) = event.kv() else { continue };
            seen = seen.max(kv.mod_revision());
            if kv.mod_revision() <= new_term {
                continue;
            }
            let value = kv.value_str().unwrap_or_default();
            let old = match serde_json::from_str::<serde_json::Value>(value) {
                Ok(record) => record["owner_term"].as_i64() == Some(old_term),
                Err(_) => {
                    value == format!("term {old_term}") || value == format!("{old_node} {old_term}")
                }
            };
            count += usize::from(old);
        }
    }
    count
}

/// A follower killed (kill -9) or frozen (SIGSTOP): time to the leader's "down" alert, and
/// how many "down" alerts all daemons raised for that one event.
async fn peer_alerts(client: &mut Client, daemons: &mut [Daemon], repeats: usize) -> Vec<Row> {
    let mut killed = Row::new(
        "peer daemon killed (kill -9) to the leader's alert",
        "p99 <= 5 s",
        Some(5000.0),
        "ms",
        "50.3 / 54.1 / 58.1 s",
    );
    let mut frozen = Row::new(
        "peer daemon frozen (SIGSTOP) to the leader's alert",
        "p99 <= 5 s",
        Some(5000.0),
        "ms",
        "never (0 alerts in 130 s)",
    );
    let mut per_event = Row::new(
        "alerts per peer event (killed or frozen), all daemons",
        "exactly 1",
        None,
        "",
        "N-1 (2 of 3 nodes) / 0",
    )
    .exactly(1.0);
    let (_, follower) = leader_and_follower(client, daemons).await;
    let down = format!("peer {follower} is down");
    let recovered = format!("peer {follower} recovered");
    let count = |daemons: &[Daemon], text: &str| -> usize {
        daemons.iter().map(|d| d.log().matches(text).count()).sum()
    };
    for _ in 0..repeats {
        for (fault, row) in [("-KILL", &mut killed), ("-STOP", &mut frozen)] {
            let (downs, ups) = (count(daemons, &down), count(daemons, &recovered));
            let since = Instant::now();
            by_name(daemons, &follower).signal(fault);
            while count(daemons, &down) == downs && since.elapsed() < Duration::from_secs(30) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            row.samples.push(since.elapsed().as_secs_f64() * 1000.0);
            // Any second alert for the same event would come within a lease or two.
            tokio::time::sleep(Duration::from_secs(3 * LEASE_TTL_SECS)).await;
            per_event
                .samples
                .push((count(daemons, &down) - downs) as f64);
            let peer = by_name(daemons, &follower);
            if fault == "-KILL" {
                peer.reap();
                peer.start();
            } else {
                peer.signal("-CONT");
            }
            let since = Instant::now();
            while count(daemons, &recovered) == ups {
                assert!(
                    since.elapsed() < Duration::from_secs(30),
                    "no {recovered:?} alert"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    vec![killed, frozen, per_event]
}

/// Twice as many spinning threads as cores, nothing else happens; every new term in
/// that window is a false failover.
async fn saturated(client: &mut Client, quick: bool) -> Row {
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
    let (_, before) = settled_leader(client).await;
    let mut watch = watch_acting(client).await;
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
        "false failovers with both cores saturated",
        "0 in 10 minutes",
        Some(0.0),
        "",
        "",
    );
    false_failovers.samples.push(terms.len() as f64);
    false_failovers.note = format!("{} s, {} spinning threads", window.as_secs(), cores * 2);
    false_failovers
}

/// The figures measured on the test hosts by `cargo bench --bench hosts` (its JSON, when a
/// run left one); "not measured" rows otherwise, so that a missing figure shows.
fn host_rows() -> Vec<Row> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/hosts.json");
    let measured: Vec<serde_json::Value> = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|doc| doc["rows"].as_array().cloned())
        .unwrap_or_default();
    HOST_FIGURES
        .iter()
        .map(|(figure, goal, limit, floor, unit, peer)| {
            let mut row = Row::new(figure, goal, *limit, unit, peer);
            row.floor = *floor;
            match measured.iter().find(|r| r["figure"] == *figure) {
                Some(found) => {
                    row.samples = found["samples"]
                        .as_array()
                        .map(|s| s.iter().filter_map(|v| v.as_f64()).collect())
                        .unwrap_or_default();
                    row.note = found["note"].as_str().unwrap_or("").to_owned();
                }
                None => row.note = "run `cargo bench --bench hosts`".into(),
            }
            row
        })
        .collect()
}

/// The client's view of each data-plane fault, measured by `cargo bench --bench
/// client_view` (its JSON, when a run left one). Goals: the server's host lost, cut off or
/// frozen costs a client of a surviving load balancer at most a 10 s gap (p99); a
/// daemon's crash, restart or reinstall costs no failed search; no fault loses a flushed
/// row or runs two servers at once.
fn client_view_rows() -> Vec<Row> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/client-view.json");
    let measured: Vec<serde_json::Value> = std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|doc| doc["rows"].as_array().cloned())
        .unwrap_or_default();
    if measured.is_empty() {
        let mut row = Row::new(
            "client view of data-plane faults",
            "see benches/client_view.rs",
            Some(0.0),
            "",
            "",
        );
        row.note = "run `cargo bench --bench client_view`".into();
        return vec![row];
    }
    measured
        .iter()
        .map(|found| {
            let figure: &'static str = Box::leak(
                found["figure"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned()
                    .into_boxed_str(),
            );
            let host_fault = figure.contains("server's host");
            // Faults the server's node survives (its daemon's, membership changes): a
            // client must see no failed search.
            let survived = !host_fault;
            let internal = !figure.starts_with("client view");
            let (goal, limit, unit, peer) = if internal {
                ("reported", None, "s", "")
            } else if figure.ends_with("longest gap through a surviving load balancer") {
                if host_fault {
                    ("p99 <= 10 s", Some(10.0), "s", "")
                } else {
                    ("reported", None, "s", "")
                }
            } else if figure.ends_with("failed searches through surviving load balancers")
                || figure.ends_with("server process replaced")
            {
                if survived {
                    ("0", Some(0.0), "", "")
                } else {
                    ("reported", None, "", "")
                }
            } else if figure.ends_with("flushed rows missing afterwards")
                || figure.contains("saturated")
            {
                ("0", Some(0.0), "", "")
            } else {
                ("<= 1", Some(1.0), "", "")
            };
            let mut row = Row::new(figure, goal, limit, unit, peer);
            row.samples = found["samples"]
                .as_array()
                .map(|s| s.iter().filter_map(|v| v.as_f64()).collect())
                .unwrap_or_default();
            row.note = found["note"].as_str().unwrap_or("").to_owned();
            row
        })
        .collect()
}

/// Issue 8's figures that need whole test hosts (benches/hosts.rs measures them).
#[allow(clippy::type_complexity)]
const HOST_FIGURES: [(&str, &str, Option<f64>, Option<f64>, &str, &str); 8] = [
    (
        "leader host cut off (network) to a new leader acting",
        "p99 <= 1.5 s",
        Some(1.5),
        None,
        "s",
        "10.3 / 13.6 / 15.2 s",
    ),
    (
        "storage host killed (its etcd member lost) to the leader's alert",
        "<= 5 s; exactly 1",
        Some(5.0),
        None,
        "s",
        "50.3 / 54.1 / 58.1 s",
    ),
    (
        "compute node rebooted to up in status with its load balancer active",
        "reported",
        None,
        None,
        "s",
        "",
    ),
    (
        "wedged (frozen) component to restarted, p99",
        "<= 10 s",
        Some(10.0),
        None,
        "s",
        "about 120 s",
    ),
    (
        "`join` start to node healthy in status",
        "<= 15 s",
        Some(15.0),
        None,
        "s",
        "",
    ),
    (
        "component restarts on the other nodes during a join",
        "0",
        Some(0.0),
        None,
        "",
        "restarts MinIO on every peer",
    ),
    (
        "test hosts run as one cluster on this machine",
        "15",
        None,
        Some(15.0),
        "hosts",
        "3-4",
    ),
    (
        "memory supervision adds per component unit",
        "<= 10 MB",
        Some(10.0),
        None,
        "MB",
        "none (compose up -d, unsupervised); a foreground `docker compose up` ~90 MB",
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
