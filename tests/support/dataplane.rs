//! Helpers for tests that run the data plane on test hosts: the locally built images, the
//! Milvus client, the site's S3 service.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{repo, run_ok, Hosts};

pub const KEY: &str = "fleet-test-key";
pub const SECRET: &str = "fleet-test-secret-0123456789";

/// Image name -> saved image tarball (tests/images/build.sh, cached).
pub fn images() -> BTreeMap<String, PathBuf> {
    let listing = run_ok(repo().join("tests/images/build.sh").to_str().unwrap(), &[]);
    listing
        .lines()
        .map(|line| {
            let (name, path) = line.split_once(' ').unwrap();
            (name.to_owned(), PathBuf::from(path))
        })
        .collect()
}

pub fn client_python() -> String {
    run_ok(repo().join("tests/client/venv.sh").to_str().unwrap(), &[])
        .trim()
        .to_owned()
}

/// Runs the Milvus client against `host:port` from the hosts' bridge network.
/// Milvus' root password as the cluster keeps it on h1 (made by init), or Milvus' first one
/// where no init ran (the data-plane test): what the test clients log in with. Read once,
/// before any fault can take h1 away.
pub fn milvus_password(hosts: &Hosts) -> String {
    static PASSWORD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PASSWORD
        .get_or_init(|| {
            let kept = hosts.sh_ok(
                "h1",
                "cat /etc/milvus-fleet/credentials/milvus 2>/dev/null || true",
            );
            match kept.trim() {
                "" => "Milvus".to_owned(),
                password => password.to_owned(),
            }
        })
        .clone()
}

pub fn client(hosts: &Hosts, python: &str, address: &str, port: u16, mode: &str) -> String {
    client_result(hosts, python, address, port, mode).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`client`], with a failure (what the client printed) as an error.
pub fn client_result(
    hosts: &Hosts,
    python: &str,
    address: &str,
    port: u16,
    mode: &str,
) -> Result<String, String> {
    let script = repo().join("tests/client/vectors.py");
    let port = port.to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", &hosts.switch_netns(), python])
        .arg(&script)
        .args([address, port.as_str(), mode])
        .env("MILVUS_PASSWORD", milvus_password(hosts))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "client {mode} via {address}:{port} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// What one load balancer's client saw while [`Searching`] ran.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SearchView {
    pub lb: String,
    pub searches: u64,
    pub failures: u64,
    pub longest_gap_s: f64,
    pub errors: BTreeMap<String, u64>,
}

/// A Milvus client searching ten times a second through the load balancers of some
/// hosts (one thread each), from the hosts' bridge network, until stopped.
pub struct Searching {
    child: std::process::Child,
    stop_file: tempfile::TempPath,
    /// (host, address) of each load balancer searched.
    lbs: Vec<(String, String)>,
}

impl Searching {
    pub fn start(hosts: &Hosts, python: &str, lbs: &[&str]) -> Self {
        let stop_file = tempfile::NamedTempFile::new().unwrap().into_temp_path();
        std::fs::remove_file(&stop_file).unwrap();
        let lbs: Vec<(String, String)> = lbs
            .iter()
            .map(|h| (h.to_string(), hosts.address(h)))
            .collect();
        let addresses: Vec<&str> = lbs.iter().map(|(_, a)| a.as_str()).collect();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &hosts.switch_netns(), python])
            .arg(repo().join("tests/client/vectors.py"))
            .args([&addresses.join(","), "19537", "watch"])
            .arg(&stop_file)
            .env("MILVUS_PASSWORD", milvus_password(hosts));
        // The client dies with the test or bench that started it: one left behind by an
        // interrupted run searched on for half an hour and skewed the next run's figures.
        // SAFETY: prctl in the forked child before exec touches no memory of ours.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Self {
            child,
            stop_file,
            lbs,
        }
    }

    /// Stops the searches and returns what each load balancer's client saw (`lb` names
    /// the host).
    pub fn stop(self) -> Vec<SearchView> {
        std::fs::write(&self.stop_file, "").unwrap();
        let out = self.child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the searching client failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| {
                let mut view: SearchView = serde_json::from_str(l).unwrap();
                if let Some((host, _)) = self.lbs.iter().find(|(_, a)| *a == view.lb) {
                    view.lb = host.clone();
                }
                view
            })
            .collect()
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until `unit` is active on `host`; on timeout the failure shows the unit's and the
/// daemon's journal, so a CI log says why.
pub fn wait_active(hosts: &Hosts, host: &str, unit: &str, timeout: Duration) {
    let start = Instant::now();
    while !hosts
        .sh(host, &format!("systemctl is-active --quiet {unit}"))
        .status
        .success()
    {
        if start.elapsed() >= timeout {
            let why = hosts.sh(
                host,
                &format!(
                    "systemctl status --no-pager {unit}; \
                     journalctl --no-pager -o short-monotonic -u milvus-fleet -n 80; \
                     journalctl --no-pager -o short-monotonic -u {unit} -n 40"
                ),
            );
            panic!(
                "timed out after {timeout:?} waiting for {unit} on {host}:\n{}",
                String::from_utf8_lossy(&why.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `apt-get install` of the package file `package` on `host`, as an operator would.
pub fn install_package(hosts: &Hosts, host: &str, package: &str) {
    hosts.sh_ok(
        host,
        &format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 {package} >/dev/null"
        ),
    );
}

/// The object-storage credentials file's text (the test S3's keys).
pub fn credentials() -> String {
    format!("MILVUS_FLEET_S3_ACCESS_KEY_ID={KEY}\nMILVUS_FLEET_S3_SECRET_ACCESS_KEY={SECRET}\n")
}

/// Writes the 0600 credentials file an operator puts on the first node before `init`.
pub fn write_credentials(hosts: &Hosts, host: &str) {
    hosts.write_file(
        host,
        "/etc/milvus-fleet/credentials/object-storage",
        &credentials(),
        "0600",
    );
}

/// The site's own S3 service on `host`, run by a unit of the test (milvus-fleet only connects).
pub fn start_site_s3(hosts: &Hosts, host: &str) {
    let compose = format!(
        "name: site-s3\nservices:\n  s3:\n    image: local/seaweedfs:test\n    network_mode: host\n    restart: \"no\"\n    \
         environment:\n      WEED_IP: \"{}\"\n      S3_ACCESS_KEY: \"{KEY}\"\n      S3_SECRET_KEY: \"{SECRET}\"\n    \
         volumes:\n      - /var/lib/site-s3:/data\n",
        hosts.address(host)
    );
    hosts.write_file(host, "/etc/site-s3/compose.yaml", &compose, "0600");
    let unit = "[Unit]\nDescription=the site's S3 service\nRequires=docker.service\nAfter=docker.service\n[Service]\n\
                ExecStart=/usr/bin/docker compose --file /etc/site-s3/compose.yaml up --no-color --exit-code-from s3\n\
                ExecStop=/usr/bin/docker compose --file /etc/site-s3/compose.yaml down\n";
    hosts.write_file(host, "/etc/systemd/system/site-s3.service", unit, "0644");
    hosts.sh_ok(host, "systemctl daemon-reload && systemctl start site-s3");
}

/// Readies every host for the data plane, in parallel: the package file at `package`,
/// Docker's compose plugin, a running engine, and the images `wanted(host)` names (what
/// a VM image or a mounted medium would bring: no registry here).
pub fn prepare_hosts(
    hosts: &Hosts,
    deb: &std::path::Path,
    package: &str,
    images: &BTreeMap<String, PathBuf>,
    wanted: impl Fn(&str) -> Vec<&'static str> + Sync,
) {
    let plugin = PathBuf::from("/usr/libexec/docker/cli-plugins/docker-compose");
    std::thread::scope(|scope| {
        for host in hosts.names() {
            let (plugin, wanted) = (&plugin, &wanted);
            scope.spawn(move || {
                hosts.copy_in(host, deb, package);
                hosts.copy_in_with_mode(host, plugin, plugin.to_str().unwrap(), "0755");
                hosts.sh_ok(host, "for i in $(seq 1 100); do docker info >/dev/null 2>&1 && exit 0; sleep 0.2; done; exit 1");
                for name in wanted(host) {
                    hosts.docker_load(host, &images[name]);
                }
            });
        }
    });
}

/// What an operator does on the first VM: the cluster's `fleet.toml`, the object-storage
/// keys (0600), then `milvus-fleet init` of h1 as a storage and compute node.
pub fn init_h1(hosts: &Hosts, fleet_toml: &str) {
    hosts.write_file("h1", "/etc/milvus-fleet/fleet.toml", fleet_toml, "0644");
    write_credentials(hosts, "h1");
    hosts.sh_ok(
        "h1",
        &format!(
            "milvus-fleet init --name h1 --address {} --roles storage,compute >/dev/null",
            hosts.address("h1")
        ),
    );
}
