//! Membership on real systemd hosts with Docker inside: `init` on h1; h2 and h3 join
//! through cloud-init alone (a NoCloud seed and a boot); bad tokens are refused with the
//! reason and leave nothing behind; h4 joins later by hand, and the existing nodes only
//! reload their load balancer; h3 is removed (refused first while it would break etcd's
//! quorum); status agrees on every node; token secrets never reach argv, the journal or
//! a file that is not 0600.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::dataplane::{
    client, client_python, images, install_package, prepare_hosts, start_site_s3, wait_active,
    wait_until, write_credentials,
};
use support::{deb_path, secret_of, Hosts};

const PKG: &str = "/var/cache/milvus-fleet/milvus-fleet.deb";

fn fleet_toml(hosts: &Hosts) -> String {
    format!(
        r#"[cluster]
name = "membership-test"
topology = "standalone-ha"

[object_storage]
kind = "s3"
endpoint = "{h1}:9000"
bucket = "milvus-test"

[images]
etcd = "local/etcd:test"
nginx = "local/nginx:test"
milvus = "local/milvus:test"
"#,
        h1 = hosts.address("h1"),
    )
}

/// `milvus-fleet status --json` on `host`.
fn status(hosts: &Hosts, host: &str) -> serde_json::Value {
    serde_json::from_str(&hosts.sh_ok(host, "milvus-fleet status --json")).unwrap()
}

/// The leader as `host`'s status names it (itself when it leads); empty when it names none.
fn leader_seen_by(hosts: &Hosts, host: &str) -> String {
    let seen = status(hosts, host);
    match seen["role"].as_str() {
        Some("leader") => host.to_owned(),
        _ => seen["leader"].as_str().unwrap_or("").to_owned(),
    }
}

/// The nodes a host's status lists, with whether each daemon is up.
fn nodes_seen(hosts: &Hosts, host: &str) -> Vec<(String, String)> {
    hosts.nodes_seen(host)
}

fn all_up(names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| (n.to_string(), "up".to_owned()))
        .collect()
}

/// etcd's members as `name learner?` lines, via h1's etcd container.
fn etcd_members(hosts: &Hosts) -> BTreeSet<String> {
    hosts
        .sh_ok("h1", "docker exec mf-etcd etcdctl member list -w simple")
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(", ").collect();
            format!("{} {}", fields[2], fields.get(5).copied().unwrap_or(""))
        })
        .collect()
}

/// Each unit's invocation id: a new one means the unit was restarted.
fn invocations(hosts: &Hosts, host: &str, units: &[&str]) -> Vec<String> {
    units
        .iter()
        .map(|u| hosts.systemctl(host, &format!("show -P InvocationID {u}")))
        .collect()
}

/// The Milvus upstreams of `host`'s running load balancer, as its nginx reads its
/// configuration inside the container (`nginx -T`), not the file rendered on the host.
fn lb_upstreams(hosts: &Hosts, host: &str) -> BTreeSet<String> {
    let dump = hosts.sh_ok(
        host,
        "docker exec mf-lb nginx -T -c /etc/milvus-fleet/lb/nginx.conf 2>/dev/null",
    );
    let block = dump
        .split("upstream milvus {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap_or_default();
    block
        .lines()
        .filter_map(|line| line.trim().strip_prefix("server "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The node whose server `host`'s running load balancer tries first: the group its
/// included placement file names (`standalone milvus_on_<node>;`), if any.
fn lb_placed(hosts: &Hosts, host: &str) -> Option<String> {
    let dump = hosts.sh_ok(
        host,
        "docker exec mf-lb nginx -T -c /etc/milvus-fleet/lb/nginx.conf 2>/dev/null",
    );
    dump.lines()
        .filter_map(|line| line.trim().strip_prefix("standalone milvus_on_"))
        .map(|rest| rest.trim_end_matches(';').to_owned())
        .next()
}

/// Waits until the running load balancer of every host in `lbs` routes clients to
/// exactly the Milvus port of `compute`, the node that runs the standalone server
/// first; on timeout, says what each one has.
fn assert_lbs_route_to(hosts: &Hosts, lbs: &[&str], compute: &[&str], after: &str) {
    let wanted: BTreeSet<String> = compute
        .iter()
        .map(|h| format!("{}:19530", hosts.address(h)))
        .collect();
    let start = std::time::Instant::now();
    loop {
        let server = compute
            .iter()
            .find(|h| hosts.systemctl(h, "is-active milvus-fleet-standalone") == "active")
            .map(|h| h.to_string());
        let seen: Vec<(&str, BTreeSet<String>, Option<String>)> = lbs
            .iter()
            .map(|h| (*h, lb_upstreams(hosts, h), lb_placed(hosts, h)))
            .collect();
        if server.is_some()
            && seen
                .iter()
                .all(|(_, upstreams, placed)| *upstreams == wanted && *placed == server)
        {
            return;
        }
        if start.elapsed() >= Duration::from_secs(60) {
            let journals: Vec<String> = compute
                .iter()
                .map(|h| {
                    format!(
                        "--- {h}:\n{}",
                        hosts.sh_ok(
                            h,
                            "journalctl -q -o short-precise -u milvus-fleet -u milvus-fleet-standalone \
                             | grep -v ' mf-standalone' | tail -40"
                        )
                    )
                })
                .collect();
            panic!(
                "after {after}: the running load balancers should route to {wanted:?}, {server:?} first; \
                 they route to (host, servers, first): {seen:?}\n{}",
                journals.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What a refused join must leave on the joining host: nothing.
fn assert_nothing_joined(hosts: &Hosts, host: &str) {
    let left = hosts.sh_ok(
        host,
        "ls /var/lib/milvus-fleet/cluster.toml /var/lib/milvus-fleet/pki /etc/milvus-fleet/tls /etc/milvus-fleet/fleet.d \
         /etc/systemd/system/milvus-fleet-* 2>/dev/null; systemctl is-active milvus-fleet || true",
    );
    assert_eq!(left, "inactive", "{host} is half-joined: {left}");
}

/// Makes a token on h1 and returns it.
fn token(hosts: &Hosts, args: &str) -> String {
    hosts.sh_ok(
        "h1",
        &format!("milvus-fleet token create {args} 2>/dev/null"),
    )
}

/// `milvus-fleet join` on h4 with `token` on standard input; returns (success, stderr).
fn join_h4(hosts: &Hosts, token: &str) -> (bool, String) {
    hosts.write_file("h4", "/root/token", token, "0600");
    let out = hosts.sh(
        "h4",
        &format!(
            "milvus-fleet join {} --name h4 --address {} --roles compute < /root/token",
            hosts.address("h2"),
            hosts.address("h4")
        ),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs root, systemd-nspawn, the built .deb and a Docker engine: scripts/test-all.sh runs it"]
fn hosts_form_a_cluster_through_cloud_init_join_later_and_leave() {
    let deb = deb_path();
    let images = images();
    let python = client_python();
    let hosts = Hosts::up_with(
        "mfmb",
        "172.31.93",
        4,
        &[
            ("FLEET_HOSTS_PACKAGES", "docker.io cloud-init"),
            ("FLEET_HOSTS_DOCKER", "1"),
        ],
    );
    // h1 runs the Milvus server (placed on the init node) and the site's S3; the others run
    // etcd and load balancers (h4 stands by for Milvus).
    prepare_hosts(&hosts, &deb, PKG, &images, |host| {
        if host == "h1" {
            vec!["etcd", "nginx", "milvus", "seaweedfs"]
        } else {
            vec!["etcd", "nginx"]
        }
    });

    // h1: the package by hand, init.
    install_package(&hosts, "h1", PKG);
    hosts.write_file(
        "h1",
        "/etc/milvus-fleet/fleet.toml",
        &fleet_toml(&hosts),
        "0644",
    );
    write_credentials(&hosts, "h1");
    start_site_s3(&hosts, "h1");
    let init = hosts.sh_ok(
        "h1",
        &format!(
            "milvus-fleet init --name h1 --address {} --roles storage,compute",
            hosts.address("h1")
        ),
    );
    assert!(
        init.contains("Cluster membership-test initialized"),
        "{init}"
    );
    assert!(init.contains("milvus-fleet join"), "{init}");
    let mut secrets: Vec<String> = vec![secret_of(
        init.lines().find(|l| l.starts_with("MFT1-")).unwrap(),
    )];
    wait_until("h1's daemon to lead", Duration::from_secs(30), || {
        status(&hosts, "h1")["role"] == "leader"
    });

    // What h1 runs must not restart when other nodes join (its load balancer reloads).
    let h1_units = [
        "milvus-fleet-etcd",
        "milvus-fleet-lb",
        "milvus-fleet-standalone",
        "milvus-fleet.service",
    ];
    // The daemon starts the standalone server once it leads (not init): wait for it.
    wait_active(
        &hosts,
        "h1",
        "milvus-fleet-standalone",
        Duration::from_secs(300),
    );
    assert_lbs_route_to(&hosts, &["h1"], &["h1"], "init");
    let before_storage_joins = invocations(&hosts, "h1", &h1_units);

    // h2 and h3: user-data from `milvus-fleet cloud-init`, one token for both.
    let user_data = hosts.sh_ok(
        "h1",
        &format!(
            "milvus-fleet cloud-init --server {} --role storage --uses 2 --ttl 20m --package-file {PKG} 2>/dev/null",
            hosts.address("h1")
        ),
    );
    let schema = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(schema.path(), &user_data).unwrap();
    let checked = std::process::Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(schema.path())
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "cloud-init schema: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let cloud_token = user_data
        .lines()
        .find_map(|l| l.trim().strip_prefix("token = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    secrets.push(secret_of(&cloud_token));
    // The token is only in write_files (a 0600 file), never on a command line.
    let runcmd = &user_data[user_data.find("runcmd:").unwrap()..];
    assert!(!runcmd.contains(&cloud_token), "{runcmd}");
    for host in ["h2", "h3"] {
        hosts.write_file(
            host,
            "/var/lib/cloud/seed/nocloud/user-data",
            &user_data,
            "0600",
        );
        hosts.write_file(
            host,
            "/var/lib/cloud/seed/nocloud/meta-data",
            &format!("instance-id: test-{host}\nlocal-hostname: {host}\n"),
            "0644",
        );
        // The test hosts have no `locales` package; a real image sets its locale like this.
        hosts.write_file(
            host,
            "/etc/cloud/cloud.cfg.d/90-locale.cfg",
            "locale: C.UTF-8\n",
            "0644",
        );
        hosts.reboot(host);
    }
    wait_until(
        "h2 and h3 to join through cloud-init",
        Duration::from_secs(240),
        || nodes_seen(&hosts, "h1") == all_up(&["h1", "h2", "h3"]),
    );
    wait_until("3 voting etcd members", Duration::from_secs(60), || {
        etcd_members(&hosts)
            == ["h1 false", "h2 false", "h3 false"]
                .map(String::from)
                .into()
    });
    assert_eq!(
        invocations(&hosts, "h1", &h1_units),
        before_storage_joins,
        "nothing restarted on h1 when h2 and h3 joined"
    );
    assert_lbs_route_to(&hosts, &["h1"], &["h1"], "h2 and h3 joined (storage only)");
    // The CA's key never left h1: the joiners got signed certificates only. (h4 joins
    // through h2 below, which signs with the key etcd keeps for the storage nodes.)
    for host in ["h2", "h3"] {
        let found = hosts.sh_ok(host, "find / -xdev -name ca.key 2>/dev/null || true");
        assert_eq!(found, "", "a CA key on {host}");
    }
    assert_eq!(
        hosts.sh_ok("h1", "stat -c '%U %a' /etc/milvus-fleet/tls/ca.key"),
        "root 600"
    );
    assert_eq!(
        hosts.sh_ok("h1", "ls /var/lib/milvus-fleet/pki"),
        "ca.crt\nnode.crt\nnode.key"
    );
    for host in ["h2", "h3"] {
        assert_eq!(
            hosts.sh_ok(
                host,
                "test -e /etc/milvus-fleet/join.toml && echo kept || echo deleted"
            ),
            "deleted",
            "the join file (with the token) is gone from {host}"
        );
        assert_eq!(
            hosts.systemctl(host, "show -P Result milvus-fleet-join"),
            "success"
        );
    }

    // Refused joins say why and leave nothing behind (h4, by hand).
    install_package(&hosts, "h4", PKG);
    let config_before = hosts.sh_ok("h1", "cat /var/lib/milvus-fleet/cluster.toml");
    let members_before = etcd_members(&hosts);
    let good = token(&hosts, "--role compute");
    let other_pin = format!(
        "MFT1-{}-{}",
        "ab".repeat(32),
        good.rsplit('-').next().unwrap()
    );
    let expired = token(&hosts, "--ttl 1s");
    let revoked = token(&hosts, "");
    let revoked_id = revoked
        .rsplit('-')
        .next()
        .unwrap()
        .split('.')
        .next()
        .unwrap();
    hosts.sh_ok("h1", &format!("milvus-fleet token revoke {revoked_id}"));
    std::thread::sleep(Duration::from_secs(2));
    for (token, says) in [
        ("MFT1-garbage".to_owned(), "garbled"),
        (other_pin, "nothing was sent"),
        (expired.clone(), "expired"),
        (cloud_token.clone(), "used up"),
        (revoked.clone(), "revoked"),
    ] {
        let (joined, stderr) = join_h4(&hosts, &token);
        assert!(!joined && stderr.contains(says), "{says}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert_nothing_joined(&hosts, "h4");
    }
    // A spent token under the name that spent it (another host posing as h2): refused.
    hosts.write_file("h4", "/root/token", &cloud_token, "0600");
    let posing = hosts.sh(
        "h4",
        &format!(
            "milvus-fleet join {} --name h2 --address {} --roles storage < /root/token",
            hosts.address("h1"),
            hosts.address("h4")
        ),
    );
    let stderr = String::from_utf8_lossy(&posing.stderr);
    assert!(
        !posing.status.success() && stderr.contains("used by h2 already"),
        "a spent token under its node's name: {stderr}"
    );
    assert_nothing_joined(&hosts, "h4");
    assert_eq!(
        hosts.sh_ok("h1", "cat /var/lib/milvus-fleet/cluster.toml"),
        config_before
    );
    assert_eq!(etcd_members(&hosts), members_before);
    for t in [&good, &expired, &revoked] {
        secrets.push(secret_of(t));
    }

    // h4 joins (compute) through h2, a storage node that did not init: on h1 only the
    // load balancer's upstreams change (a reload); nothing restarts.
    let units_h1 = h1_units;
    let reloads_before = hosts.sh_ok(
        "h1",
        "journalctl -u milvus-fleet-lb -o cat | grep -c Reloaded || true",
    );
    let before = invocations(&hosts, "h1", &units_h1);
    // Watch h4's process list while it joins: the secret must never be in argv.
    // (The pattern comes from a 0600 file, so the watcher's own argv does not hold it.)
    hosts.write_file("h4", "/root/secret-pattern", &secret_of(&good), "0600");
    let watch = "for i in $(seq 1 400); do ps -eo args; sleep 0.05; done | grep -cFf /root/secret-pattern || true";
    let (seen_in_argv, (joined, stderr)) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| hosts.sh_ok("h4", watch));
        std::thread::sleep(Duration::from_millis(300));
        let result = join_h4(&hosts, &good);
        (watcher.join().unwrap(), result)
    });
    assert!(joined, "h4 joins: {stderr}");
    assert_eq!(
        seen_in_argv, "0",
        "the token secret showed in h4's process list"
    );
    // Running it again ends in the same state.
    let (again, stderr) = join_h4(&hosts, &good);
    assert!(again, "a repeated join succeeds: {stderr}");
    wait_until("h4 in every node's status", Duration::from_secs(60), || {
        hosts
            .names()
            .iter()
            .all(|h| nodes_seen(&hosts, h) == all_up(&["h1", "h2", "h3", "h4"]))
    });
    assert_eq!(hosts.systemctl("h4", "is-active milvus-fleet-lb"), "active");
    assert_eq!(
        hosts.systemctl("h4", "is-active milvus-fleet-standalone"),
        "inactive",
        "h4 stands by: it is not the node that runs the standalone server"
    );
    assert_eq!(
        invocations(&hosts, "h1", &units_h1),
        before,
        "nothing restarted on h1"
    );
    wait_until(
        "h1's load balancer to reload",
        Duration::from_secs(30),
        || {
            hosts.sh_ok(
                "h1",
                "journalctl -u milvus-fleet-lb -o cat | grep -c Reloaded || true",
            ) != reloads_before
        },
    );
    let upstream = format!("{}:19530", hosts.address("h4"));
    assert!(
        hosts
            .sh_ok(
                "h1",
                "cat /var/lib/milvus-fleet-rendered/config/lb/nginx.conf"
            )
            .contains(&upstream),
        "h1's load balancer knows h4"
    );
    assert_lbs_route_to(&hosts, &["h1", "h4"], &["h1", "h4"], "h4 joined");

    // Removing h3 is refused while h2's etcd is down (1 of 2 remaining members healthy).
    // The daemon too: its next converge would start a stopped etcd again (it supervises).
    hosts.sh_ok(
        "h2",
        "systemctl stop milvus-fleet.service milvus-fleet-etcd",
    );
    let refused = hosts.sh("h1", "milvus-fleet node remove h3");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("quorum"),
        "{stderr}"
    );
    hosts.sh_ok(
        "h2",
        "systemctl start milvus-fleet-etcd milvus-fleet.service",
    );
    wait_until("h2's etcd back", Duration::from_secs(60), || {
        hosts
            .sh(
                "h1",
                &format!(
                    "docker exec -e ETCDCTL_ENDPOINTS=https://{}:2379 mf-etcd etcdctl endpoint health",
                    hosts.address("h2")
                ),
            )
            .status
            .success()
    });
    let unknown = hosts.sh("h1", "milvus-fleet node remove nope");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        !unknown.status.success() && stderr.contains("no node \"nope\""),
        "`node remove nope` right after h2's etcd came back: {}, stdout {:?}, stderr {stderr:?}",
        unknown.status,
        String::from_utf8_lossy(&unknown.stdout)
    );

    // The leader before the removal (not h1 by now, in all likelihood: h1 runs the
    // standalone server, and a leader on the server's node steps down).
    let mut leader_before = String::new();
    wait_until(
        "a leader named before the removal",
        Duration::from_secs(30),
        || {
            leader_before = leader_seen_by(&hosts, "h1");
            !leader_before.is_empty()
        },
    );
    // h3's certificate, kept to show the API refusing it after the removal.
    let h3_keys = tempfile::TempDir::new().unwrap();
    for file in ["ca.crt", "node.crt", "node.key"] {
        let text = hosts.sh_ok("h3", &format!("cat /var/lib/milvus-fleet/pki/{file}"));
        std::fs::write(h3_keys.path().join(file), text).unwrap();
    }
    let api_admits_h3 = |host: &str| {
        let key = |f: &str| h3_keys.path().join(f).display().to_string();
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &hosts.switch_netns(), "python3"])
            .arg(support::repo().join("tests/client/api_call.py"))
            .args([
                hosts.address(host),
                "19500".into(),
                "GET".into(),
                "/v1/status".into(),
            ])
            .args(["".into(), key("ca.crt"), key("node.crt"), key("node.key")])
            .output()
            .unwrap();
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("200")
    };
    assert!(api_admits_h3("h1"), "h1's API refused h3 while a member");
    let removed = hosts.sh_ok("h1", "milvus-fleet node remove h3 2>&1");
    assert!(removed.contains("revoked its certificate"), "{removed}");
    wait_until("h3 gone from every status", Duration::from_secs(60), || {
        ["h1", "h2", "h4"]
            .iter()
            .all(|h| nodes_seen(&hosts, h) == all_up(&["h1", "h2", "h4"]))
    });
    assert_eq!(
        etcd_members(&hosts),
        ["h1 false", "h2 false"].map(String::from).into()
    );
    let stopped = || {
        hosts.sh_ok("h3", "docker ps --quiet").is_empty()
            && hosts.sh_ok(
                "h3",
                "ls /etc/systemd/system/ | grep -c '^milvus-fleet-' || true",
            ) == "0"
    };
    let start = std::time::Instant::now();
    while !stopped() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "h3's components did not stop:\n{}",
            hosts.sh_ok(
                "h3",
                "docker ps; ls /etc/systemd/system; journalctl --no-pager -u milvus-fleet -u milvus-fleet-apply | tail -40"
            )
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_lbs_route_to(&hosts, &["h1", "h4"], &["h1", "h4"], "h3 was removed");
    // h3's certificate is a removed node's now: every remaining API and etcd member
    // refuses it.
    for host in ["h1", "h2", "h4"] {
        assert!(!api_admits_h3(host), "{host}'s API admitted the removed h3");
    }
    for member in ["h1", "h2"] {
        let read = hosts.sh(
            "h3",
            &format!(
                "docker run --rm --network host -v /etc/milvus-fleet/tls:/t:ro local/etcd:test \
                 etcdctl --endpoints=https://{}:2379 --cacert=/t/ca.crt --cert=/t/etcd.crt \
                 --key=/t/etcd.key get --prefix --keys-only /milvus-fleet/ 2>&1",
                hosts.address(member)
            ),
        );
        let said = String::from_utf8_lossy(&read.stdout);
        assert!(
            !read.status.success() && !said.contains("/milvus-fleet/"),
            "{member}'s etcd answered the removed h3's certificate: {said}"
        );
    }
    // The removal does not move the leadership, unless it removed the leader. (An etcd
    // membership change can stall the leader's keepalives for a moment: it then leads on
    // under the same term, and a status read in that moment names no leader; wait that
    // out.)
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        seen = leader_seen_by(&hosts, "h2");
        if seen == leader_before || (leader_before == "h3" && !seen.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        seen == leader_before || (leader_before == "h3" && !seen.is_empty() && seen != "h3"),
        "the leader was {leader_before} before h3's removal, h2 names {seen:?} after; h1's daemon:\n{}",
        hosts.sh_ok(
            "h1",
            "journalctl -q -o short-precise -u milvus-fleet | tail -30"
        )
    );

    // h4 cut off from the network: one "down" alert and, after healing, one "recovered",
    // found by their MESSAGE_IDs, on whichever node leads (h1 steps down from leadership
    // because it runs the standalone server, and the leadership may move while h4 is cut
    // off): across the cluster, exactly one of each (the leaders share them through etcd).
    let alerts = |host: &str| {
        hosts.sh_ok(
            host,
            "journalctl --no-pager -o cat MESSAGE_ID=3eab256b8aa646e690c4e162f94c0fe8 MESSAGE_ID=a6c7801f4743406eb8270a1fc7c1a53a | grep 'peer h4' || true",
        )
    };
    let all_alerts = || {
        ["h1", "h2", "h4"]
            .iter()
            .map(|h| alerts(h))
            .collect::<Vec<_>>()
            .join("\n")
    };
    hosts.cut("h4");
    wait_until(
        "the leader's alert that h4 is down",
        Duration::from_secs(30),
        || all_alerts().contains("peer h4 is down"),
    );
    hosts.heal("h4");
    wait_until(
        "the leader's alert that h4 recovered",
        Duration::from_secs(60),
        || all_alerts().contains("peer h4 recovered"),
    );
    std::thread::sleep(Duration::from_secs(3));
    let seen = all_alerts();
    let count = |what: &str| seen.lines().filter(|l| l.contains(what)).count();
    assert_eq!(
        (count("peer h4 is down"), count("peer h4 recovered")),
        (1, 1),
        "one down, one recovered across the cluster: {seen}"
    );

    // The data path through the newest node's load balancer reaches h1's Milvus.
    let written = client(&hosts, &python, &hosts.address("h4"), 19537, "write");
    assert!(
        written.contains("top hit for vector #123: id=123"),
        "{written}"
    );

    // Token secrets: not in any journal, and in no file that is not 0600. (The patterns
    // come from a 0600 file, so the checks' own argv does not hold them.)
    for host in hosts.names() {
        hosts.write_file(host, "/root/secrets", &(secrets.join("\n") + "\n"), "0600");
        let journal = hosts.sh_ok(
            host,
            "journalctl --no-pager -o cat | grep -cFf /root/secrets || true",
        );
        assert_eq!(journal, "0", "a token secret in {host}'s journal");
        let files = hosts.sh_ok(
            host,
            "grep -rlFf /root/secrets --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev \
             --exclude-dir=overlay2 / 2>/dev/null | while read f; do echo \"$(stat -c %a \"$f\") $f\"; done",
        );
        for line in files.lines() {
            assert!(
                line.starts_with("600 ") || line.starts_with("400 "),
                "{host}: {line}"
            );
        }
    }
}
