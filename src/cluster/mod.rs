//! The cluster's control plane in etcd: the connection, leader election with fencing.
//! etcd is the single source of cluster truth; every key lives under
//! `/milvus-fleet/<cluster>/`.

pub mod auth;
mod channel;
pub mod election;
pub mod jobs;
pub mod keys;
pub mod kv;
pub mod messages;
pub mod placement;
pub mod raft_leader;
pub mod runner;

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::config::FleetConfig;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The in-memory store's refusals (cluster::kv::MemoryKv, unit tests only).
    #[cfg(test)]
    #[error("store: {0}")]
    Store(String),
    #[error("etcd: no answer within {within:?} reading {what}")]
    Unanswered {
        what: &'static str,
        within: std::time::Duration,
    },
    #[error("{}: {error}", path.display())]
    StateFile {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
}

impl ClusterError {
    /// etcd's answer to a request under a lease it no longer has (the only thing a
    /// campaign or a keepalive can find missing).
    pub fn is_lease_gone(&self) -> bool {
        matches!(self, Self::Etcd(etcd_client::Error::GRpcStatus(status)) if status.code() == tonic::Code::NotFound)
    }

    /// etcd refused the request to this node's user (see `auth`): a compute or witness
    /// node may change no record of the cluster.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Self::Etcd(e) if permission_denied(e))
    }
}

/// Whether etcd refused a request to the caller's user (see `auth`).
pub fn permission_denied(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::PermissionDenied)
}

pub use keys::prefix;

/// Connects to the cluster's etcd. The HTTP/2 keepalive ping is 10 s: etcd drops a
/// connection that pings more often than every 5 s (its grpc-keepalive-min-time), and
/// with it every watch. No per-request timeout: watches and lease keepalives are streams.
pub async fn connect(config: &FleetConfig) -> Result<Client, ClusterError> {
    connect_to(&config.etcd_client_urls()).await
}

/// Like [`connect`], to the given client URLs only.
pub async fn connect_to(urls: &[String]) -> Result<Client, ClusterError> {
    Ok(connect_live(urls).await?.0)
}

/// Connects to the endpoints of `urls` that accept a connection now (all of them when
/// none does) and returns which. The client's balanced channel keeps sending requests
/// to an endpoint whose host is gone, and each such request fails: a dead member must
/// not be in it. [`keep_endpoints_live`] keeps it that way for a long-lived client, and
/// until it does, a request that such a member refuses is sent again (see `channel`).
pub async fn connect_live(urls: &[String]) -> Result<(Client, Vec<String>), ClusterError> {
    let live = answering(urls).await;
    let chosen = if live.is_empty() { urls.to_vec() } else { live };
    let client = Client::connect_with_balanced_channel(
        &chosen,
        Some(connect_options(&chosen)?),
        channel::ResendRefused,
    )
    .await?;
    Ok((client, chosen))
}

pub(super) fn connect_options(urls: &[impl AsRef<str>]) -> Result<ConnectOptions, ClusterError> {
    let options = ConnectOptions::new()
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
        .with_connect_timeout(Duration::from_secs(2));
    if !urls.iter().any(|u| u.as_ref().starts_with("https://")) {
        return Ok(options);
    }
    Ok(options.with_tls(node_tls()?))
}

/// This node's certificate and the cluster CA, for an etcd that asks for them (its
/// common name is this node's etcd user; see `auth`).
fn node_tls() -> Result<etcd_client::TlsOptions, ClusterError> {
    use etcd_client::{Certificate, Identity, TlsOptions};
    let dir = crate::host::pki_dir();
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|error| ClusterError::StateFile { path, error })
    };
    Ok(TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")?))
        .identity(Identity::from_pem(read("node.crt")?, read("node.key")?)))
}

/// A client of the one etcd member at `url` (it connects on first use).
pub async fn connect_one(url: &str) -> Result<Client, ClusterError> {
    Ok(Client::connect([url], Some(connect_options(&[url])?)).await?)
}

/// How long an endpoint may take to answer before it counts as gone.
const ENDPOINT_PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// Whether the etcd process behind `address` answers an HTTP request (`/version` on
/// its client port). A bare TCP accept is not enough: the kernel accepts for a frozen
/// (SIGSTOPped, wedged) member too, and requests routed to it hang. Any HTTP answer (a
/// 404 on a metrics port) proves the process runs.
async fn answers(address: String) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"GET /version HTTP/1.0\r\nHost: etcd\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 7];
        stream.read_exact(&mut head).await.ok()?;
        Some(&head == b"HTTP/1.")
    };
    matches!(
        tokio::time::timeout(ENDPOINT_PROBE_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}

/// The plain-HTTP port of the etcd members milvus-fleet runs (etcd.metrics_port), set
/// once by a process that talks to them: a member's TLS client port refuses a probe
/// without a certificate and logs every refusal, so the probe goes to this port instead.
static PROBE_PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();

/// Makes the endpoint probe use the local members' metrics port (see [`PROBE_PORT`]).
pub fn probe_members_at(config: &FleetConfig) {
    if config.etcd.mode == crate::config::model::ServiceMode::Local {
        let _ = PROBE_PORT.set(config.etcd.metrics_port);
    }
}

/// Where to probe the member of client URL `url` (pure but for [`PROBE_PORT`]).
fn probe_address(url: &str, probe_port: Option<u16>) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let address = rest.split('/').next().unwrap_or(rest);
    match probe_port {
        Some(port) if scheme == "https" => match raft_leader::url_host(url) {
            v6 if v6.contains(':') => format!("[{v6}]:{port}"),
            host => format!("{host}:{port}"),
        },
        _ => address.to_owned(),
    }
}

/// The URLs whose etcd answers, probed together.
async fn answering(urls: &[String]) -> Vec<String> {
    let probe_port = PROBE_PORT.get().copied();
    let probes = urls.iter().map(|url| async move {
        answers(probe_address(url, probe_port))
            .await
            .then(|| url.clone())
    });
    futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// How long a vouch for a lapsing lease holds (see [`vouch_while_reachable`]).
const VOUCH_FOR: std::time::Duration = std::time::Duration::from_millis(500);

/// While this daemon's lease is lapsing (no keepalive answered) but most etcd members on
/// other hosts answer, this node is not cut off: etcd is electing a leader or changing its
/// members (removing the raft leader's member stalled every keepalive for 5 s), and the
/// fleet leader, which reaches this node's server as this node reaches those hosts, keeps
/// the server (its health endpoint answers). Meanwhile this vouches for the lease in short
/// steps, so that neither the daemon nor the server's follower kills a healthy server over
/// an etcd hiccup. In a cut no other host answers and the vouching stops within a step:
/// the kill still comes before the leader may fence (placement::GONE_AFTER).
pub async fn vouch_while_reachable(
    lease_until: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
    urls: tokio::sync::watch::Receiver<Vec<String>>,
    own_address: String,
) {
    let mut tick = tokio::time::interval(VOUCH_FOR / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(until) = *lease_until.borrow() else {
            continue;
        };
        if until > tokio::time::Instant::now() + VOUCH_FOR {
            continue;
        }
        let remote: Vec<String> = urls
            .borrow()
            .iter()
            .filter(|url| raft_leader::url_host(url) != own_address)
            .cloned()
            .collect();
        if remote.is_empty() {
            continue;
        }
        let asked = tokio::time::Instant::now();
        // Only a lease still proven when asked: one long lapsed (the whole host was frozen
        // and has just thawed; etcd has let the lease go) is not brought back, or the
        // server's follower would see a fresh proof and let the thawed server run on.
        if until <= asked {
            continue;
        }
        let answered = answering(&remote).await.len();
        if reachable_majority(answered, remote.len()) {
            lease_until.send_if_modified(|held| match vouched(*held, asked) {
                Some(until) => {
                    *held = Some(until);
                    true
                }
                None => false,
            });
        }
    }
}

/// The lease's new proven end when a majority answered a vouch asked at `asked`: only for
/// a lease still proven then and ending within a vouch (pure).
fn vouched<T>(held: Option<T>, asked: T) -> Option<T>
where
    T: Copy + Ord + std::ops::Add<std::time::Duration, Output = T>,
{
    let held = held?;
    (held > asked && held < asked + VOUCH_FOR).then_some(asked + VOUCH_FOR)
}

/// Whether `answered` of the `remote` members (those on other hosts), with this host's
/// own, make a majority of the cluster: this node is not cut off.
fn reachable_majority(answered: usize, remote: usize) -> bool {
    answered > 0 && (answered + 1) * 2 > remote + 1
}

/// What the endpoint prober changed in the client's channel, counted: streams may still
/// sit on a dropped member (followers watch anew), and a member back lets the fleet
/// leader move etcd's raft leadership off its host (raft_leader).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointChanges {
    pub dropped: u64,
    pub back: u64,
}

/// Runs beside a long-lived client (the daemon's): every second, and at once when
/// `probe_now` is notified (a keepalive stalled), takes endpoints that stopped answering
/// (or left `urls`, the cluster's members as they change) out of its balanced channel
/// and puts in those that answer (again). The last answering endpoints are never taken
/// out. Each change is counted on `changes`.
pub async fn keep_endpoints_live(
    client: Client,
    urls: tokio::sync::watch::Receiver<Vec<String>>,
    connected: Vec<String>,
    probe_now: std::sync::Arc<tokio::sync::Notify>,
    changes: tokio::sync::watch::Sender<EndpointChanges>,
) {
    let mut included: std::collections::BTreeSet<String> = connected.into_iter().collect();
    // Every second: until a dead member is out, requests the channel routes to it fail
    // (an operator's command right after a member died would get a transport error).
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = probe_now.notified() => tick.reset(),
        }
        let current = urls.borrow().clone();
        let live: std::collections::BTreeSet<String> =
            answering(&current).await.into_iter().collect();
        if live.is_empty() {
            continue;
        }
        let known: Vec<String> = current.iter().chain(included.iter()).cloned().collect();
        for url in &known {
            let wanted = live.contains(url);
            if wanted == included.contains(url) {
                continue;
            }
            let changed = if wanted {
                client.add_endpoint(url.as_str()).await
            } else {
                client.remove_endpoint(url.as_str()).await
            };
            match changed {
                Ok(()) => {
                    tracing::info!(
                        endpoint = %url,
                        "etcd endpoint {url} {}",
                        if wanted { "answers: in use" } else { "does not answer, or left the cluster: out of use" }
                    );
                    if wanted {
                        included.insert(url.clone());
                        changes.send_modify(|c| c.back += 1);
                    } else {
                        included.remove(url);
                        changes.send_modify(|c| c.dropped += 1);
                    }
                }
                Err(e) => tracing::warn!("etcd endpoint {url}: {e}"),
            }
        }
    }
}

/// Every key under `prefix`, by the rest of its name -> its value (as text).
pub async fn read_prefix(
    client: &mut Client,
    prefix: &str,
) -> Result<std::collections::BTreeMap<String, String>, ClusterError> {
    let response = client
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await?;
    Ok(response
        .kvs()
        .iter()
        .filter_map(|kv| {
            let name = kv.key_str().ok()?.strip_prefix(prefix)?.to_owned();
            Some((name, kv.value_str().unwrap_or("").to_owned()))
        })
        .collect())
}

/// `read`, failed with [`ClusterError::Unanswered`] when etcd gives no answer `within`:
/// a request that went to a member just frozen or cut off waits for ever otherwise.
pub async fn bounded<T>(
    what: &'static str,
    within: Duration,
    read: impl std::future::Future<Output = Result<T, ClusterError>>,
) -> Result<T, ClusterError> {
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| ClusterError::Unanswered { what, within })?
}

/// Runs `read` again while it fails with an error `transient` accepts, for up to
/// `within`: an etcd member that restarts or leaves closes its connections, and a read
/// the client routed to it fails with a reset the channel rightly does not resend (a
/// write might have reached etcd; a read is safe to make again).
pub async fn retry_reads<T, E, Read, Fut>(
    within: Duration,
    transient: impl Fn(&E) -> bool,
    mut read: Read,
) -> Result<T, E>
where
    E: std::fmt::Display,
    Read: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match read().await {
            Err(e) if transient(&e) && tokio::time::Instant::now() < deadline => {
                tracing::info!("reading etcd again: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            answer => return answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{probe_address, reachable_majority, vouched, VOUCH_FOR};
    use std::time::{Duration, Instant};

    #[test]
    fn a_vouch_extends_only_a_lease_still_proven_and_lapsing() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        // Lapsing within a vouch: extended to a vouch from the asking.
        assert_eq!(vouched(Some(now + ms(200)), now), Some(now + VOUCH_FOR));
        // Proven for longer: nothing to do.
        assert_eq!(vouched(Some(now + VOUCH_FOR + ms(1)), now), None);
        // Lapsed already (a host that thawed after a freeze): never brought back.
        assert_eq!(vouched(Some(now), now + ms(1)), None);
        assert_eq!(vouched(Some(now), now + Duration::from_secs(10)), None);
        // No lease held.
        assert_eq!(vouched::<Instant>(None, now), None);
    }

    #[test]
    fn a_tls_member_is_probed_on_its_plain_port_and_others_where_they_listen() {
        let port = Some(2381);
        assert_eq!(
            probe_address("https://10.0.0.1:2379", port),
            "10.0.0.1:2381"
        );
        assert_eq!(
            probe_address("https://[fd00::1]:2379", port),
            "[fd00::1]:2381"
        );
        assert_eq!(probe_address("http://10.0.0.1:2379", port), "10.0.0.1:2379");
        assert_eq!(
            probe_address("https://10.0.0.1:2379", None),
            "10.0.0.1:2379"
        );
    }

    #[test]
    fn a_node_is_cut_off_unless_a_majority_with_its_own_member_answers() {
        // Three members: this host's and two others.
        assert!(reachable_majority(1, 2));
        assert!(!reachable_majority(0, 2));
        // Five members.
        assert!(reachable_majority(2, 4));
        assert!(!reachable_majority(1, 4));
        // Alone.
        assert!(!reachable_majority(0, 0));
    }
}
