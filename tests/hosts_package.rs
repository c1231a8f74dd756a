//! The package on real systemd hosts: apt installs it, systemd starts the daemon and
//! gets its READY, `apt remove` stops it, `apt purge` leaves nothing behind.

mod support;

use support::{deb_path, Hosts};

const DEB_IN_HOST: &str = "/var/tmp/milvus-fleet.deb";

/// Files and directories the package or the daemon may create; none may survive a purge.
const FOOTPRINT: &[&str] = &[
    "/usr/bin/milvus-fleet",
    "/etc/milvus-fleet",
    "/var/lib/milvus-fleet",
    "/run/milvus-fleet",
    "/usr/lib/systemd/system/milvus-fleet.service",
    "/usr/lib/systemd/system/milvus-fleet-join.service",
    "/usr/lib/systemd/system/milvus-fleet-apply.service",
    "/usr/lib/systemd/system/milvus-fleet-standalone-clear.service",
    "/usr/lib/systemd/system/milvus-fleet-renew.service",
    "/usr/lib/systemd/system/milvus-fleet-renew.timer",
    "/usr/share/polkit-1/rules.d/50-milvus-fleet.rules",
    "/usr/lib/sysusers.d/milvus-fleet.conf",
    "/usr/lib/tmpfiles.d/milvus-fleet.conf",
    "/usr/share/doc/milvus-fleet",
    "/usr/share/man/man1/milvus-fleet.1.gz",
    "/usr/share/bash-completion/completions/milvus-fleet",
];

#[test]
#[ignore = "needs root, systemd-nspawn and the built .deb: scripts/test-all.sh runs it"]
fn deb_installs_starts_stops_and_purges_on_three_hosts() {
    let deb = deb_path();
    let hosts = Hosts::up("mfpkg", "172.31.91", 3);

    for host in hosts.names() {
        hosts.copy_in(host, &deb, DEB_IN_HOST);
        hosts.sh_ok(
            host,
            &format!("DEBIAN_FRONTEND=noninteractive apt-get install -y -q {DEB_IN_HOST} && rm {DEB_IN_HOST}"),
        );
        // Installed, not enabled or started: `init`/`join` do that once there is a cluster.
        assert_eq!(hosts.systemctl(host, "is-enabled milvus-fleet"), "disabled");
        assert_eq!(hosts.systemctl(host, "is-active milvus-fleet"), "inactive");
        assert_eq!(
            hosts.sh_ok(host, "id -un milvus-fleet"),
            "milvus-fleet",
            "sysusers made the user"
        );
    }

    let h1 = &hosts.names()[0];
    // Every unit the package ships passes systemd's own checks, with nothing on stderr.
    let units = hosts.sh_ok(
        h1,
        "dpkg -L milvus-fleet | grep -E '/systemd/system/.*\\.(service|target|socket|timer|path)$'",
    );
    assert!(!units.is_empty(), "the package ships units");
    for unit in units.lines() {
        let out = hosts.sh(h1, &format!("systemd-analyze verify --man=no {unit}"));
        assert!(
            out.status.success(),
            "verify {unit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "verify {unit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The worked examples are installed with the docs and valid as installed.
    let examples = hosts.sh_ok(h1, "ls /usr/share/doc/milvus-fleet/examples/*.toml");
    assert!(examples.lines().count() >= 3, "{examples}");
    for example in examples.lines() {
        hosts.sh_ok(
            h1,
            &format!("milvus-fleet config check --no-dropins --config {example} >/dev/null"),
        );
    }

    for host in hosts.names() {
        // Type=notify: `systemctl start` returns once the daemon said READY=1.
        hosts.sh_ok(host, "systemctl start milvus-fleet");
        assert_eq!(hosts.systemctl(host, "is-active milvus-fleet"), "active");
        let journal = hosts.sh_ok(host, "journalctl -u milvus-fleet -b --no-pager -o cat");
        assert!(journal.contains("ready"), "daemon logged ready: {journal}");
        // Stable MESSAGE_IDs: an operator finds the event by its id, with its fields.
        let ready = hosts.sh_ok(
            host,
            "journalctl -b --no-pager -o verbose MESSAGE_ID=bbec81ecd6ba4931bc992b49cf555be1",
        );
        assert!(ready.contains("MESSAGE=ready"), "{ready}");
        assert!(
            ready.contains(&format!("NODE={host}")),
            "structured field with this host's name: {ready}"
        );
        assert!(
            journal.contains("Started milvus-fleet.service"),
            "systemd saw READY: {journal}"
        );
        let status = hosts.systemctl(host, "show -P StatusText milvus-fleet");
        assert!(status.contains("not part of a cluster yet"), "{status}");
        let user = hosts.sh_ok(
            host,
            "ps -o user= -p $(systemctl show -P MainPID milvus-fleet)",
        );
        assert_eq!(user, "milvus-fleet", "the daemon does not run as root");
        // The local API answers on its socket, which only the daemon's group may use.
        let status = hosts.sh_ok(host, "milvus-fleet status --json");
        assert!(status.contains(&format!("\"node\":\"{host}\"")), "{status}");
        assert!(
            status.contains("\"role\":\"none\""),
            "not in a cluster: {status}"
        );
        assert_eq!(
            hosts.sh_ok(host, "stat -c '%a %U %G' /run/milvus-fleet/api.sock"),
            "660 milvus-fleet milvus-fleet"
        );
        assert_eq!(
            hosts.systemctl(host, "show -P WatchdogUSec milvus-fleet"),
            "10s"
        );
    }

    // The watchdog is real both ways: with a 2 s watchdog the daemon's pings keep it
    // alive for several intervals, and a frozen daemon is killed and restarted.
    let h2 = &hosts.names()[1];
    hosts.sh_ok(
        h2,
        "mkdir -p /run/systemd/system/milvus-fleet.service.d && \
         printf '[Service]\\nWatchdogSec=2s\\n' > /run/systemd/system/milvus-fleet.service.d/watchdog.conf && \
         systemctl daemon-reload && systemctl restart milvus-fleet && sleep 5",
    );
    assert_eq!(hosts.systemctl(h2, "show -P NRestarts milvus-fleet"), "0");
    assert_eq!(hosts.systemctl(h2, "is-active milvus-fleet"), "active");
    hosts.sh_ok(h2, "kill -STOP $(systemctl show -P MainPID milvus-fleet)");
    let restarted =
        "for i in $(seq 1 150); do [ \"$(systemctl show -P NRestarts milvus-fleet)\" = 1 ] && \
                     systemctl is-active -q milvus-fleet && exit 0; sleep 0.1; done; exit 1";
    hosts.sh_ok(h2, restarted);
    let journal = hosts.sh_ok(h2, "journalctl -u milvus-fleet -b --no-pager -o cat");
    assert!(
        journal.contains("Watchdog timeout"),
        "systemd's watchdog fired: {journal}"
    );
    hosts.sh_ok(
        h2,
        "rm -r /run/systemd/system/milvus-fleet.service.d && systemctl daemon-reload",
    );

    // A broken drop-in is refused on reload and the running configuration stays.
    hosts.sh_ok(h1, "mkdir -p /etc/milvus-fleet/fleet.d && printf '[daemon]\\napi_prot = 1\\n' > /etc/milvus-fleet/fleet.d/50-typo.toml");
    hosts.sh_ok(h1, "systemctl reload milvus-fleet");
    let rejected =
        "journalctl -u milvus-fleet -b --no-pager -o cat | grep -c 'reload rejected' || true";
    let mut seen = String::new();
    for _ in 0..50 {
        seen = hosts.sh_ok(h1, rejected);
        if seen != "0" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(seen, "1", "the reload was rejected and logged");
    let journal = hosts.sh_ok(h1, "journalctl -u milvus-fleet -b --no-pager -o cat");
    assert!(
        journal.contains("50-typo.toml:2:1: key `daemon.api_prot`"),
        "{journal}"
    );
    assert_eq!(hosts.systemctl(h1, "is-active milvus-fleet"), "active");

    // SIGTERM stops it cleanly (exit 0, not a kill), and a restart gets READY again.
    hosts.sh_ok(
        h1,
        "rm /etc/milvus-fleet/fleet.d/50-typo.toml && systemctl restart milvus-fleet",
    );
    assert_eq!(
        hosts.systemctl(h1, "show -P ExecMainStatus milvus-fleet"),
        "0"
    );
    assert_eq!(hosts.systemctl(h1, "show -P NRestarts milvus-fleet"), "0");

    for host in hosts.names() {
        hosts.sh_ok(
            host,
            "DEBIAN_FRONTEND=noninteractive apt-get remove -y -q milvus-fleet",
        );
        assert_eq!(hosts.systemctl(host, "is-active milvus-fleet"), "inactive");
        assert_eq!(
            hosts.sh_ok(
                host,
                "test -e /usr/bin/milvus-fleet && echo present || echo gone"
            ),
            "gone"
        );
        let journal = hosts.sh_ok(host, "journalctl -u milvus-fleet -b --no-pager -o cat");
        assert!(
            journal.contains("stopped"),
            "the daemon stopped cleanly on remove: {journal}"
        );

        hosts.sh_ok(
            host,
            "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q milvus-fleet",
        );
        for path in FOOTPRINT {
            let left = hosts.sh_ok(host, &format!("test -e {path} && echo left || echo gone"));
            assert_eq!(left, "gone", "{path} after purge on {host}");
        }
        let leftovers = hosts.sh_ok(
            host,
            "find / -xdev \\( -path /proc -o -path /sys \\) -prune -o -name '*milvus-fleet*' -print",
        );
        assert_eq!(
            leftovers, "",
            "files named after the package after purge on {host}"
        );
        let units = hosts.systemctl(host, "list-unit-files --no-legend 'milvus-fleet*' | wc -l");
        assert_eq!(units, "0", "no unit files after purge on {host}");
        assert_eq!(
            hosts.sh_ok(
                host,
                "dpkg-query -W -f='${Status}' milvus-fleet 2>&1 || true"
            ),
            "dpkg-query: no packages found matching milvus-fleet"
        );
    }
}
