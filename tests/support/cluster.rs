//! A real etcd cluster and real daemons for the control-plane tests.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;

pub const CLUSTER: &str = "elect";
pub const LEADER_KEY: &str = "/milvus-fleet/elect/leader";
pub const ACTING_KEY: &str = "/milvus-fleet/elect/leader-acting";
/// The cluster's key prefix (job records, locks).
pub const PREFIX: &str = "/milvus-fleet/elect/";
/// The test daemons' lease. Longer than the 1 s default so that "well under the TTL"
/// (a restarted daemon revoking its predecessor's lease) stays distinguishable from
/// "waited out the TTL" even on a heavily loaded machine.
pub const TTL_SECS: u64 = 5;

/// Three etcd members on their own loopback addresses; killed when dropped.
pub struct Etcd {
    members: Vec<Child>,
    pub endpoints: Vec<String>,
}

impl Etcd {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// `start` with more etcd flags (the benchmark runs etcd tuned as milvus-fleet renders it).
    pub fn start_with(dir: &Path, extra: &[&str]) -> Self {
        // A /24 of loopback no other test uses: 127.<pid-derived>.<pid-derived>.1..3.
        let pid = std::process::id();
        let base = format!("127.{}.{}", 100 + pid % 100, 1 + (pid / 100) % 250);
        let ips: Vec<String> = (1..=3).map(|i| format!("{base}.{i}")).collect();
        for ip in &ips {
            for port in [2379, 2380] {
                TcpListener::bind((ip.as_str(), port))
                    .unwrap_or_else(|e| panic!("{ip}:{port} is taken: {e}"));
            }
        }
        let cluster: Vec<String> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("m{i}=http://{ip}:2380"))
            .collect();
        let members = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let log = fs::File::create(dir.join(format!("etcd-m{i}.log"))).unwrap();
                Command::new("etcd")
                    .args([
                        format!("--name=m{i}"),
                        format!("--data-dir={}", dir.join(format!("m{i}")).display()),
                        format!("--listen-client-urls=http://{ip}:2379"),
                        format!("--advertise-client-urls=http://{ip}:2379"),
                        format!("--listen-peer-urls=http://{ip}:2380"),
                        format!("--initial-advertise-peer-urls=http://{ip}:2380"),
                        format!("--initial-cluster={}", cluster.join(",")),
                        "--initial-cluster-state=new".into(),
                        "--initial-cluster-token=election-test".into(),
                    ])
                    .args(extra)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("etcd from etcd-server (scripts/install-prereqs.sh)")
            })
            .collect();
        let endpoints = ips.iter().map(|ip| format!("http://{ip}:2379")).collect();
        Self { members, endpoints }
    }
}

impl Etcd {
    /// Stops member `index` (0..3) with SIGTERM, as `systemctl stop` would.
    pub fn stop(&mut self, index: usize) {
        let pid = self.members[index].id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let _ = self.members[index].wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = member.kill();
            let _ = member.wait();
        }
    }
}

/// One `milvus-fleet daemon` with its own state directory and log.
pub struct Daemon {
    pub name: String,
    /// The port of its HTTPS API, and its runtime directory (local API socket).
    pub api_port: u16,
    pub runtime: PathBuf,
    child: Option<Child>,
    config: PathBuf,
    pub state: PathBuf,
    log: PathBuf,
}

impl Daemon {
    pub fn new(dir: &Path, name: &str, endpoints: &[String]) -> Self {
        let mut daemon = Self::prepare(dir, name, endpoints);
        daemon.start();
        daemon
    }

    /// Writes the daemon's configuration and directories without starting it.
    pub fn prepare(dir: &Path, name: &str, endpoints: &[String]) -> Self {
        Self::prepare_with_ttl(dir, name, endpoints, TTL_SECS)
    }

    /// `prepare` with another lease TTL (the benchmark uses the packaged default).
    pub fn prepare_with_ttl(dir: &Path, name: &str, endpoints: &[String], ttl_secs: u64) -> Self {
        // A free port for its API: bound and released at once.
        let api_port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let nodes: String = (1..=3)
            .map(|i| format!("[[nodes]]\nname = \"n{i}\"\naddress = \"10.9.0.{i}\"\n\n"))
            .collect();
        let quoted: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let config = dir.join(format!("{name}.toml"));
        fs::write(
            &config,
            format!(
                "[local]\nnode_name = \"{name}\"\n[cluster]\nname = \"{CLUSTER}\"\n\
                 [etcd]\nmode = \"external\"\nendpoints = [{}]\n[object_storage]\nkind = \"s3\"\n\
                 endpoint = \"s3.example:9000\"\n[daemon]\nlease_ttl_secs = {ttl_secs}\napi_port = {api_port}\napi_advertise = \"127.0.0.1:{api_port}\"\n\n{nodes}",
                quoted.join(", ")
            ),
        )
        .unwrap();
        let state = dir.join(format!("state-{name}"));
        let runtime = dir.join(format!("run-{name}"));
        fs::create_dir_all(&state).unwrap();
        fs::create_dir_all(&runtime).unwrap();
        Self {
            name: name.to_owned(),
            api_port,
            runtime,
            child: None,
            config,
            state,
            log: dir.join(format!("{name}.log")),
        }
    }

    pub fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_milvus-fleet"))
            .args(["daemon", "--no-dropins", "--config"])
            .arg(&self.config)
            .env("STATE_DIRECTORY", &self.state)
            .env("RUNTIME_DIRECTORY", &self.runtime)
            .env("MILVUS_FLEET_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for the process to end and returns its exit code (None: killed by a signal).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn reap(&mut self) -> Option<i32> {
        self.child.take().unwrap().wait().unwrap().code()
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    /// `GET /metrics` over the daemon's local socket.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut stream =
            std::os::unix::net::UnixStream::connect(self.runtime.join("api.sock")).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The leader key: (node, term).
pub async fn leader(client: &mut Client) -> Option<(String, i64)> {
    let response = client.get(LEADER_KEY, None).await.ok()?;
    let kv = response.kvs().first()?;
    Some((kv.value_str().unwrap().to_owned(), kv.create_revision()))
}

/// The leader that last acted: (node, term) from the acting key's value.
pub async fn acting(client: &mut Client) -> Option<(String, i64)> {
    let response = client.get(ACTING_KEY, None).await.ok()?;
    let kv = response.kvs().first()?;
    let (node, term) = kv.value_str().unwrap().split_once(' ')?;
    Some((node.to_owned(), term.parse().ok()?))
}

/// Polls until a leader other than `old_term` has acted; returns it and the time taken.
pub async fn next_acting(
    client: &mut Client,
    old_term: i64,
    since: Instant,
    limit: Duration,
) -> ((String, i64), Duration) {
    loop {
        if let Some((node, term)) = acting(client).await {
            if term > old_term {
                return ((node, term), since.elapsed());
            }
        }
        assert!(
            since.elapsed() < limit,
            "no new leader acted within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects to the test cluster once it answers.
pub async fn client(etcd: &Etcd) -> Client {
    let start = Instant::now();
    loop {
        if let Ok(mut c) = Client::connect(&etcd.endpoints, None).await {
            if c.status().await.is_ok() {
                return c;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "etcd did not come up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Three daemons n1..n3 on the test cluster.
pub fn daemons(dir: &Path, etcd: &Etcd) -> Vec<Daemon> {
    ["n1", "n2", "n3"]
        .iter()
        .map(|n| Daemon::new(dir, n, &etcd.endpoints))
        .collect()
}

pub fn by_name<'a>(daemons: &'a mut [Daemon], name: &str) -> &'a mut Daemon {
    daemons.iter_mut().find(|d| d.name == name).unwrap()
}

/// The CLI against a daemon's local API socket (`milvus-fleet <args> --socket <socket>`).
pub fn cli(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_milvus-fleet"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap()
}

/// Lower-case hex of `bytes` (how the cluster names a certificate by its SHA-256).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
