//! Shared helpers for the integration tests that need built packages and test hosts.
//! Each test binary includes this module with `mod support;` and uses what it needs.
#![allow(dead_code)]

pub mod cluster;
pub mod dataplane;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The single file with `extension` in `dir` under target/ (scripts/build-packages.sh
/// writes them there), or the path in `env_var` when that is set.
fn built(env_var: &str, dir: &str, extension: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env_var) {
        return PathBuf::from(path);
    }
    let dir = repo().join("target").join(dir);
    let found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/build-packages.sh first",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == extension))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one .{extension} in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().unwrap()
}

/// `milvus-fleet pki ARGS...` with this build's binary; panics with its error.
pub fn pki(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_milvus-fleet"))
        .arg("pki")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pki {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn deb_path() -> PathBuf {
    built("MILVUS_FLEET_DEB", "debian", "deb")
}

pub fn rpm_path() -> PathBuf {
    built("MILVUS_FLEET_RPM", "generate-rpm", "rpm")
}

/// Runs a command to completion; panics with its output if it cannot start.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs a command that must succeed and returns its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The secret part of a join token (`...-<id>.<secret>`).
pub fn secret_of(token: &str) -> String {
    token.trim().rsplit('.').next().unwrap().to_owned()
}

/// A set of booted test hosts (tests/hosts/fleet-hosts); torn down when dropped, also
/// when the test panics.
pub struct Hosts {
    prefix: String,
    subnet: String,
    names: Vec<String>,
    /// More FLEET_HOSTS_* settings (packages baked in, Docker inside).
    env: Vec<(String, String)>,
}

impl Hosts {
    /// Boots `count` hosts h1..hN. `prefix` and `subnet` (three octets) must be unique
    /// among tests that may run at the same time.
    pub fn up(prefix: &str, subnet: &str, count: usize) -> Self {
        Self::up_with(prefix, subnet, count, &[])
    }

    /// Like [`Hosts::up`], with more FLEET_HOSTS_* settings, e.g.
    /// `("FLEET_HOSTS_PACKAGES", "docker.io")` and `("FLEET_HOSTS_DOCKER", "1")`.
    pub fn up_with(prefix: &str, subnet: &str, count: usize, env: &[(&str, &str)]) -> Self {
        let hosts = Self {
            prefix: prefix.to_owned(),
            subnet: subnet.to_owned(),
            names: (1..=count).map(|i| format!("h{i}")).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        // A leftover of an interrupted run would make `up` refuse; clear it first.
        hosts.harness(&["down"]);
        let out = hosts.harness(&["up", &count.to_string()]);
        assert!(
            out.status.success(),
            "hosts did not boot:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        hosts
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn harness(&self, args: &[&str]) -> Output {
        Command::new(repo().join("tests/hosts/fleet-hosts"))
            .args(args)
            .env("FLEET_HOSTS_PREFIX", &self.prefix)
            .env("FLEET_HOSTS_SUBNET", &self.subnet)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("tests/hosts/fleet-hosts runs")
    }

    /// Runs a shell script inside `host`, returning its output whatever the exit code.
    pub fn sh(&self, host: &str, script: &str) -> Output {
        self.harness(&["exec", host, "sh", "-c", script])
    }

    /// Runs a shell script inside `host` that must succeed; returns its trimmed stdout.
    pub fn sh_ok(&self, host: &str, script: &str) -> String {
        let out = self.sh(host, script);
        assert!(
            out.status.success(),
            "on {host}: `{script}` failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `systemctl ARGS` inside `host`: trimmed stdout whatever the exit code, since
    /// `is-active`/`is-enabled` answer "inactive"/"disabled" with a non-zero code.
    pub fn systemctl(&self, host: &str, args: &str) -> String {
        let out = self.sh(host, &format!("systemctl {args}"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn copy_in(&self, host: &str, source: &Path, dest: &str) {
        self.copy_in_with_mode(host, source, dest, "0644");
    }

    pub fn copy_in_with_mode(&self, host: &str, source: &Path, dest: &str, mode: &str) {
        let out = self.harness(&["copy-in", host, source.to_str().unwrap(), dest, mode]);
        assert!(
            out.status.success(),
            "copy-in: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes `contents` to `dest` inside `host` with `mode`.
    pub fn write_file(&self, host: &str, dest: &str, contents: &str, mode: &str) {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), contents).unwrap();
        self.copy_in_with_mode(host, tmp.path(), dest, mode);
    }

    /// `docker load` of an image tarball into the engine inside `host`.
    pub fn docker_load(&self, host: &str, tarball: &Path) {
        let out = Command::new(repo().join("tests/hosts/fleet-hosts"))
            .args(["exec", host, "docker", "load", "--quiet"])
            .env("FLEET_HOSTS_PREFIX", &self.prefix)
            .env("FLEET_HOSTS_SUBNET", &self.subnet)
            .stdin(std::fs::File::open(tarball).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker load on {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The network namespace that holds the hosts' bridge: a client run in it reaches
    /// every host by its address.
    pub fn switch_netns(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// The address of host `name` (h1 is .11, h2 .12, ...).
    pub fn address(&self, name: &str) -> String {
        let index: usize = name.trim_start_matches('h').parse().unwrap();
        format!("{}.{}", self.subnet, 10 + index)
    }

    /// A tap device `name` on the hosts' bridge, in the switch namespace (`fleet-hosts
    /// tap`): a VM run there with `-netdev tap,ifname=NAME` sits beside the hosts.
    /// Removed with the hosts.
    pub fn tap(&self, name: &str) {
        let out = self.harness(&["tap", name]);
        assert!(
            out.status.success(),
            "tap: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The nodes `milvus-fleet status` on `host` lists, with whether each daemon is up
    /// (empty while it cannot answer).
    pub fn nodes_seen(&self, host: &str) -> Vec<(String, String)> {
        let out = self.sh(host, "milvus-fleet status --json");
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return vec![];
        };
        value["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|n| {
                        (
                            n["name"].as_str().unwrap_or("").to_owned(),
                            n["daemon"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn reboot(&self, host: &str) {
        let out = self.harness(&["reboot", host]);
        assert!(
            out.status.success(),
            "reboot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Power loss: every process of the host dies at once.
    pub fn kill(&self, host: &str) {
        assert!(self.harness(&["kill", host]).status.success());
    }

    /// Boots a killed host again from its own disk and waits until it is up.
    pub fn power_on(&self, host: &str) {
        let out = self.harness(&["power-on", host]);
        assert!(
            out.status.success(),
            "power-on: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether `host` runs (it is not killed).
    pub fn is_running(&self, host: &str) -> bool {
        let out = self.harness(&["list"]);
        String::from_utf8_lossy(&out.stdout).lines().any(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            fields.first() == Some(&host) && fields.get(2).is_some_and(|pid| *pid != "down")
        })
    }

    /// A whole-host freeze (every process stopped, its containers' too) and its thaw.
    pub fn freeze(&self, host: &str) {
        assert!(self.harness(&["freeze", host]).status.success());
    }

    pub fn thaw(&self, host: &str) {
        assert!(self.harness(&["thaw", host]).status.success());
    }

    pub fn cut(&self, host: &str) {
        assert!(self.harness(&["cut", host]).status.success());
    }

    pub fn heal(&self, host: &str) {
        assert!(self.harness(&["heal", host]).status.success());
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // A developer chasing a failure keeps the hosts to look around in them.
        if std::thread::panicking() && std::env::var_os("MILVUS_FLEET_KEEP_HOSTS").is_some() {
            eprintln!(
                "kept the test hosts {}-*: `tests/hosts/fleet-hosts down` with FLEET_HOSTS_PREFIX={} removes them",
                self.prefix, self.prefix
            );
            return;
        }
        let out = self.harness(&["down"]);
        if !out.status.success() {
            eprintln!(
                "teardown of {} failed: {}",
                self.prefix,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
