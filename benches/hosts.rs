//! The host-level benchmark: real systemd test hosts with Docker inside, the package
//! installed, one cluster grown by `milvus-fleet join` one host at a time. Measures what
//! needs whole hosts: join to healthy (and component restarts on the other nodes while
//! a node joins), the number of hosts run as one cluster, frozen components to restarted
//! by the daemon, and the memory each supervised unit's own processes take.
//! Writes target/bench/hosts.json; `cargo bench --bench control_plane` shows its rows.
//!
//!   cargo bench --bench hosts            # 15 hosts, 10 freezes of each kind
//!   cargo bench --bench hosts -- --quick # 4 hosts, 2 freezes of each kind
//!
//! Needs root, systemd-nspawn, a Docker engine and the built .deb (scripts/test-all.sh
//! installs and builds them).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::dataplane::{
    images, init_h1, install_package, prepare_hosts, start_site_s3, wait_until,
};
use support::{deb_path, repo, Hosts};

const PKG: &str = "/var/cache/milvus-fleet/milvus-fleet.deb";
/// h1..h3 are storage nodes (etcd); the rest compute (a load balancer each). h1 is
/// both: it runs the Milvus server (placed on the init node) against the site's S3 on h1.
const STORAGE: usize = 3;

fn fleet_toml(hosts: &Hosts) -> String {
    format!(
        r#"[cluster]
name = "bench"
topology = "standalone-ha"

[object_storage]
kind = "s3"
endpoint = "{h1}:9000"
bucket = "bench"

[images]
etcd = "local/etcd:test"
nginx = "local/nginx:test"
milvus = "local/milvus:test"

[daemon]
# Wedged restarts are what is measured: more than the default 3 per 10 minutes per
# component (past the budget the daemon leaves a component to an operator).
restart_budget = 20
"#,
        h1 = hosts.address("h1"),
    )
}

/// Every milvus-fleet unit on `host` with its invocation id and restart count.
fn unit_runs(hosts: &Hosts, host: &str) -> Vec<String> {
    hosts
        .sh_ok(
            host,
            "for u in $(systemctl list-units --plain --no-legend 'milvus-fleet-*' | awk '{print $1}' | grep -v -e apply -e join); do \
             echo \"$u $(systemctl show -P InvocationID $u) $(systemctl show -P NRestarts $u)\"; done",
        )
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Whether `host`'s status lists every one of `names` with its daemon up.
fn all_up_in_status(hosts: &Hosts, host: &str, names: &[String]) -> bool {
    let out = hosts.sh(host, "milvus-fleet status --json");
    let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return false;
    };
    let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
    names.iter().all(|name| {
        nodes
            .iter()
            .any(|n| n["name"] == name.as_str() && n["daemon"] == "up")
    })
}

/// The RSS (MB) of every process in `unit`'s own control group on `host` (the
/// container's processes live in the engine's groups, not the unit's).
fn unit_rss_mb(hosts: &Hosts, host: &str, unit: &str) -> f64 {
    let kb: f64 = hosts
        .sh_ok(
            host,
            &format!(
                "for p in $(cat /sys/fs/cgroup$(systemctl show -P ControlGroup {unit})/cgroup.procs); do \
                 awk '/^VmRSS:/ {{print $2}}' /proc/$p/status; done"
            ),
        )
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .sum();
    kb / 1024.0
}

struct Figure {
    figure: &'static str,
    samples: Vec<f64>,
    note: String,
}

/// The address of etcd's raft leader, as `observer`'s member sees the cluster.
fn raft_leader_address(hosts: &Hosts, observer: &str) -> Option<String> {
    let out = hosts.sh_ok(
        observer,
        "docker exec mf-etcd etcdctl --command-timeout=2s endpoint status --cluster -w json 2>/dev/null || true",
    );
    let statuses: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
    statuses.as_array()?.iter().find_map(|status| {
        let header = &status["Status"]["header"];
        (header["member_id"] == status["Status"]["leader"]).then(|| {
            let endpoint = status["Endpoint"].as_str().unwrap_or_default();
            let host_port = endpoint.split("://").last().unwrap_or(endpoint);
            host_port
                .rsplit_once(':')
                .map_or(host_port, |(h, _)| h)
                .to_owned()
        })
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (count, freezes) = if quick { (4, 2) } else { (15, 10) };
    let started = Instant::now();
    let deb = deb_path();
    let images = images();
    let hosts = Hosts::up_with(
        "mfbh",
        "172.31.98",
        count,
        &[
            ("FLEET_HOSTS_PACKAGES", "docker.io"),
            ("FLEET_HOSTS_DOCKER", "1"),
        ],
    );
    let names: Vec<String> = hosts.names().to_vec();
    let storage = |host: &str| names.iter().position(|n| n == host).unwrap() < STORAGE;
    prepare_hosts(&hosts, &deb, PKG, &images, |host| {
        if host == "h1" {
            vec!["etcd", "nginx", "milvus", "seaweedfs"]
        } else if storage(host) {
            vec!["etcd"]
        } else {
            vec!["nginx"]
        }
    });
    std::thread::scope(|scope| {
        for host in &names {
            let hosts = &hosts;
            scope.spawn(move || install_package(hosts, host, PKG));
        }
    });
    eprintln!("{count} hosts up with the package: {:?}", started.elapsed());

    start_site_s3(&hosts, "h1");
    init_h1(&hosts, &fleet_toml(&hosts));
    wait_until("h1 in its own status", Duration::from_secs(60), || {
        all_up_in_status(&hosts, "h1", &names[..1])
    });

    // Joins, one host at a time: storage nodes first, then compute nodes.
    let mut join = Figure {
        figure: "`join` start to node healthy in status",
        samples: vec![],
        note: String::new(),
    };
    let mut restarts = Figure {
        figure: "component restarts on the other nodes during a join",
        samples: vec![],
        note: String::new(),
    };
    let storage_token = hosts.sh_ok(
        "h1",
        "milvus-fleet token create --role storage --uses 2 --ttl 30m 2>/dev/null",
    );
    let compute_token = hosts.sh_ok(
        "h1",
        &format!(
            "milvus-fleet token create --role compute --uses {} --ttl 30m 2>/dev/null",
            count.saturating_sub(STORAGE).max(1)
        ),
    );
    for (i, host) in names.iter().enumerate().skip(1) {
        let (token, role) = if storage(host) {
            (&storage_token, "storage")
        } else {
            (&compute_token, "compute")
        };
        let joined: Vec<String> = names[..i].to_vec();
        let before: Vec<Vec<String>> = joined.iter().map(|h| unit_runs(&hosts, h)).collect();
        hosts.write_file(host, "/root/token", token.trim(), "0600");
        let since = Instant::now();
        hosts.sh_ok(
            host,
            &format!(
                "milvus-fleet join {} --name {host} --address {} --roles {role} < /root/token >/dev/null",
                hosts.address("h1"),
                hosts.address(host)
            ),
        );
        let component = if role == "storage" {
            "milvus-fleet-etcd"
        } else {
            "milvus-fleet-lb"
        };
        let me = std::slice::from_ref(host);
        wait_until(&format!("{host} healthy"), Duration::from_secs(120), || {
            all_up_in_status(&hosts, "h1", me)
                && hosts
                    .sh(host, &format!("systemctl is-active --quiet {component}"))
                    .status
                    .success()
        });
        let took = since.elapsed();
        join.samples.push(took.as_secs_f64());
        // Let the other nodes take the new member in (a reload, new upstreams), then
        // compare every unit's invocation and restart count.
        std::thread::sleep(Duration::from_secs(3));
        let after: Vec<Vec<String>> = joined.iter().map(|h| unit_runs(&hosts, h)).collect();
        let changed = before
            .iter()
            .zip(&after)
            .map(|(b, a)| b.iter().filter(|line| !a.contains(line)).count())
            .sum::<usize>();
        restarts.samples.push(changed as f64);
        eprintln!(
            "{host} joined as {role}, healthy in {took:?}; units restarted elsewhere: {changed}"
        );
    }
    join.note = format!(
        "one host at a time, {} storage then compute",
        STORAGE.min(count) - 1
    );
    restarts.note = "units whose InvocationID or NRestarts changed on the nodes already in".into();
    wait_until(
        "every node up in every status",
        Duration::from_secs(120),
        || names.iter().all(|h| all_up_in_status(&hosts, h, &names)),
    );
    let cluster = Figure {
        figure: "test hosts run as one cluster on this machine",
        samples: vec![count as f64],
        note: format!(
            "each up in every node's status; {} s to build and grow",
            started.elapsed().as_secs()
        ),
    };

    // Memory the supervision adds: the unit's own processes (`milvus-fleet follow`).
    let mut memory = Figure {
        figure: "memory supervision adds per component unit",
        samples: vec![],
        note: "RSS of the processes in each unit's own cgroup, every etcd and lb unit".into(),
    };
    for host in &names {
        let unit = if storage(host) {
            "milvus-fleet-etcd"
        } else {
            "milvus-fleet-lb"
        };
        memory.samples.push(unit_rss_mb(&hosts, host, unit));
    }

    // Frozen components: SIGSTOP of every process in the container; the daemon restarts it.
    let mut wedged = Figure {
        figure: "wedged (frozen) component to restarted, p99",
        samples: vec![],
        note: String::new(),
    };
    // Each round freezes etcd on a storage node and nginx on a compute node, taking the
    // nodes in turn: the daemon's restart budget is per component, and systemd refuses
    // a unit's 6th start in 5 minutes (StartLimitBurst).
    let compute: Vec<&String> = names.iter().skip(STORAGE).collect();
    for round in 0..freezes {
        let targets = [
            (
                names[round % STORAGE].as_str(),
                "mf-etcd",
                "milvus-fleet-etcd.service",
            ),
            (
                compute[round % compute.len()].as_str(),
                "mf-lb",
                "milvus-fleet-lb.service",
            ),
        ];
        for (host, container, unit) in targets {
            let before = hosts.systemctl(host, &format!("show -P InvocationID {unit}"));
            // Every process of the container: nginx's worker answers on its own.
            hosts.sh_ok(
                host,
                &format!("kill -STOP $(docker top {container} -eo pid | tail -n +2)"),
            );
            let since = Instant::now();
            wait_until(
                &format!("{host}'s frozen {container} restarted (round {round})"),
                Duration::from_secs(90),
                || {
                    hosts.systemctl(host, &format!("show -P InvocationID {unit}")) != before
                        && hosts.systemctl(host, &format!("show -P ActiveState {unit}")) == "active"
                },
            );
            let took = since.elapsed();
            wedged.samples.push(took.as_secs_f64());
            if took > Duration::from_secs(10) {
                // Over the goal: show what the node did meanwhile.
                let seconds = took.as_secs() + 5;
                eprintln!(
                    "{host}'s {container}: {took:?}; its journal meanwhile:\n{}",
                    hosts.sh_ok(
                        host,
                        &format!(
                            "journalctl -q -o short-precise --since=-{seconds}s -u milvus-fleet \
                             -u milvus-fleet-etcd -u milvus-fleet-standalone | grep -v ' mf-' | tail -50"
                        )
                    )
                );
            }
        }
    }
    wedged.note = format!(
        "etcd on h1-h3 and nginx on the compute nodes in turn, {freezes} each, all of the container's processes frozen; to active (healthy) again"
    );

    // Faults on whole hosts, last (they move leadership): the leader's host cut off from
    // the network, a compute node rebooted, a storage node's host killed (power loss:
    // its etcd member is lost with it).
    let status_of = |host: &str| -> serde_json::Value {
        let out = hosts.sh(host, "milvus-fleet status --json");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let leader_seen_by = |observer: &str| -> Option<String> {
        let status = status_of(observer);
        match status["role"].as_str() {
            Some("leader") => Some(observer.to_owned()),
            Some("follower") => status["leader"].as_str().map(str::to_owned),
            _ => None,
        }
    };
    // The acting record (node, term) as etcd holds it, read through `observer`'s member.
    let acting_on = |observer: &str| -> Option<(String, i64)> {
        let value = hosts.sh_ok(
            observer,
            "docker exec mf-etcd etcdctl --command-timeout=500ms get /milvus-fleet/bench/leader-acting --print-value-only 2>/dev/null || true",
        );
        let (node, term) = value.trim().rsplit_once(' ')?;
        Some((node.to_owned(), term.parse().ok()?))
    };
    let mut cut = Figure {
        figure: "leader host cut off (network) to a new leader acting",
        samples: vec![],
        note: String::new(),
    };
    let mut stale_writes = 0;
    let mut raft_leader_on_cut_host = 0;
    for _ in 0..if quick { 1 } else { 5 } {
        let mut old = String::new();
        wait_until("a leader before the cut", Duration::from_secs(60), || {
            leader_seen_by(compute[0]).map(|l| old = l).is_some()
        });
        let observer = names[..STORAGE]
            .iter()
            .find(|h| **h != old)
            .unwrap()
            .as_str();
        let (_, old_term) = acting_on(observer).expect("an acting leader before the cut");
        // Where etcd's own (raft) leader is: on the cut host, etcd elects first and then
        // extends every lease (the fleet leader keeps it off its host; see raft_leader).
        let raft_leader = raft_leader_address(&hosts, observer);
        let raft_on_cut_host = raft_leader.as_deref() == Some(hosts.address(&old).as_str());
        raft_leader_on_cut_host += usize::from(raft_on_cut_host);
        hosts.cut(&old);
        let since = Instant::now();
        let (mut new_leader, mut new_term) = (String::new(), 0);
        wait_until(
            "a new leader acting after the cut",
            Duration::from_secs(60),
            || match acting_on(observer) {
                Some((node, term)) if node != old && term > old_term => {
                    (new_leader, new_term) = (node, term);
                    true
                }
                _ => false,
            },
        );
        let took = since.elapsed();
        cut.samples.push(took.as_secs_f64());
        if took > Duration::from_millis(1500) {
            // Over the goal: show what the new leader's daemon saw meanwhile.
            eprintln!(
                "cut of {old}: {took:?} (etcd's raft leader on the cut host: {raft_on_cut_host}); {new_leader}'s daemon meanwhile:\n{}",
                hosts.sh_ok(
                    &new_leader,
                    &format!(
                        "journalctl -q -o short-precise --since=-{}s -u milvus-fleet | tail -30",
                        took.as_secs() + 3
                    )
                )
            );
            eprintln!(
                "{observer}'s etcd meanwhile:\n{}",
                hosts.sh_ok(
                    observer,
                    &format!(
                        "docker logs --since {}s mf-etcd 2>&1 | grep -v 'rejected connection' | tail -40",
                        took.as_secs() + 3
                    )
                )
            );
        }
        hosts.heal(&old);
        wait_until(
            "the cut-off host back as a follower",
            Duration::from_secs(60),
            || status_of(&old)["role"] == "follower",
        );
        // Every acting record etcd accepted since the new term began: none may carry the
        // old leader's term, before or after the heal.
        let history = hosts.sh_ok(
            observer,
            &format!(
                "docker exec mf-etcd timeout 3 etcdctl watch --rev={new_term} /milvus-fleet/bench/leader-acting 2>/dev/null || true"
            ),
        );
        // The new leader's own records are there: the read worked.
        assert!(
            history
                .lines()
                .any(|l| l.trim().ends_with(&format!(" {new_term}"))),
            "no acting history read from {observer}: {history:?}"
        );
        let old_record = format!("{old} {old_term}");
        stale_writes += history.lines().filter(|l| l.trim() == old_record).count();
    }
    cut.note = format!(
        "the acting record read from a surviving etcd member every ~0.1 s; lease 1 s; \
         writes of the cut-off leader's term accepted after the new term began: {stale_writes}; \
         etcd's raft leader on the cut host in {raft_leader_on_cut_host} of {} cuts",
        cut.samples.len()
    );

    let rebooted_host = compute.last().unwrap().as_str();
    let lb_run = |host: &str| hosts.systemctl(host, "show -P InvocationID milvus-fleet-lb");
    let before_reboot = lb_run(rebooted_host);
    let since = Instant::now();
    hosts.reboot(rebooted_host);
    let me = [rebooted_host.to_owned()];
    wait_until("the rebooted node up", Duration::from_secs(120), || {
        let run = lb_run(rebooted_host);
        !run.is_empty()
            && run != before_reboot
            && hosts
                .sh(rebooted_host, "systemctl is-active --quiet milvus-fleet-lb")
                .status
                .success()
            && all_up_in_status(&hosts, compute[0], &me)
    });
    let reboot = Figure {
        figure: "compute node rebooted to up in status with its load balancer active",
        samples: vec![since.elapsed().as_secs_f64()],
        note: format!("{rebooted_host}: from the reboot command to a new run of its load balancer, active, and its daemon up"),
    };

    // A storage node that does not lead, killed: one peer-down alert on the leader, and
    // the leadership stays where it is. Right after the reboot the status may name no
    // leader for a moment (the rebooted node may have led): wait for one.
    let mut leader = String::new();
    wait_until("a leader after the reboot", Duration::from_secs(30), || {
        leader = leader_seen_by(compute[0]).unwrap_or_default();
        !leader.is_empty()
    });
    let victim = names[..STORAGE]
        .iter()
        .find(|h| **h != leader)
        .unwrap()
        .clone();
    let alerts = |host: &str| -> usize {
        hosts
            .sh_ok(
                host,
                "journalctl -q -o cat MESSAGE_ID=3eab256b8aa646e690c4e162f94c0fe8 | wc -l",
            )
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let before = alerts(&leader);
    let leader_term = status_of(&leader)["term"].as_i64();
    hosts.kill(&victim);
    let since = Instant::now();
    wait_until(
        "the leader's peer-down alert",
        Duration::from_secs(60),
        || alerts(&leader) > before,
    );
    let mut member_lost = Figure {
        figure: "storage host killed (its etcd member lost) to the leader's alert",
        samples: vec![since.elapsed().as_secs_f64()],
        note: String::new(),
    };
    std::thread::sleep(Duration::from_secs(5));
    if alerts(&leader) - before != 1 {
        eprintln!(
            "alerts on the leader {leader} after {victim} was killed:\n{}",
            hosts.sh_ok(
                &leader,
                "journalctl -q -o short-precise --since=-20s -u milvus-fleet | tail -40"
            )
        );
    }
    member_lost.note = format!(
        "{victim}; {} alert(s) on the leader, its term {}",
        alerts(&leader) - before,
        if status_of(&leader)["term"].as_i64() == leader_term {
            "unchanged"
        } else {
            "CHANGED"
        }
    );

    let figures = [
        join,
        restarts,
        cluster,
        memory,
        wedged,
        cut,
        reboot,
        member_lost,
    ];
    let rows: Vec<_> = figures
        .iter()
        .map(|f| json!({ "figure": f.figure, "samples": f.samples, "note": f.note }))
        .collect();
    let out = repo().join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let document = json!({ "suite": "hosts", "quick": quick, "hosts": count, "rows": rows });
    std::fs::write(
        out.join("hosts.json"),
        serde_json::to_string_pretty(&document).unwrap(),
    )
    .unwrap();
    for f in &figures {
        println!("{}: {:?} ({})", f.figure, f.samples, f.note);
    }
    println!(
        "written: {}/hosts.json in {:?}",
        out.display(),
        started.elapsed()
    );
}
