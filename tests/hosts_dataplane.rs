//! The rendered data plane for real: on three systemd hosts with a Docker engine inside,
//! the units `milvus-fleet render` writes start real containers (images built here from
//! Debian packages and PyPI wheels): a 3-member etcd, the nginx load balancer, and the
//! real Milvus standalone server against the site's S3 service (SeaweedFS) in the
//! external-S3, standalone active/standby topology. A Milvus client writes and searches
//! vectors through the load balancer.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::dataplane::{
    client, client_python, credentials, images, start_site_s3, wait_until, SECRET,
};
use support::{deb_path, Hosts};

fn config(hosts: &Hosts) -> String {
    format!(
        r#"[cluster]
name = "dataplane-test"
topology = "standalone-ha"

[object_storage]
kind = "s3"
endpoint = "{h3}:9000"
bucket = "milvus-test"

[images]
etcd = "local/etcd:test"
nginx = "local/nginx:test"
milvus = "local/milvus:test"

[[nodes]]
name = "h1"
address = "{h1}"
roles = ["storage", "compute"]

[[nodes]]
name = "h2"
address = "{h2}"
roles = ["storage", "compute"]

[[nodes]]
name = "h3"
address = "{h3}"
roles = ["witness"]
"#,
        h1 = hosts.address("h1"),
        h2 = hosts.address("h2"),
        h3 = hosts.address("h3"),
    )
}

/// What init and join write to /etc/milvus-fleet/tls, made here with `milvus-fleet pki`:
/// per host, (file name, local path, mode). etcd requires these certificates of every
/// client and peer; without init, etcd's auth stays off.
fn tls_files(
    hosts: &Hosts,
    dir: &std::path::Path,
) -> std::collections::BTreeMap<String, Vec<(String, PathBuf, &'static str)>> {
    use support::pki;
    let ca = dir.join("ca");
    pki(&[
        "create-ca",
        "--cluster",
        "dataplane-test",
        "--out",
        ca.to_str().unwrap(),
    ]);
    let milvus = dir.join("milvus");
    pki(&[
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--operator",
        "milvus",
        "--out",
        milvus.to_str().unwrap(),
    ]);
    hosts
        .names()
        .iter()
        .map(|host| {
            let out = dir.join(host);
            let address = hosts.address(host);
            pki(&[
                "issue",
                "--ca",
                ca.to_str().unwrap(),
                "--node",
                host,
                "--address",
                &address,
                "--out",
                out.to_str().unwrap(),
            ]);
            let files = vec![
                ("ca.crt".to_owned(), ca.join("ca.crt"), "0644"),
                ("etcd.crt".to_owned(), out.join("node.crt"), "0644"),
                ("etcd.key".to_owned(), out.join("node.key"), "0600"),
                ("milvus.crt".to_owned(), milvus.join("operator.crt"), "0644"),
                ("milvus.key".to_owned(), milvus.join("operator.key"), "0600"),
            ];
            (host.to_string(), files)
        })
        .collect()
}

#[test]
#[ignore = "needs root, systemd-nspawn, the built .deb and a Docker engine: scripts/test-all.sh runs it"]
fn rendered_units_run_etcd_load_balancer_and_milvus_that_a_client_uses() {
    let deb = deb_path();
    let images = images();
    let python = client_python();
    let hosts = Hosts::up_with(
        "mfdp",
        "172.31.97",
        3,
        &[
            ("FLEET_HOSTS_PACKAGES", "docker.io"),
            ("FLEET_HOSTS_DOCKER", "1"),
        ],
    );
    let compose_plugin = PathBuf::from("/usr/libexec/docker/cli-plugins/docker-compose");
    let tls_dir = tempfile::tempdir().unwrap();
    let tls = tls_files(&hosts, tls_dir.path());
    let credentials = credentials();

    std::thread::scope(|scope| {
        for host in hosts.names() {
            let (hosts, deb, images, plugin, tls) = (&hosts, &deb, &images, &compose_plugin, &tls);
            let (credentials, config) = (&credentials, config(hosts));
            scope.spawn(move || {
                hosts.copy_in(host, deb, "/var/tmp/milvus-fleet.deb");
                hosts.sh_ok(host, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /var/tmp/milvus-fleet.deb >/dev/null");
                hosts.copy_in_with_mode(host, plugin, "/usr/libexec/docker/cli-plugins/docker-compose", "0755");
                hosts.sh_ok(host, "for i in $(seq 1 100); do docker info >/dev/null 2>&1 && exit 0; sleep 0.2; done; exit 1");
                for tarball in images.values() {
                    hosts.docker_load(host, tarball);
                }
                hosts.write_file(host, "/etc/milvus-fleet/fleet.toml", &config, "0644");
                for (name, path, mode) in &tls[host] {
                    hosts.copy_in_with_mode(host, path, &format!("/etc/milvus-fleet/tls/{name}"), mode);
                }
                hosts.write_file(host, "/etc/milvus-fleet/credentials/object-storage", credentials, "0600");
                // What init/join will do: render as root, install the units.
                hosts.sh_ok(
                    host,
                    "milvus-fleet render --out /var/lib/milvus-fleet-rendered >/dev/null && \
                     cp /var/lib/milvus-fleet-rendered/units/*.service /etc/systemd/system/ && systemctl daemon-reload",
                );
            });
        }
    });
    start_site_s3(&hosts, "h3");

    // etcd: a new cluster needs its members started together.
    for host in hosts.names() {
        hosts.sh_ok(host, "systemctl start --no-block milvus-fleet-etcd");
    }
    let endpoints: Vec<String> = hosts
        .names()
        .iter()
        .map(|h| format!("https://{}:2379", hosts.address(h)))
        .collect();
    let health = format!(
        "docker exec -e ETCDCTL_ENDPOINTS={} mf-etcd etcdctl endpoint health 2>&1",
        endpoints.join(",")
    );
    wait_until("3 healthy etcd members", Duration::from_secs(60), || {
        let out = hosts.sh("h1", &health);
        String::from_utf8_lossy(&out.stdout)
            .matches("is healthy")
            .count()
            == 3
    });
    let etcd_log = hosts.sh_ok("h2", "journalctl -u milvus-fleet-etcd -o cat --no-pager");
    assert!(
        etcd_log.contains("etcdserver"),
        "the container's log is the unit's journal: {etcd_log}"
    );

    // Load balancers on both compute nodes; Milvus standalone on h1 only. No daemon runs
    // in this test: the units are started by hand (hosts_supervision covers placement).
    for host in ["h1", "h2"] {
        hosts.sh_ok(host, "systemctl start milvus-fleet-lb");
    }
    hosts.sh_ok("h1", "systemctl start milvus-fleet-standalone");

    // A client writes and searches through h2's load balancer, which reaches h1's server.
    let written = client(&hosts, &python, &hosts.address("h2"), 19537, "write");
    assert!(
        written.contains("top hit for vector #123: id=123"),
        "{written}"
    );
    assert!(written.contains("count 1000"), "{written}");
    let milvus_log = hosts.sh_ok(
        "h1",
        "journalctl -u milvus-fleet-standalone -o cat --no-pager",
    );
    assert!(
        milvus_log.contains("[INFO]"),
        "Milvus's log is the unit's journal"
    );

    // `systemctl stop` stops the container; `start` brings it back with the data.
    hosts.sh_ok("h1", "systemctl stop milvus-fleet-standalone");
    assert_eq!(
        hosts.sh_ok("h1", "docker ps --all --quiet --filter name=mf-standalone"),
        ""
    );
    assert_eq!(
        hosts.systemctl("h1", "is-active milvus-fleet-standalone"),
        "inactive"
    );
    hosts.sh_ok("h1", "systemctl start milvus-fleet-standalone");
    wait_until("the Milvus container", Duration::from_secs(60), || {
        !hosts
            .sh_ok("h1", "docker ps --quiet --filter name=mf-standalone")
            .is_empty()
    });
    let checked = client(&hosts, &python, &hosts.address("h1"), 19537, "check");
    assert!(
        checked.contains("top hit for vector #123: id=123"),
        "{checked}"
    );
    assert!(
        checked.contains("count 1000"),
        "data survived the restart: {checked}"
    );

    // The load balancer takes new settings on reload without a restart.
    hosts.sh_ok("h2", "systemctl reload milvus-fleet-lb");
    wait_until("nginx to reconfigure", Duration::from_secs(10), || {
        hosts
            .sh_ok("h2", "journalctl -u milvus-fleet-lb -o cat --no-pager")
            .contains("reconfiguring")
    });
    assert_eq!(
        hosts.systemctl("h2", "show -P NRestarts milvus-fleet-lb"),
        "0"
    );
    assert_eq!(hosts.systemctl("h2", "is-active milvus-fleet-lb"), "active");

    // The object-storage secret is in the 0600 credentials file and nowhere we wrote.
    for host in ["h1", "h2"] {
        let found = hosts.sh_ok(
            host,
            &format!("grep -rl {SECRET} /var/lib/milvus-fleet /etc/systemd/system /etc/milvus-fleet || true"),
        );
        assert_eq!(
            found, "/etc/milvus-fleet/credentials/object-storage",
            "on {host}"
        );
        let mode = hosts.sh_ok(
            host,
            "stat -c %a /etc/milvus-fleet/credentials/object-storage",
        );
        assert_eq!(mode, "600");
    }
}
