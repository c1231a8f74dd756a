//! The test-host harness itself: what later system tests rely on. Real systemd as
//! PID 1 with D-Bus and journald, hosts that reach each other by name, partitions that
//! cut and heal, reboots that keep enabled units, and a teardown that leaves nothing.

mod support;

use std::path::Path;

use support::{run_ok, Hosts};

const PREFIX: &str = "mfhrn";
const SUBNET: &str = "172.31.94";

#[test]
#[ignore = "needs root and systemd-nspawn: scripts/test-all.sh runs it"]
fn hosts_boot_talk_partition_reboot_and_tear_down() {
    {
        let hosts = Hosts::up(PREFIX, SUBNET, 2);
        for host in hosts.names() {
            assert_eq!(hosts.sh_ok(host, "systemctl is-system-running"), "running");
            assert_eq!(hosts.sh_ok(host, "hostname"), *host);
            assert_eq!(
                hosts.sh_ok(host, "cat /proc/1/comm"),
                "systemd",
                "systemd is PID 1"
            );
            // The system bus answers, and systemd is on it.
            let version = hosts.sh_ok(
                host,
                "busctl get-property org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager Version",
            );
            assert!(version.starts_with("s \"252"), "{version}");
            hosts.sh_ok(host, "logger -t harness-test hello-from-the-journal");
        }
        for host in hosts.names() {
            let seen = hosts.sh_ok(host, "journalctl -t harness-test -o cat --no-pager");
            assert_eq!(seen, "hello-from-the-journal", "journald on {host}");
        }
        let machine_state = run_ok(
            "systemctl",
            &["-M", &format!("{PREFIX}-h2"), "is-system-running"],
        );
        assert_eq!(
            machine_state.trim(),
            "running",
            "systemctl -M reaches a host from outside"
        );

        // Hosts reach each other by name on the bridge.
        hosts.sh_ok("h1", "ping -c1 -W2 h2 >/dev/null");
        assert_eq!(
            hosts.sh_ok("h2", "ip -4 -o addr show eth0 | awk '{print $4}'"),
            format!("{SUBNET}.12/24")
        );

        // A cut host is unreachable; healing brings it back.
        hosts.cut("h2");
        let cut = hosts.sh("h1", "ping -c1 -W1 h2");
        assert!(!cut.status.success(), "h2 is cut off");
        hosts.heal("h2");
        hosts.sh_ok(
            "h1",
            "for i in 1 2 3 4 5; do ping -c1 -W1 h2 >/dev/null && exit 0; done; exit 1",
        );

        // A reboot is a real new boot, and enabled units come back.
        let boot_before = hosts.sh_ok("h1", "cat /proc/sys/kernel/random/boot_id");
        hosts.sh_ok(
            "h1",
            "systemd-run --unit=harness-marker --property=RemainAfterExit=yes true",
        );
        hosts.sh_ok(
            "h1",
            "printf '[Service]\\nType=oneshot\\nRemainAfterExit=yes\\nExecStart=/bin/true\\n[Install]\\nWantedBy=multi-user.target\\n' > /etc/systemd/system/harness-enabled.service && systemctl enable harness-enabled.service 2>/dev/null",
        );
        hosts.reboot("h1");
        assert_ne!(
            hosts.sh_ok("h1", "cat /proc/sys/kernel/random/boot_id"),
            boot_before
        );
        assert_eq!(
            hosts.sh_ok(
                "h1",
                "journalctl --list-boots --no-pager | grep -cE '^ *-?[0-9]+ '"
            ),
            "2"
        );
        assert_eq!(
            hosts.sh_ok("h1", "systemctl is-active harness-enabled"),
            "active"
        );
        assert_eq!(
            hosts.sh_ok("h1", "systemctl is-active harness-marker || true"),
            "inactive"
        );
        hosts.sh_ok("h1", "ping -c1 -W2 h2 >/dev/null");
    }
    // Dropped: everything the harness made is gone.
    let netns = run_ok("ip", &["netns", "list"]);
    assert!(!netns.contains(PREFIX), "network namespaces left: {netns}");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(&format!("/var/tmp/{PREFIX}/hosts")),
        "overlays left mounted"
    );
    assert!(
        !Path::new(&format!("/var/tmp/{PREFIX}/hosts/h1")).exists(),
        "host directories left"
    );
    assert!(!Path::new(&format!("/run/systemd/machines/{PREFIX}-h1")).exists());
    let nspawns = std::process::Command::new("pgrep")
        .args(["-f", &format!("--machine={PREFIX}-")])
        .output()
        .unwrap();
    assert!(nspawns.stdout.is_empty(), "nspawn processes left");
}

/// Later system tests run the data plane as containers inside the hosts: the harness's
/// Docker option must give an engine that starts at boot and runs a container.
#[test]
#[ignore = "needs root and systemd-nspawn: scripts/test-all.sh runs it"]
fn a_docker_engine_runs_containers_inside_a_host() {
    let hosts = Hosts::up_with(
        "mfhdk",
        "172.31.95",
        1,
        &[
            ("FLEET_HOSTS_PACKAGES", "docker.io"),
            ("FLEET_HOSTS_DOCKER", "1"),
        ],
    );
    hosts.sh_ok("h1", "for i in $(seq 1 100); do docker info >/dev/null 2>&1 && exit 0; sleep 0.2; done; docker info");
    assert_eq!(hosts.sh_ok("h1", "systemctl is-active docker"), "active");
    // No registry: build an image from the host's own files, as the data-plane tests will.
    hosts.sh_ok(
        "h1",
        "tar -C / -ch usr/bin/echo lib64/ld-linux-x86-64.so.2 lib/x86_64-linux-gnu/libc.so.6 | docker import - local/echo:1 >/dev/null",
    );
    let said = hosts.sh_ok(
        "h1",
        "docker run --rm local/echo:1 /usr/bin/echo from-a-container",
    );
    assert_eq!(said, "from-a-container");
}
