//! The data plane as a Milvus client sees it. Three storage+compute test hosts run the
//! standalone-ha topology with the real Milvus server (the site's S3 on a fourth host,
//! which joins and leaves as a compute node at the end); a pymilvus client searches ten
//! times a second through every node's load balancer during each fault. Per fault it
//! reports the longest gap a client of a surviving load balancer saw, the searches that
//! failed there, the flushed rows missing afterwards, and the most Milvus servers seen
//! running at once (every live `milvus run standalone` process of the hosts, sampled
//! every 0.25 s from outside them, so a cut-off or thawed host counts too; a frozen one
//! does not serve and is not counted).
//! Writes target/bench/client-view.json; `cargo bench --bench control_plane` shows its rows.
//!
//!   cargo bench --bench client_view            # 10 runs of each host fault
//!   cargo bench --bench client_view -- --quick # 1 run of each
//!
//! `MILVUS_FLEET_BENCH_FAULTS=power,cut` runs only the named parts (soak, kill, restart,
//! reinstall, power, cut, freeze, join, remove) and writes client-view-partial.json;
//! `MILVUS_FLEET_BENCH_RUNS=N` sets the runs of each host fault.
//!
//! Needs root, systemd-nspawn, a Docker engine and the built .deb (scripts/test-all.sh
//! installs and builds them).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::dataplane::{
    client, client_python, client_result, images, init_h1, install_package, prepare_hosts,
    start_site_s3, wait_until, SearchView, Searching,
};
use support::{deb_path, repo, Hosts};

const PKG: &str = "/var/cache/milvus-fleet/milvus-fleet.deb";
const PREFIX: &str = "mfcv";
/// The cluster's nodes; h4 serves the site's S3 (and joins as a compute node late).
const NODES: [&str; 3] = ["h1", "h2", "h3"];
const ROWS: u64 = 1000;

/// `MILVUS_FLEET_BENCH_SESSION_TTL=N` runs the cluster with `milvus.session_ttl_secs = N`
/// (to weigh a shorter TTL's handover against its false expiries); else the default.
fn session_ttl() -> Option<u32> {
    std::env::var("MILVUS_FLEET_BENCH_SESSION_TTL")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// Whether this run measures `part` (every part unless MILVUS_FLEET_BENCH_FAULTS names some).
fn wanted(part: &str) -> bool {
    std::env::var("MILVUS_FLEET_BENCH_FAULTS")
        .map(|list| list.split(',').any(|p| p.trim() == part))
        .unwrap_or(true)
}

fn partial() -> bool {
    std::env::var_os("MILVUS_FLEET_BENCH_FAULTS").is_some()
}

fn fleet_toml(hosts: &Hosts) -> String {
    let milvus = session_ttl()
        .map(|ttl| format!("\n[milvus]\nsession_ttl_secs = {ttl}\n"))
        .unwrap_or_default();
    format!(
        r#"[cluster]
name = "client-view"
topology = "standalone-ha"

[object_storage]
kind = "s3"
endpoint = "{s3}:9000"
bucket = "client-view"

[images]
etcd = "local/etcd:test"
nginx = "local/nginx:test"
milvus = "local/milvus:test"
{milvus}"#,
        s3 = hosts.address("h4"),
    )
}

/// The hosts whose Milvus standalone server process runs and is not stopped (frozen),
/// found from outside: each process's cgroup names its host.
fn serving_hosts() -> Vec<String> {
    let hosts: std::collections::BTreeSet<String> = serving_processes()
        .into_iter()
        .map(|(host, _)| host)
        .collect();
    hosts.into_iter().collect()
}

/// (host, pid) of every live Milvus standalone server process of the hosts. A process
/// counts while it can run its own code: not stopped (a frozen host), not a zombie, and
/// not exiting (killed: the kernel runs no more of its code while it tears it down).
fn serving_processes() -> Vec<(String, u32)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        if !cmdline.starts_with(b"milvus\0run\0standalone") {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // After "(comm)": state is the first field, flags the seventh (stat's 3rd and 9th).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
        let state = fields.first().copied().unwrap_or("?");
        const PF_EXITING: u64 = 0x4;
        let exiting = fields
            .get(6)
            .and_then(|f| f.parse::<u64>().ok())
            .is_some_and(|flags| flags & PF_EXITING != 0);
        if exiting || matches!(state, "T" | "t" | "Z" | "X") {
            continue;
        }
        let cgroup = std::fs::read_to_string(path.join("cgroup")).unwrap_or_default();
        let pid: u32 = entry.file_name().to_string_lossy().parse().unwrap_or(0);
        for host in NODES.iter().chain(["h4"].iter()) {
            if cgroup.contains(&format!("/{PREFIX}/{host}/")) {
                found.push((host.to_string(), pid));
            }
        }
    }
    found
}

/// Samples [`serving_hosts`] every 0.25 s while a fault runs; keeps the most at once.
struct ServerSampler {
    stop: std::sync::Arc<AtomicBool>,
    most: std::sync::Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl ServerSampler {
    fn start() -> Self {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let most = std::sync::Arc::new(AtomicUsize::new(0));
        let (s, m) = (stop.clone(), most.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(serving_hosts().len(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Self { stop, most, thread }
    }

    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.most.load(Ordering::Relaxed)
    }
}

/// The one host that serves, waiting for it (a failover in progress).
fn the_server(what: &str) -> String {
    let mut server = String::new();
    wait_until(what, Duration::from_secs(300), || {
        let serving = serving_hosts();
        if serving.len() == 1 {
            server = serving[0].clone();
            true
        } else {
            false
        }
    });
    server
}

/// With MILVUS_FLEET_BENCH_TIMELINE set: what the daemons and systemd of `hosts` logged
/// since `since` (epoch seconds), the server's own log left out but for its follower's
/// kills.
fn timeline(hosts: &Hosts, of: &[String], since: &str) {
    if std::env::var_os("MILVUS_FLEET_BENCH_TIMELINE").is_none() {
        return;
    }
    eprintln!("fault at {since}");
    for host in of {
        eprintln!(
            "--- {host}:\n{}",
            hosts.sh_ok(
                host,
                &format!(
                    "journalctl -q -o short-precise --since=@{since} -u milvus-fleet \
                     -u milvus-fleet-standalone -u milvus-fleet-lb \
                     | awk '!/ mf-/ || /killing container/' | head -40"
                )
            )
        );
    }
}

/// With MILVUS_FLEET_BENCH_TIMELINE set: the warnings and errors the server on `host`
/// logged in the last 60 s, which covers its start (why an outlier's server took long
/// to answer), without the refused searches of its loading.
fn server_log(hosts: &Hosts, host: &str) {
    if std::env::var_os("MILVUS_FLEET_BENCH_TIMELINE").is_none() {
        return;
    }
    eprintln!(
        "--- the server's log on {host} (warnings, errors):\n{}",
        hosts.sh_ok(
            host,
            "journalctl -q -o short-precise --since=-60s -u milvus-fleet-standalone \
             | grep ' mf-' | grep -E 'WARN|ERROR|panic' \
             | grep -vE 'search|shards|failed to get channels|Failed to execute task' \
             | cut -c1-400 | head -80"
        )
    );
}

/// One fault's figures, over its runs.
#[derive(Default)]
struct FaultRows {
    fault: &'static str,
    /// Per run: the longest gap among the surviving load balancers' clients.
    gap: Vec<f64>,
    failed: Vec<f64>,
    missing: Vec<f64>,
    servers: Vec<f64>,
    /// Per run: 1 when the server process after the fault is not the one before (a
    /// restart or a move), else 0.
    new_server: Vec<f64>,
    notes: Vec<String>,
}

impl FaultRows {
    fn new(fault: &'static str) -> Self {
        Self {
            fault,
            ..Default::default()
        }
    }

    fn record(&mut self, views: &[SearchView], surviving: &[String], missing: u64, most: usize) {
        let mine: Vec<&SearchView> = views.iter().filter(|v| surviving.contains(&v.lb)).collect();
        let gap = mine.iter().map(|v| v.longest_gap_s).fold(0.0, f64::max);
        let failed: u64 = mine.iter().map(|v| v.failures).sum();
        self.gap.push(gap);
        self.failed.push(failed as f64);
        self.missing.push(missing as f64);
        self.servers.push(most as f64);
        let per_lb: Vec<String> = mine
            .iter()
            .map(|v| {
                format!(
                    "{} gap {:.2} s, {}/{} failed",
                    v.lb, v.longest_gap_s, v.failures, v.searches
                )
            })
            .collect();
        let line = format!("{}: {}", self.fault, per_lb.join("; "));
        eprintln!("{line}; missing rows {missing}; most servers at once {most}");
        self.notes.push(line);
    }

    fn rows(&self) -> Vec<serde_json::Value> {
        let f = self.fault;
        vec![
            json!({ "figure": format!("client view, {f}: longest gap through a surviving load balancer"), "samples": self.gap, "note": format!("{} run(s)", self.gap.len()) }),
            json!({ "figure": format!("client view, {f}: failed searches through surviving load balancers"), "samples": self.failed, "note": "" }),
            json!({ "figure": format!("client view, {f}: flushed rows missing afterwards"), "samples": self.missing, "note": format!("of {ROWS}") }),
            json!({ "figure": format!("client view, {f}: most servers running at once"), "samples": self.servers, "note": "sampled every 0.25 s" }),
            json!({ "figure": format!("client view, {f}: server process replaced"), "samples": self.new_server, "note": "1 = the serving process after is not the one before" }),
        ]
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = std::env::var("MILVUS_FLEET_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 10 });
    let started = Instant::now();
    let deb = deb_path();
    let images = images();
    let python = client_python();
    let hosts = Hosts::up_with(
        PREFIX,
        "172.31.92",
        4,
        &[
            ("FLEET_HOSTS_PACKAGES", "docker.io"),
            ("FLEET_HOSTS_DOCKER", "1"),
        ],
    );
    prepare_hosts(&hosts, &deb, PKG, &images, |host| {
        if host == "h4" {
            vec!["nginx", "seaweedfs"]
        } else {
            vec!["etcd", "nginx", "milvus"]
        }
    });
    std::thread::scope(|scope| {
        for host in hosts.names() {
            let hosts = &hosts;
            scope.spawn(move || install_package(hosts, host, PKG));
        }
    });
    start_site_s3(&hosts, "h4");
    init_h1(&hosts, &fleet_toml(&hosts));
    for host in ["h2", "h3"] {
        let token = hosts.sh_ok("h1", "milvus-fleet token create 2>/dev/null");
        hosts.write_file(host, "/root/token", token.trim(), "0600");
        hosts.sh_ok(
            host,
            &format!(
                "milvus-fleet join {} --name {host} --address {} --roles storage,compute < /root/token >/dev/null && rm /root/token",
                hosts.address("h1"),
                hosts.address(host)
            ),
        );
    }
    let written = client(&hosts, &python, &hosts.address("h1"), 19537, "write");
    assert!(written.contains("id=123"), "{written}");
    eprintln!(
        "cluster up, {ROWS} vectors written: {:?}",
        started.elapsed()
    );

    // Both cores saturated while the client searches: a session TTL too short for this
    // machine shows as the server losing its session (a new server process) or failed
    // searches.
    let soak = Duration::from_secs(match (wanted("soak"), quick) {
        (false, _) => 0,
        (true, true) => 60,
        (true, false) => 600,
    });
    let searching = Searching::start(&hosts, &python, &NODES);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let mut pids = std::collections::BTreeSet::new();
    let soak_start = Instant::now();
    while soak_start.elapsed() < soak {
        pids.extend(serving_processes());
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().unwrap();
    }
    let views = searching.stop();
    let soak_failed: u64 = views.iter().map(|v| v.failures).sum();
    let soak_searches: u64 = views.iter().map(|v| v.searches).sum();
    let soak_rows = vec![
        json!({ "figure": "client view, both cores saturated: server processes lost (false session expiries)", "samples": [pids.len().saturating_sub(1) as f64], "note": format!("{} s, 4 spinning threads, session TTL {}", soak.as_secs(), session_ttl().map_or("default".into(), |t| format!("{t} s"))) }),
        json!({ "figure": "client view, both cores saturated: failed searches", "samples": [soak_failed as f64], "note": format!("of {soak_searches} through 3 load balancers") }),
    ];
    eprintln!(
        "saturated for {soak:?}: server processes {pids:?}, {soak_failed} of {soak_searches} searches failed"
    );

    // A client that cannot read the rows at all (for the client's 120 s of retries) counts
    // every row missing, and the nodes' journals say why; the suite goes on.
    let missing_rows = |via: &str| -> u64 {
        match client_result(&hosts, &python, &hosts.address(via), 19537, "count") {
            Ok(out) => {
                let line = out.lines().rfind(|l| l.starts_with('{')).unwrap_or("{}");
                let seen: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                ROWS.saturating_sub(seen["count"].as_u64().unwrap_or(0))
            }
            Err(e) => {
                eprintln!("MISSED: no rows read through {via}'s load balancer: {e}");
                eprintln!("serving now: {:?}", serving_processes());
                for host in NODES {
                    eprintln!(
                        "--- {host}:\n{}",
                        hosts.sh_ok(
                            host,
                            "journalctl -q -o short-precise --since=-180s -u milvus-fleet \
                             -u milvus-fleet-standalone | grep -v ' mf-standalone' | tail -80"
                        )
                    );
                }
                ROWS
            }
        }
    };
    let daemon_up_everywhere = |what: &str| {
        wait_until(what, Duration::from_secs(120), || {
            NODES.iter().all(|h| {
                let out = hosts.sh(h, "milvus-fleet status --json");
                serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    .ok()
                    .and_then(|s| s["nodes"].as_array().cloned())
                    .is_some_and(|nodes| {
                        nodes.len() >= NODES.len() && nodes.iter().all(|n| n["daemon"] == "up")
                    })
            })
        });
    };
    let all: Vec<String> = NODES.iter().map(|s| s.to_string()).collect();
    // Runs `fault` (which returns the hosts whose load balancers count as surviving)
    // with the client searching and the sampler counting servers, then lets things
    // settle and checks the rows.
    let measure = |rows: &mut FaultRows, fault: &dyn Fn(&str) -> Vec<String>| {
        let server = the_server("one server before the fault");
        let before = serving_processes();
        let searching = Searching::start(&hosts, &python, &NODES);
        let sampler = ServerSampler::start();
        std::thread::sleep(Duration::from_secs(2));
        let surviving = fault(&server);
        the_server("one server after the fault");
        // The searches go on until they answer again (a server process is not yet a
        // serving one), so an outage is measured whole, not cut off at the window's end.
        let via = surviving.first().cloned().unwrap_or_else(|| "h1".into());
        let answering = Instant::now();
        while client_result(&hosts, &python, &hosts.address(&via), 19537, "count").is_err()
            && answering.elapsed() < Duration::from_secs(300)
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(3));
        let most = sampler.stop();
        let views = searching.stop();
        rows.new_server.push(if serving_processes() == before {
            0.0
        } else {
            1.0
        });
        rows.record(&views, &surviving, missing_rows(&via), most);
        if rows.gap.last().is_some_and(|gap| *gap > 10.0) {
            server_log(&hosts, &the_server("the server after an outlier"));
        }
    };

    let mut faults = Vec::new();

    // Daemon faults on the server's node: the server must not move or restart.
    if wanted("kill") {
        let mut killed = FaultRows::new("daemon kill -9 on the server's node");
        for _ in 0..runs.min(3) {
            measure(&mut killed, &|server| {
                let pid = hosts.systemctl(server, "show -P MainPID milvus-fleet");
                hosts.sh_ok(server, "systemctl kill --signal=KILL milvus-fleet.service");
                wait_until("the daemon back", Duration::from_secs(60), || {
                    let now = hosts.systemctl(server, "show -P MainPID milvus-fleet");
                    now != "0" && now != pid
                });
                daemon_up_everywhere("every daemon up again");
                std::thread::sleep(Duration::from_secs(5));
                all.clone()
            });
        }
        faults.push(killed);
    }
    if wanted("restart") {
        let mut restarted =
            FaultRows::new("`systemctl restart milvus-fleet` on every node in turn");
        measure(&mut restarted, &|_| {
            for host in NODES {
                hosts.sh_ok(host, "systemctl restart milvus-fleet.service");
                daemon_up_everywhere("every daemon up again");
                std::thread::sleep(Duration::from_secs(3));
            }
            all.clone()
        });
        faults.push(restarted);
    }
    if wanted("reinstall") {
        let mut reinstalled = FaultRows::new("package reinstalled on the server's node");
        measure(&mut reinstalled, &|server| {
            hosts.sh_ok(
                server,
                &format!("apt-get install -q -y --reinstall {PKG} >/dev/null 2>&1"),
            );
            daemon_up_everywhere("every daemon up again");
            std::thread::sleep(Duration::from_secs(5));
            all.clone()
        });
        faults.push(reinstalled);
    }

    // Host faults on the server's host: the server moves; the figure is the gap.
    let others = |server: &str| -> Vec<String> {
        NODES
            .iter()
            .filter(|h| **h != server)
            .map(|s| s.to_string())
            .collect()
    };
    if wanted("power") {
        let mut power = FaultRows::new("server's host power loss");
        for _ in 0..runs {
            measure(&mut power, &|server| {
                let since = hosts.sh_ok("h4", "date +%s.%N");
                hosts.kill(server);
                the_server("a new server after the power loss");
                timeline(&hosts, &others(server), &since);
                others(server)
            });
            // Power back on: the host comes back as a standby.
            for host in NODES {
                if !hosts.is_running(host) {
                    hosts.power_on(host);
                }
            }
            daemon_up_everywhere("the powered-on host's daemon up");
        }
        faults.push(power);
    }
    if wanted("cut") {
        let mut cut = FaultRows::new("server's host cut off the network");
        for _ in 0..runs {
            measure(&mut cut, &|server| {
                let fault_at = hosts.sh_ok("h4", "date +%s.%N");
                hosts.cut(server);
                // Heal once a new server runs elsewhere (the old one may still be the
                // only process for a moment, so "one server" would heal at once).
                wait_until("a server on another host", Duration::from_secs(300), || {
                    serving_hosts().iter().any(|h| h != server)
                });
                std::thread::sleep(Duration::from_secs(3));
                hosts.heal(server);
                timeline(&hosts, &all, &fault_at);
                others(server)
            });
            daemon_up_everywhere("the healed host's daemon up");
        }
        faults.push(cut);
    }
    // Internal timings of the freeze: to another server, and how long the thawed old
    // server ran on beside it.
    let moved_after = std::cell::RefCell::new(Vec::new());
    let ran_on = std::cell::RefCell::new(Vec::new());
    if wanted("freeze") {
        let mut frozen = FaultRows::new("server's host frozen, then thawed");
        for _ in 0..runs {
            measure(&mut frozen, &|server| {
                let fault_at = hosts.sh_ok("h4", "date +%s.%N");
                hosts.freeze(server);
                let since = Instant::now();
                wait_until("a server on another host", Duration::from_secs(300), || {
                    serving_hosts().iter().any(|h| h != server)
                });
                eprintln!(
                    "frozen {server}: another server after {:?}",
                    since.elapsed()
                );
                moved_after.borrow_mut().push(since.elapsed().as_secs_f64());
                std::thread::sleep(Duration::from_secs(3));
                hosts.thaw(server);
                let thawed = Instant::now();
                wait_until("the thawed server gone", Duration::from_secs(120), || {
                    !serving_hosts().iter().any(|h| h == server)
                });
                eprintln!(
                    "thawed {server}: its old server ran on for {:?}",
                    thawed.elapsed()
                );
                ran_on.borrow_mut().push(thawed.elapsed().as_secs_f64());
                timeline(&hosts, &all, &fault_at);
                others(server)
            });
            daemon_up_everywhere("the thawed host's daemon up");
        }
        faults.push(frozen);
    }

    // Membership: a compute node joins (h4), then is removed.
    if wanted("join") {
        let mut joined = FaultRows::new("a compute node joins");
        measure(&mut joined, &|_| {
            let token = hosts.sh_ok("h1", "milvus-fleet token create --role compute 2>/dev/null");
            hosts.write_file("h4", "/root/token", token.trim(), "0600");
            hosts.sh_ok(
                "h4",
                &format!(
                    "milvus-fleet join {} --name h4 --address {} --roles compute < /root/token >/dev/null && rm /root/token",
                    hosts.address("h1"),
                    hosts.address("h4")
                ),
            );
            wait_until("h4's load balancer", Duration::from_secs(120), || {
                hosts
                    .sh("h4", "systemctl is-active --quiet milvus-fleet-lb")
                    .status
                    .success()
            });
            std::thread::sleep(Duration::from_secs(5));
            all.clone()
        });
        faults.push(joined);
    }
    if wanted("remove") {
        let mut removed = FaultRows::new("a compute node removed");
        measure(&mut removed, &|_| {
            hosts.sh_ok("h1", "milvus-fleet node remove h4 >/dev/null 2>&1");
            std::thread::sleep(Duration::from_secs(5));
            all.clone()
        });
        faults.push(removed);
    }

    let mut rows: Vec<serde_json::Value> = faults.iter().flat_map(FaultRows::rows).collect();
    if wanted("soak") {
        rows.extend(soak_rows);
    }
    rows.push(json!({ "figure": "server's host frozen: another server running after", "samples": moved_after.into_inner(), "note": "internal timing" }));
    rows.push(json!({ "figure": "server's host frozen: the thawed old server ran on beside the new one for", "samples": ran_on.into_inner(), "note": "until its process was gone" }));
    let out = repo().join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let document = json!({ "suite": "client-view", "quick": quick, "runs": runs, "session_ttl_secs": session_ttl(), "rows": rows });
    std::fs::write(
        out.join(if partial() {
            "client-view-partial.json"
        } else {
            "client-view.json"
        }),
        serde_json::to_string_pretty(&document).unwrap(),
    )
    .unwrap();
    for f in &faults {
        for note in &f.notes {
            println!("{note}");
        }
    }
    println!(
        "written: {}/client-view{}.json in {:?}",
        out.display(),
        if partial() { "-partial" } else { "" },
        started.elapsed()
    );
}
