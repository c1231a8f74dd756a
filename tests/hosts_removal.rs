//! A witness, and the removal of the node that ran `init`, on real systemd hosts (issue
//! 18): h1 inits the cluster (storage and compute: the real Milvus server), h2 joins as
//! storage and compute, h3 as the witness (an etcd voter and nothing else); h4 is no
//! member, only the site's S3.
//!
//! - The witness holds no object-storage keys and no Milvus password: not in the files
//!   milvus-fleet writes, nowhere on its disk.
//! - With the witness's certificate (a compromised witness), from the bridge: minting a
//!   token, rotating tokens and submitting a node removal get 403, and nothing changes.
//! - Certificates renew: the daily timer is on; `pki renew` renews nothing that is not
//!   due; forced on the witness and on h2, new keys and certificates land in the daemon's
//!   and root's files, the old certificate is refused and the new one admitted, and the
//!   nodes stay up; symlinks the daemon's user planted where root writes are replaced,
//!   never written through.
//! - h1, the init node, is removed by an operator on h2: afterwards h2's and h3's API and
//!   etcd refuse h1's certificate, and the cluster goes on (h2 mints a token: it signs
//!   with the CA key kept in etcd, not h1's copy); h1's renewal fails with an alert.

mod support;

use std::time::Duration;

use support::dataplane::{
    credentials, images, install_package, prepare_hosts, start_site_s3, wait_until,
    write_credentials,
};
use support::{deb_path, repo, Hosts};

const PKG: &str = "/var/cache/milvus-fleet/milvus-fleet.deb";

fn fleet_toml(hosts: &Hosts) -> String {
    format!(
        r#"[cluster]
name = "removal-test"
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
        h1 = hosts.address("h4"),
    )
}

/// The nodes `host`'s daemon lists in its status, each up.
fn all_up_in(hosts: &Hosts, host: &str, names: &[&str]) -> bool {
    let wanted: Vec<(String, String)> = names
        .iter()
        .map(|n| (n.to_string(), "up".to_owned()))
        .collect();
    hosts.nodes_seen(host) == wanted
}

/// `milvus-fleet join` on `host` with a token made on `server`, by hand.
fn join(hosts: &Hosts, host: &str, server: &str, role: &str) {
    let token = hosts.sh_ok(
        server,
        &format!("milvus-fleet token create --role {role} 2>/dev/null"),
    );
    hosts.write_file(host, "/root/token", &token, "0600");
    hosts.sh_ok(
        host,
        &format!(
            "milvus-fleet join {} --name {host} --address {} --roles {role} < /root/token",
            hosts.address(server),
            hosts.address(host)
        ),
    );
}

/// A node's certificate files, copied out of `host` (for calls from the bridge).
struct NodeCert {
    dir: tempfile::TempDir,
}

impl NodeCert {
    fn of(hosts: &Hosts, host: &str) -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        for file in ["ca.crt", "node.crt", "node.key"] {
            let text = hosts.sh_ok(host, &format!("cat /var/lib/milvus-fleet/pki/{file}"));
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        Self { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// Whether `host`'s API serves this certificate (its status route); a certificate it
    /// does not admit has its connection closed after the handshake.
    fn admitted_by(&self, hosts: &Hosts, host: &str) -> bool {
        self.try_call(hosts, host, "GET", "/v1/status", "")
            .is_ok_and(|(status, _)| status == 200)
    }

    /// One call to `host`'s API from the bridge with this certificate: (status, body).
    fn call(
        &self,
        hosts: &Hosts,
        host: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, String) {
        self.try_call(hosts, host, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path} on {host}: {e}"))
    }

    fn try_call(
        &self,
        hosts: &Hosts,
        host: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &hosts.switch_netns(), "python3"])
            .arg(repo().join("tests/client/api_call.py"))
            .args([
                hosts.address(host),
                "19500".into(),
                method.into(),
                path.into(),
                body.into(),
                self.path("ca.crt"),
                self.path("node.crt"),
                self.path("node.key"),
            ])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!("{said}{}", String::from_utf8_lossy(&out.stderr)));
        }
        let (status, body) = said.split_once('\n').unwrap_or((&said, ""));
        Ok((status.trim().parse().unwrap(), body.trim().to_owned()))
    }

    /// etcdctl from the bridge against `host`'s etcd with this certificate (etcd's HTTP
    /// gateway ignores a certificate's name, so only gRPC shows the user's rights).
    fn etcdctl(&self, hosts: &Hosts, host: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new("ip")
            .args(["netns", "exec", &hosts.switch_netns(), "etcdctl"])
            .arg(format!("--endpoints=https://{}:2379", hosts.address(host)))
            .arg(format!("--cacert={}", self.path("ca.crt")))
            .arg(format!("--cert={}", self.path("node.crt")))
            .arg(format!("--key={}", self.path("node.key")))
            .arg("--command-timeout=5s")
            .args(args)
            .output()
            .unwrap()
    }

    /// What `host`'s etcd answers a put of `value` at `key` with this certificate.
    fn etcd_put(&self, hosts: &Hosts, host: &str, key: &str, value: &str) -> String {
        let out = self.etcdctl(hosts, host, &["put", key, value]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Whether `host`'s etcd answers a read of the cluster's keys with this certificate,
    /// from the bridge.
    fn etcd_answers(&self, hosts: &Hosts, host: &str) -> bool {
        let out = self.etcdctl(
            hosts,
            host,
            &[
                "get",
                "--prefix",
                "--keys-only",
                "/milvus-fleet/removal-test/",
            ],
        );
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("/milvus-fleet/")
    }
}

#[test]
#[ignore = "needs root, systemd-nspawn, the built .deb and a Docker engine: scripts/test-all.sh runs it"]
fn a_witness_holds_no_keys_and_the_init_node_can_leave() {
    let deb = deb_path();
    let images = images();
    let hosts = Hosts::up_with(
        "mfrm",
        "172.31.89",
        4,
        &[
            ("FLEET_HOSTS_PACKAGES", "docker.io"),
            ("FLEET_HOSTS_DOCKER", "1"),
        ],
    );
    prepare_hosts(&hosts, &deb, PKG, &images, |host| match host {
        "h1" | "h2" => vec!["etcd", "nginx", "milvus"],
        "h3" => vec!["etcd", "nginx"],
        _ => vec!["seaweedfs"],
    });
    for host in ["h1", "h2", "h3"] {
        install_package(&hosts, host, PKG);
    }
    start_site_s3(&hosts, "h4");

    // h1: init as a storage and compute node.
    hosts.write_file(
        "h1",
        "/etc/milvus-fleet/fleet.toml",
        &fleet_toml(&hosts),
        "0644",
    );
    write_credentials(&hosts, "h1");
    hosts.sh_ok(
        "h1",
        &format!(
            "milvus-fleet init --name h1 --address {} --roles storage,compute >/dev/null",
            hosts.address("h1")
        ),
    );
    join(&hosts, "h2", "h1", "storage,compute");
    join(&hosts, "h3", "h1", "witness");
    wait_until(
        "every node up in every status",
        Duration::from_secs(60),
        || {
            ["h1", "h2", "h3"]
                .iter()
                .all(|h| all_up_in(&hosts, h, &["h1", "h2", "h3"]))
        },
    );

    // The witness holds no object-storage keys and no Milvus password (the package's
    // credential files stay empty), and the S3 secret is nowhere on its disk.
    let secret = credentials()
        .lines()
        .find_map(|l| l.strip_prefix("MILVUS_FLEET_S3_SECRET_ACCESS_KEY="))
        .unwrap()
        .to_owned();
    hosts.write_file("h3", "/root/pattern", &format!("{secret}\n"), "0600");
    let found = hosts.sh_ok(
        "h3",
        "find /etc/milvus-fleet/credentials -type f -size +0 2>/dev/null; \
         grep -rlFf /root/pattern --exclude=pattern --exclude-dir=proc --exclude-dir=sys \
         --exclude-dir=dev / 2>/dev/null || true",
    );
    assert_eq!(
        found, "",
        "the witness holds object-storage keys or a password"
    );
    // h2 runs Milvus: it holds both (the check can find them).
    assert_eq!(
        hosts.sh_ok(
            "h2",
            "find /etc/milvus-fleet/credentials -type f -size +0 | sort"
        ),
        "/etc/milvus-fleet/credentials/milvus\n/etc/milvus-fleet/credentials/object-storage"
    );

    // A compromised witness: its certificate may read the status, not act as an operator.
    let witness = NodeCert::of(&hosts, "h3");
    let tokens_before = hosts.sh_ok("h1", "milvus-fleet token list --json");
    let (status, said) = witness.call(&hosts, "h1", "GET", "/v1/status", "");
    assert_eq!(status, 200, "{said}");
    for (method, path, body) in [
        ("POST", "/v1/tokens", "{}"),
        ("POST", "/v1/tokens/rotate", "{}"),
        ("POST", "/v1/jobs", r#"{"type":"node-remove","node":"h1"}"#),
    ] {
        let (status, said) = witness.call(&hosts, "h1", method, path, body);
        assert_eq!(
            status, 403,
            "{method} {path} with the witness's certificate: {said}"
        );
    }
    assert_eq!(
        hosts.sh_ok("h1", "milvus-fleet token list --json"),
        tokens_before,
        "the witness changed the tokens"
    );
    assert!(!hosts
        .sh_ok("h1", "milvus-fleet job list")
        .contains("node-remove"));
    // ... nor through etcd: it reads the cluster's records and writes none of them.
    assert!(
        witness.etcd_answers(&hosts, "h2"),
        "the witness cannot read etcd"
    );
    let config_in_etcd = || {
        hosts.sh_ok(
            "h1",
            "docker exec mf-etcd etcdctl get /milvus-fleet/removal-test/config --print-value-only | sha256sum",
        )
    };
    let config_before = config_in_etcd();
    for key in [
        "/milvus-fleet/removal-test/config",
        "/milvus-fleet/removal-test/tokens/forged",
        "/milvus-fleet/removal-test/members/h2",
        "/milvus-fleet/removal-test/leader",
    ] {
        let said = witness.etcd_put(&hosts, "h2", key, "forged");
        assert!(
            said.contains("permission denied"),
            "the witness's put of {key}: {said}"
        );
    }
    assert_eq!(config_in_etcd(), config_before);

    // Renewal: the timer is on; nothing is renewed before it is due.
    for host in ["h1", "h2", "h3"] {
        assert_eq!(
            hosts.systemctl(host, "is-enabled milvus-fleet-renew.timer"),
            "enabled",
            "{host}"
        );
    }
    let cert_of = |host: &str| hosts.sh_ok(host, "sha256sum < /var/lib/milvus-fleet/pki/node.crt");
    let before = cert_of("h3");
    let not_due = hosts.sh_ok("h3", "milvus-fleet pki renew");
    assert!(not_due.starts_with("Not due"), "{not_due}");
    assert_eq!(cert_of("h3"), before);
    // Forced on the witness (signed by a storage node) and on h2 (it signs its own). On
    // the witness, the daemon's user first plants symlinks where root will write (its own
    // PKI directory): root replaces them and writes nothing through them.
    hosts.write_file("h3", "/root/planted-target", "untouched\n", "0644");
    hosts.sh_ok(
        "h3",
        "setpriv --reuid=milvus-fleet --regid=milvus-fleet --init-groups -- sh -c \
         'cd /var/lib/milvus-fleet/pki && cp node.crt node.crt.planted && \
          ln -sf /root/planted-target node.crt && ln -sf /root/planted-target node.key'",
    );
    for host in ["h3", "h2"] {
        let before = if host == "h3" {
            hosts.sh_ok(
                host,
                "sha256sum < /var/lib/milvus-fleet/pki/node.crt.planted",
            )
        } else {
            cert_of(host)
        };
        let renewed = hosts.sh_ok(host, "milvus-fleet pki renew --force");
        assert!(renewed.starts_with("Renewed"), "{host}: {renewed}");
        assert_ne!(cert_of(host), before, "{host}'s certificate did not change");
        assert_eq!(
            hosts.sh_ok(host, "sha256sum < /etc/milvus-fleet/tls/etcd.crt"),
            cert_of(host),
            "{host}: root's copy for etcd differs from the daemon's"
        );
        assert_eq!(
            hosts.sh_ok(
                host,
                "stat -c '%U %a' /var/lib/milvus-fleet/pki/node.key /etc/milvus-fleet/tls/etcd.key"
            ),
            "milvus-fleet 600\nroot 600"
        );
    }
    assert_eq!(
        hosts.sh_ok(
            "h3",
            "cat /root/planted-target; find /var/lib/milvus-fleet/pki -type l"
        ),
        "untouched",
        "root wrote through a symlink the daemon's user planted"
    );
    wait_until(
        "every node up after the renewals",
        Duration::from_secs(60),
        || {
            ["h1", "h2", "h3"]
                .iter()
                .all(|h| all_up_in(&hosts, h, &["h1", "h2", "h3"]))
        },
    );
    assert!(
        !witness.admitted_by(&hosts, "h1"),
        "the witness's replaced certificate is still admitted"
    );
    let renewed_witness = NodeCert::of(&hosts, "h3");
    assert!(
        renewed_witness.admitted_by(&hosts, "h1"),
        "the witness's new certificate is refused"
    );
    assert!(
        renewed_witness.etcd_answers(&hosts, "h2"),
        "h2's etcd refused h3's new certificate"
    );

    // h1's certificate works everywhere while it is a member.
    let init_node = NodeCert::of(&hosts, "h1");
    for host in ["h2", "h3"] {
        assert!(
            init_node.admitted_by(&hosts, host),
            "{host} refused h1 while a member"
        );
    }
    assert!(
        init_node.etcd_answers(&hosts, "h2"),
        "h2's etcd refused h1 while a member"
    );

    // An operator on h2 removes h1, the node that ran init.
    let removed = hosts.sh_ok("h2", "timeout 180 milvus-fleet node remove h1 2>&1");
    assert!(removed.contains("revoked its certificate"), "{removed}");
    wait_until(
        "h1 gone from h2's and h3's status",
        Duration::from_secs(90),
        || {
            ["h2", "h3"]
                .iter()
                .all(|h| all_up_in(&hosts, h, &["h2", "h3"]))
        },
    );
    wait_until("h1's units stopped", Duration::from_secs(60), || {
        hosts.sh_ok("h1", "docker ps --quiet").is_empty()
    });

    // h1's certificate is refused by every remaining API and etcd member.
    for host in ["h2", "h3"] {
        assert!(
            !init_node.admitted_by(&hosts, host),
            "{host}'s API admitted the removed h1's certificate"
        );
        assert!(
            !init_node.etcd_answers(&hosts, host),
            "{host}'s etcd answered the removed h1's certificate"
        );
    }
    // The removed h1 cannot renew: the unit fails with an alert in the journal.
    let failed = hosts.sh(
        "h1",
        "systemd-run --wait --quiet --unit=renew-after-removal /usr/bin/milvus-fleet pki renew --force",
    );
    assert!(
        !failed.status.success(),
        "a removed node renewed its certificate"
    );
    let alert = || {
        hosts.sh_ok(
            "h1",
            "journalctl -q -o cat MESSAGE_ID=1b7d5e93c0a24f6e9d28a4c7f3e05b61",
        )
    };
    wait_until(
        "the renewal alert in h1's journal",
        Duration::from_secs(10),
        || alert().contains("could not be renewed"),
    );
    assert!(
        alert().contains("no storage node signed"),
        "{}\n{}",
        alert(),
        hosts.sh_ok("h1", "journalctl -q -o cat -u renew-after-removal")
    );

    // The remaining members still answer their own certificates, and the cluster goes
    // on: h2 mints a token, signing later joins with the CA key kept in etcd.
    let member = NodeCert::of(&hosts, "h2");
    assert!(member.etcd_answers(&hosts, "h3"), "h3's etcd refused h2");
    let token = hosts.sh_ok("h2", "milvus-fleet token create --role compute 2>/dev/null");
    assert!(token.starts_with("MFT1-"), "{token}");
}
