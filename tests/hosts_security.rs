//! The trust boundary on real systemd hosts (issue 18), attacked as an attacker would:
//! h1 is a member (storage and compute in the standalone-ha topology, the real Milvus
//! server, the site's S3 on the same host).
//!
//! - As the daemon's user: systemd refuses a kill, a set-property, a reset-failed, a
//!   clean of a fleet unit, a transient unit named like one, and any other unit; it
//!   grants a restart of a fleet unit (what the daemon needs).
//! - As the daemon's user: a configuration drop-in in every directory it can write
//!   changes nothing root renders or runs; root's render still works, and refuses a
//!   drop-in in its own directory that another user could change.
//! - With the node's own certificate (a compromised node), from the bridge: minting a
//!   token, submitting a job (a node removal) and cancelling one get 403; without a
//!   certificate the same calls find no route; /metrics answers anyone.
//! - Every container runs with no new privileges and only its listed capabilities, read
//!   from its main process; its logs are bounded.
//! - Milvus refuses a client that does not log in, and Milvus' first root password; the
//!   cluster's (made by init, root-only) logs in; it shows in no journal or other file.
//! - From the bridge, without a certificate: etcd's client and peer ports refuse; the
//!   Milvus roles' etcd user reads Milvus' keys and none of milvus-fleet's.
//! - From the hosts' bridge, without a certificate: 1,000 idle connections and 100 stalled
//!   TLS handshakes held on the API port for 60 s change no leadership, and the local
//!   status call keeps answering; the port closes what it cannot serve.

mod support;

use std::time::Duration;

use support::repo;

use support::dataplane::{
    client_python, images, init_h1, install_package, prepare_hosts, start_site_s3, wait_active,
    wait_until,
};
use support::{deb_path, Hosts};

const PKG: &str = "/var/cache/milvus-fleet/milvus-fleet.deb";

fn fleet_toml(hosts: &Hosts) -> String {
    format!(
        r#"[cluster]
name = "security-test"
topology = "standalone-ha"

[object_storage]
kind = "s3"
endpoint = "{h1}:9000"
bucket = "milvus-test"

[load_balancer]
addresses = ["node"]

[images]
etcd = "local/etcd:test"
nginx = "local/nginx:test"
milvus = "local/milvus:test"
"#,
        h1 = hosts.address("h1"),
    )
}

/// Runs `command` on `host` as the daemon's user; its output, whatever the outcome.
fn as_daemon_user(hosts: &Hosts, host: &str, command: &str) -> std::process::Output {
    hosts.sh(
        host,
        &format!(
            "setpriv --reuid=milvus-fleet --regid=milvus-fleet --init-groups -- sh -c '{command}' 2>&1"
        ),
    )
}

#[test]
#[ignore = "needs root, systemd-nspawn, the built .deb and a Docker engine: scripts/test-all.sh runs it"]
fn the_daemon_user_and_outsiders_cannot_take_the_cluster_over() {
    let deb = deb_path();
    let images = images();
    let hosts = Hosts::up_with(
        "mfsec",
        "172.31.90",
        1,
        &[
            ("FLEET_HOSTS_PACKAGES", "docker.io"),
            ("FLEET_HOSTS_DOCKER", "1"),
        ],
    );
    prepare_hosts(&hosts, &deb, PKG, &images, |_| {
        vec!["etcd", "nginx", "milvus", "seaweedfs"]
    });
    install_package(&hosts, "h1", PKG);
    start_site_s3(&hosts, "h1");
    init_h1(&hosts, &fleet_toml(&hosts));
    wait_until("h1's daemon to lead", Duration::from_secs(60), || {
        hosts
            .sh("h1", "milvus-fleet status --json")
            .stdout
            .windows(8)
            .any(|w| w == b"\"leader\"")
    });
    wait_active(&hosts, "h1", "milvus-fleet-etcd", Duration::from_secs(120));
    // The daemon starts the server once it leads, through polkit like everything else.
    wait_active(
        &hosts,
        "h1",
        "milvus-fleet-standalone",
        Duration::from_secs(300),
    );

    // What each container's main process actually runs with.
    for (container, effective) in [
        ("mf-etcd", "0000000000000000"),
        ("mf-standalone", "0000000000000000"),
        // CHOWN (0), SETGID (6), SETUID (7), DAC_READ_SEARCH (2).
        ("mf-lb", "00000000000000c5"),
    ] {
        let status = hosts.sh_ok("h1", &format!("docker exec {container} cat /proc/1/status"));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(field("CapEff:"), effective, "{container}: {status}");
        assert_eq!(field("CapBnd:"), effective, "{container}'s bounding set");
        assert_eq!(field("NoNewPrivs:"), "1", "{container}");
        let logs = hosts.sh_ok(
            "h1",
            &format!("docker inspect -f '{{{{.HostConfig.LogConfig.Type}}}} {{{{.HostConfig.LogConfig.Config}}}}' {container}"),
        );
        assert!(
            logs.contains("json-file") && logs.contains("max-size:20m"),
            "{container}: {logs}"
        );
    }

    // The daemon's user through polkit: exactly start, stop, restart and reload of the
    // units milvus-fleet renders.
    let etcd_started = |hosts: &Hosts| {
        hosts.sh_ok(
            "h1",
            "systemctl show -p ExecMainStartTimestampMonotonic --value milvus-fleet-etcd.service",
        )
    };
    let started_before = etcd_started(&hosts);
    for (attack, command) in [
        ("kill", "systemctl kill milvus-fleet-etcd.service"),
        (
            "set-property",
            "systemctl set-property --runtime milvus-fleet-etcd.service CPUWeight=1",
        ),
        (
            "reset-failed",
            "systemctl reset-failed milvus-fleet-etcd.service",
        ),
        (
            "clean",
            "systemctl clean --what=state milvus-fleet-etcd.service",
        ),
        (
            "transient unit",
            "systemd-run --unit=milvus-fleet-x /bin/true",
        ),
        (
            "another unit",
            "systemctl start systemd-tmpfiles-clean.service",
        ),
        ("another unit", "systemctl stop dbus.service"),
    ] {
        let out = as_daemon_user(&hosts, "h1", command);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "{attack}: `{command}` was allowed: {said}"
        );
        assert!(
            said.contains("Access denied") || said.contains("authentication required"),
            "{attack}: `{command}` failed for another reason: {said}"
        );
    }
    assert_eq!(
        etcd_started(&hosts),
        started_before,
        "an attack reached the etcd unit"
    );
    let out = as_daemon_user(
        &hosts,
        "h1",
        "systemctl show -p CPUWeight --value milvus-fleet-etcd.service",
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).trim().eq("1"),
        "set-property took effect"
    );
    let lb_started = hosts.sh_ok(
        "h1",
        "systemctl show -p ExecMainStartTimestampMonotonic --value milvus-fleet-lb.service",
    );
    let out = as_daemon_user(&hosts, "h1", "systemctl restart milvus-fleet-lb.service");
    assert!(
        out.status.success(),
        "the daemon's own restart was refused: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_active(&hosts, "h1", "milvus-fleet-lb", Duration::from_secs(120));
    assert_ne!(
        hosts.sh_ok(
            "h1",
            "systemctl show -p ExecMainStartTimestampMonotonic --value milvus-fleet-lb.service",
        ),
        lb_started
    );

    // As the daemon's user: a drop-in that would swap the etcd image, in every directory
    // that user can write (and a fleet.d below each).
    let rendered = |hosts: &Hosts| {
        hosts.sh_ok(
            "h1",
            "cd /var/lib/milvus-fleet-rendered && find . -type f | sort | xargs sha256sum; \
             sha256sum /etc/systemd/system/milvus-fleet-*",
        )
    };
    let rendered_before = rendered(&hosts);
    let evil = "[images]\netcd = \"local/evil:test\"\n";
    hosts.write_file("h1", "/tmp/evil.toml", evil, "0644");
    let planted = as_daemon_user(
        &hosts,
        "h1",
        "find / \\( -path /proc -o -path /sys \\) -prune -o -type d -writable -print 2>/dev/null | \
         while read -r d; do mkdir -p \"$d/fleet.d\" 2>/dev/null; \
         cp /tmp/evil.toml \"$d/fleet.d/50-evil.toml\" 2>/dev/null && echo \"$d/fleet.d\"; \
         cp /tmp/evil.toml \"$d/50-evil.toml\" 2>/dev/null; done",
    );
    let planted = String::from_utf8_lossy(&planted.stdout).into_owned();
    for expected in [
        "/run/milvus-fleet/fleet.d",
        "/var/lib/milvus-fleet/fleet.d",
        "/tmp/fleet.d",
    ] {
        assert!(
            planted.lines().any(|l| l == expected),
            "no drop-in planted in {expected}: {planted}"
        );
    }
    hosts.sh_ok("h1", "systemctl start milvus-fleet-apply.service");
    assert_eq!(
        rendered(&hosts),
        rendered_before,
        "a planted drop-in changed what root rendered"
    );
    let leaked = hosts.sh(
        "h1",
        "grep -rl evil /var/lib/milvus-fleet-rendered /etc/systemd/system/milvus-fleet-*",
    );
    assert!(
        leaked.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&leaked.stdout)
    );

    // Root's own drop-in directory, but a file another user may write: refused, named.
    hosts.write_file("h1", "/etc/milvus-fleet/fleet.d/60-loose.toml", "", "0666");
    let out = hosts.sh("h1", "milvus-fleet apply --render-only 2>&1");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a world-writable drop-in was read: {said}"
    );
    assert!(
        said.contains("/etc/milvus-fleet/fleet.d/60-loose.toml: writable by its group or others"),
        "{said}"
    );
    hosts.sh_ok("h1", "rm /etc/milvus-fleet/fleet.d/60-loose.toml");
    assert_eq!(rendered(&hosts), rendered_before);

    // From the bridge, no certificate: a connection flood on the API port.
    let term = |hosts: &Hosts| -> serde_json::Value {
        let status: serde_json::Value =
            serde_json::from_str(&hosts.sh_ok("h1", "milvus-fleet status --json")).unwrap();
        assert_eq!(status["role"], "leader", "{status}");
        status["term"].clone()
    };
    let term_before = term(&hosts);
    let flood = std::process::Command::new("ip")
        .args(["netns", "exec", &hosts.switch_netns(), "python3"])
        .arg(repo().join("tests/client/flood.py"))
        .args([&hosts.address("h1"), "19500", "1000", "100", "60"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Meanwhile, the local status call, five times a second (each a new process).
    let timings = hosts.sh_ok(
        "h1",
        "sleep 2; for i in $(seq 250); do s=$(date +%s%N); \
         milvus-fleet status --json >/dev/null || echo failed; \
         echo $(( ($(date +%s%N) - s) / 1000000 )); sleep 0.2; done",
    );
    let flooded = flood.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&flooded.stdout);
    assert!(flooded.status.success(), "the flood did not run: {said}");
    let counts: serde_json::Value = serde_json::from_str(said.trim()).unwrap();
    eprintln!("flood on h1:19500 for 60 s: {counts}");
    assert!(counts["opened"].as_u64().unwrap() >= 1100, "{counts}");
    // Stalled and idle ones are closed (the handshake timeout), not held for the minute.
    assert!(
        counts["closed_by_server"].as_u64().unwrap() >= 1100,
        "{counts}"
    );
    assert!(
        !timings.contains("failed"),
        "a status call failed under the flood:\n{timings}"
    );
    let mut millis: Vec<u64> = timings
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    millis.sort_unstable();
    assert_eq!(millis.len(), 250);
    eprintln!(
        "status calls under the flood (a new process each): p50 {} ms, p99 {} ms, max {} ms",
        millis[124], millis[247], millis[249]
    );
    assert!(millis[249] < 2000, "a status call took {} ms", millis[249]);
    assert_eq!(
        term(&hosts),
        term_before,
        "the leadership changed under the flood"
    );

    // A compromised node's certificate, used from the bridge: it may read, not administer.
    let keys = tempfile::TempDir::new().unwrap();
    for file in ["ca.crt", "node.crt", "node.key"] {
        let text = hosts.sh_ok("h1", &format!("cat /var/lib/milvus-fleet/pki/{file}"));
        std::fs::write(keys.path().join(file), text).unwrap();
    }
    let call = |method: &str, path: &str, body: &str, with_cert: bool| -> (u16, String) {
        let mut args = vec![
            hosts.address("h1"),
            "19500".into(),
            method.into(),
            path.into(),
            body.into(),
            keys.path().join("ca.crt").display().to_string(),
        ];
        if with_cert {
            args.push(keys.path().join("node.crt").display().to_string());
            args.push(keys.path().join("node.key").display().to_string());
        }
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &hosts.switch_netns(), "python3"])
            .arg(repo().join("tests/client/api_call.py"))
            .args(&args)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{method} {path}: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (status, body) = said.split_once('\n').unwrap_or((&said, ""));
        (status.trim().parse().unwrap(), body.trim().to_owned())
    };
    let token_ids = |hosts: &Hosts| -> Vec<String> {
        let listed: serde_json::Value =
            serde_json::from_str(&hosts.sh_ok("h1", "milvus-fleet token list --json")).unwrap();
        let mut ids: Vec<String> = listed
            .as_array()
            .map(|tokens| tokens.iter().map(|t| t["id"].to_string()).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    };
    let tokens_before = token_ids(&hosts);
    let (status, _) = call("GET", "/v1/status", "", true);
    assert_eq!(status, 200, "a node may read the status");
    for (method, path, body) in [
        ("POST", "/v1/tokens", "{}"),
        ("POST", "/v1/tokens/rotate", "{}"),
        ("POST", "/v1/jobs", r#"{"type":"node-remove","node":"h1"}"#),
        ("POST", "/v1/jobs/nope/cancel", "{}"),
    ] {
        let (status, said) = call(method, path, body, true);
        assert_eq!(
            status, 403,
            "{method} {path} with a node's certificate: {said}"
        );
        assert!(said.contains("needs an operator"), "{said}");
        let (status, said) = call(method, path, body, false);
        assert_eq!(status, 404, "{method} {path} without a certificate: {said}");
    }
    let (status, metrics) = call("GET", "/metrics", "", false);
    assert_eq!(status, 200);
    assert!(metrics.contains("milvus_fleet_leader 1"), "{metrics}");
    assert_eq!(token_ids(&hosts), tokens_before, "a token was minted");
    let jobs = hosts.sh_ok("h1", "milvus-fleet job list");
    assert!(!jobs.contains("node-remove"), "{jobs}");

    // etcd, from the bridge: its client and peer ports refuse a caller without a cluster
    // certificate; the client port answers the node's (the refusal is the certificate's).
    let curl = |port: &str, with_cert: bool| {
        let mut command = std::process::Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &hosts.switch_netns(),
                "curl",
                "-sS",
                "--max-time",
                "5",
            ])
            .arg("--cacert")
            .arg(keys.path().join("ca.crt"));
        if with_cert {
            command
                .arg("--cert")
                .arg(keys.path().join("node.crt"))
                .arg("--key")
                .arg(keys.path().join("node.key"));
        }
        command
            .arg(format!("https://{}:{port}/version", hosts.address("h1")))
            .output()
            .unwrap()
    };
    for port in ["2379", "2380"] {
        let refused = curl(port, false);
        assert!(
            !refused.status.success(),
            "etcd port {port} answered without a certificate: {}",
            String::from_utf8_lossy(&refused.stdout)
        );
    }
    let answered = curl("2379", true);
    assert!(
        String::from_utf8_lossy(&answered.stdout).contains("etcdserver"),
        "etcd's client port with the node's certificate: {}{}",
        String::from_utf8_lossy(&answered.stdout),
        String::from_utf8_lossy(&answered.stderr)
    );

    // The Milvus roles' etcd user reaches Milvus' keys and nothing of milvus-fleet's.
    let as_milvus = |command: &str| {
        hosts.sh(
            "h1",
            &format!(
                "docker run --rm --network host -v /etc/milvus-fleet/tls:/t:ro local/etcd:test \
                 etcdctl --endpoints=https://{}:2379 --cacert=/t/ca.crt --cert=/t/milvus.crt \
                 --key=/t/milvus.key {command} 2>&1",
                hosts.address("h1")
            ),
        )
    };
    let fleet_keys = as_milvus("get --prefix --keys-only /milvus-fleet/");
    let said = String::from_utf8_lossy(&fleet_keys.stdout).into_owned();
    assert!(
        !fleet_keys.status.success() && said.contains("permission denied"),
        "the milvus user read milvus-fleet's keys: {said}"
    );
    let milvus_keys = as_milvus("get --prefix --keys-only --limit=1 by-dev/meta/session/");
    let said = String::from_utf8_lossy(&milvus_keys.stdout).into_owned();
    assert!(
        milvus_keys.status.success() && said.contains("by-dev/meta/session/"),
        "the milvus user could not read Milvus' sessions: {said}"
    );
    let write = as_milvus("put /milvus-fleet/security-test/leader evil");
    assert!(!write.status.success(), "the milvus user wrote a fleet key");

    // Milvus: clients log in. The daemon set root's password to the cluster's (made by
    // init, root-only) the first time the server answered; Milvus' first password and
    // none at all are refused.
    let python = client_python();
    let login = |password: &str| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &hosts.switch_netns(), &python])
            .arg(repo().join("tests/client/vectors.py"))
            .args([hosts.address("h1").as_str(), "19537", "login"])
            .env("MILVUS_PASSWORD", password)
            .output()
            .unwrap()
    };
    assert_eq!(
        hosts.sh_ok("h1", "stat -c '%U %a' /etc/milvus-fleet/credentials/milvus"),
        "root 600"
    );
    let password = hosts.sh_ok("h1", "cat /etc/milvus-fleet/credentials/milvus");
    assert_eq!(password.len(), 32, "a generated password");
    wait_until(
        "the cluster's Milvus password to log in",
        Duration::from_secs(120),
        || login(&password).status.success(),
    );
    for refused in ["Milvus", ""] {
        let out = login(refused);
        assert!(
            !out.status.success(),
            "Milvus let in root with {refused:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let leaked = hosts.sh_ok(
        "h1",
        &format!(
            "journalctl --no-pager -o cat | grep -c {password} || true; \
             grep -rl {password} /var/lib/milvus-fleet /var/lib/milvus-fleet-rendered /run/milvus-fleet /etc/systemd 2>/dev/null || true"
        ),
    );
    assert_eq!(leaked, "0", "the Milvus password leaked: {leaked}");

    // The load balancer's clients' port listens where it was told: the node's address.
    let listening = hosts.sh_ok("h1", "ss -Hltn 'sport = :19537' | awk '{print $4}'");
    assert_eq!(
        listening,
        format!("{}:19537", hosts.address("h1")),
        "load_balancer.addresses = [\"node\"]"
    );
}
