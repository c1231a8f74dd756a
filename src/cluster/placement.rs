//! Where the standalone Milvus server runs (standalone-ha topology).
//!
//! A record in etcd, `<prefix>placement/standalone`, names the node that runs the
//! server. Only the leader writes it, in a transaction guarded by its term; every node's
//! supervisor follows it and runs the server only when the record names its own node
//! (and no other node's Milvus session is alive, see supervise/node.rs). Leadership and
//! placement are apart: a daemon that crashes, restarts or is upgraded on the server's
//! node gives up leadership but not the server, and its successor adopts the running
//! server. The server moves only when its node is lost (the node's daemon registration
//! gone for a moment *and* no Milvus session of its address left: a node whose daemon
//! restarts still serves) or leaves the cluster.
//!
//! A lost node's sessions would outlive it by the Milvus session TTL (and by a whole TTL
//! more when the host also carried etcd's raft leader: a new raft leader extends every
//! lease). The leader does not wait for that when the node's daemon is gone *and* its
//! server does not answer its health endpoint from the leader: it revokes the sessions'
//! leases, which fences that server exactly as their expiry would (a Milvus server that
//! finds its session gone exits), only sooner.
//!
//! The decision is [`decide`], a pure function of what the leader reads from etcd.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::election::Role;
use super::{bounded, keys, read_prefix, ClusterError};

/// How long a node's daemon registration must stay gone before its node may count as
/// lost (a restarted daemon registers again within a second), and before its server is
/// fenced: a node cut off or frozen kills its own server once its lease may have ended
/// plus `supervise::node::SELF_FENCE_GRACE` (0.5 s), and its registration goes with that
/// lease no earlier, so the rest of this second (and the new server's start) is the
/// kill's time. Counted after the health check, which takes its whole timeout on a node
/// that drops packets, so the wait costs a cut or frozen node's failover nothing.
pub const GONE_AFTER: Duration = Duration::from_secs(1);
/// How long the leader waits for a server's health endpoint before it counts the server
/// as not answering. A live server answers in milliseconds, loaded or not.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a node reads the placement record besides watching it (one small read),
/// and the leader looks again besides its watches: a watch that sits on a frozen or
/// cut-off etcd member never fires (the leader placed a frozen node's server 10 s late).
const REREAD_EVERY: Duration = Duration::from_secs(1);
/// How long a failed health check stands for a node whose daemon stays gone.
const SILENCE_HOLDS: Duration = Duration::from_secs(2);
/// Bound on one look at etcd and the servers (its health check included).
const EVALUATE_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on each of its reads, and on opening its watches: a request the client sent to a
/// member just cut off or frozen waits for ever, and the next try goes to one that answers
/// (a cut cost 5 s here, the old whole bound, in one run of ten).
const READ_BOUND: Duration = Duration::from_secs(1);
/// How long the placed node may run no server (no Milvus session of it) while its
/// daemon is up before the server moves: its server does not start there (systemd gave
/// up on it, the image is missing). Longer than a slow start on a loaded machine.
const STALLED_AFTER: Duration = Duration::from_secs(120);

/// The placement record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The node that runs the standalone server.
    pub node: String,
    /// The leader term that wrote it.
    pub term: i64,
    /// Why it was placed there, for the operator.
    pub reason: String,
    pub since_unix: u64,
}

/// What the leader knows when it decides.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// The nodes that may run the server (compute nodes), in configuration order, with
    /// their addresses.
    pub candidates: Vec<(String, String)>,
    /// Nodes whose daemon is registered, or was until less than [`GONE_AFTER`] ago.
    pub alive: BTreeSet<String>,
    /// Nodes whose daemon is registered now.
    pub registered: BTreeSet<String>,
    /// Addresses (hosts) with a live Milvus session: a server runs there.
    pub serving: BTreeSet<String>,
    /// Nodes placed to run the server that have run none for [`STALLED_AFTER`].
    pub stalled: BTreeSet<String>,
    /// Nodes whose server's health endpoint did not answer the leader (only asked of a
    /// placed node whose daemon is gone while its sessions live).
    pub unresponsive: BTreeSet<String>,
    /// The leader's own node.
    pub leader: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Keep,
    Place {
        node: String,
        reason: String,
    },
    /// End the Milvus sessions of `node`'s server (revoke their leases): the node is lost
    /// but its sessions have not expired yet.
    Fence {
        node: String,
        reason: String,
    },
}

/// Where the server should run, given the current record (if any).
pub fn decide(current: Option<&str>, view: &View) -> Decision {
    let address = |node: &str| {
        view.candidates
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, a)| a.as_str())
    };
    let why = match current {
        Some(node) => match address(node) {
            // Its daemon is gone (for longer than its node takes to kill its own server)
            // and its server does not answer, though its sessions live on: the host is
            // lost (power, network, frozen).
            Some(a)
                if view.serving.contains(a)
                    && !view.alive.contains(node)
                    && view.unresponsive.contains(node) =>
            {
                return Decision::Fence {
                    node: node.to_owned(),
                    reason: format!(
                        "{node} is lost: its daemon is gone and its server does not answer its health endpoint"
                    ),
                }
            }
            // A server runs there (its daemon may be restarting): it stays.
            Some(a) if view.serving.contains(a) => return Decision::Keep,
            Some(_) if view.stalled.contains(node) => format!(
                "{node} has run no server for {} s although its daemon is up (see `journalctl -u milvus-fleet-standalone` there)",
                STALLED_AFTER.as_secs()
            ),
            // Its daemon is up and brings the server up.
            Some(_) if view.alive.contains(node) => return Decision::Keep,
            Some(_) => {
                format!("{node} is lost: its daemon is gone and no Milvus session of it is left")
            }
            None => format!("{node} no longer runs Milvus (removed, or no longer compute)"),
        },
        None => "no node runs the standalone server yet".to_owned(),
    };
    // A server that already runs somewhere is adopted; else the first live candidate
    // other than the leader's own node, else the leader's node: a host lost with both
    // the leader and the server would cost a leader election before the failover.
    let serving = view
        .candidates
        .iter()
        .find(|(_, a)| view.serving.contains(a));
    // A new place must be registered now: a node within its grace (its daemon just went)
    // may be on its way out, and a server placed there would wait for it.
    let usable = |n: &String| view.registered.contains(n) && !view.stalled.contains(n);
    let other = view
        .candidates
        .iter()
        .find(|(n, _)| *n != view.leader && usable(n));
    let own = view
        .candidates
        .iter()
        .find(|(n, _)| *n == view.leader && usable(n));
    match serving.or(other).or(own) {
        Some((node, _)) if Some(node.as_str()) != current => Decision::Place {
            node: node.clone(),
            reason: why,
        },
        _ => Decision::Keep,
    }
}

/// The hosts of the live Milvus sessions among etcd's `session` keys (`Address` is
/// `host:port`; a key without a lease is a leftover, not a session).
pub fn serving_hosts<'a>(sessions: impl IntoIterator<Item = (&'a [u8], i64)>) -> BTreeSet<String> {
    sessions
        .into_iter()
        .filter(|(_, lease)| *lease != 0)
        .filter_map(|(value, _)| {
            let value: serde_json::Value = serde_json::from_slice(value).ok()?;
            let address = value["Address"].as_str()?;
            let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
            // `[fd00::1]:19530`: the node's address is written without the brackets.
            Some(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            )
        })
        .collect()
}

/// The leases of the live Milvus sessions on `host`.
pub fn session_leases<'a>(
    sessions: impl IntoIterator<Item = (&'a [u8], i64)>,
    host: &str,
) -> BTreeSet<i64> {
    sessions
        .into_iter()
        .filter(|(value, lease)| *lease != 0 && serving_hosts([(*value, *lease)]).contains(host))
        .map(|(_, lease)| lease)
        .collect()
}

/// Reads the live Milvus sessions' hosts.
pub async fn read_serving(client: &mut Client) -> Result<BTreeSet<String>, ClusterError> {
    let answer = client
        .get(keys::MILVUS_SESSIONS, Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(serving_hosts(
        answer.kvs().iter().map(|kv| (kv.value(), kv.lease())),
    ))
}

async fn read_placement(client: &mut Client, key: &str) -> Result<Option<Placement>, ClusterError> {
    let answer = client.get(key, None).await?;
    Ok(answer
        .kvs()
        .first()
        .and_then(|kv| serde_json::from_slice(kv.value()).ok()))
}

/// What the leader's placement loop needs.
pub struct PlacementLead {
    pub client: Client,
    pub prefix: String,
    pub leader_key: String,
    pub me: String,
    /// The nodes that may run the server, with their addresses (empty when the topology
    /// has no standalone server); kept current on reloads.
    pub candidates: watch::Receiver<Vec<(String, String)>>,
    /// The server's health endpoint's port (milvus.metrics_port), on the node's address.
    pub health_port: u16,
    pub http: reqwest::Client,
}

/// Keeps the placement right whenever `role` says this daemon leads.
pub async fn lead(mut lead: PlacementLead, mut role: watch::Receiver<Role>) {
    loop {
        let current = role.borrow_and_update().clone();
        if let Role::Leader { term } = current {
            tokio::select! {
                _ = lead_term(&mut lead, term) => {}
                changed = role.changed() => if changed.is_err() { return },
            }
        } else if role.changed().await.is_err() {
            return;
        }
    }
}

async fn lead_term(lead: &mut PlacementLead, term: i64) {
    let members = keys::members(&lead.prefix);
    let key = keys::standalone_placement(&lead.prefix);
    // What this term has seen survives a broken watch or an etcd error.
    let mut since = Since::default();
    loop {
        if lead.candidates.borrow_and_update().is_empty() {
            let _ = lead.candidates.changed().await;
            continue;
        }
        let mut client = lead.client.clone();
        let opened = tokio::time::timeout(READ_BOUND, async {
            (
                client
                    .watch(members.clone(), Some(WatchOptions::new().with_prefix()))
                    .await,
                client
                    .watch(
                        keys::MILVUS_SESSIONS,
                        Some(WatchOptions::new().with_prefix()),
                    )
                    .await,
                client.watch(key.clone(), None).await,
            )
        })
        .await;
        let Ok((Ok(mut member_events), Ok(mut session_events), Ok(mut placement_events))) = opened
        else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        loop {
            // Bounded: a read stuck on a lost member must not hold up the failover.
            let evaluated =
                tokio::time::timeout(EVALUATE_TIMEOUT, evaluate(lead, term, &key, &mut since))
                    .await;
            let recheck = match evaluated {
                Ok(Ok(recheck)) => recheck,
                Ok(Err(e)) => {
                    warn!("placing the standalone server: {e}");
                    break;
                }
                Err(_) => {
                    warn!(
                        "placing the standalone server: no answer from etcd within {EVALUATE_TIMEOUT:?}"
                    );
                    break;
                }
            };
            tokio::select! {
                event = member_events.message() => if !matches!(event, Ok(Some(_))) { break },
                event = session_events.message() => if !matches!(event, Ok(Some(_))) { break },
                event = placement_events.message() => if !matches!(event, Ok(Some(_))) { break },
                _ = lead.candidates.changed() => {}
                _ = tokio::time::sleep(REREAD_EVERY) => {}
                _ = tokio::time::sleep_until(recheck.unwrap_or_else(Instant::now)), if recheck.is_some() => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the leader has seen over time, this term: since when each node's registration
/// has been gone, and since when the placed node has run no server.
#[derive(Default)]
struct Since {
    gone: BTreeMap<String, Instant>,
    serverless: Option<(String, Instant)>,
    /// Nodes whose server this term fenced: lost, without the grace of [`GONE_AFTER`].
    fenced: BTreeSet<String>,
    /// When each node's server last failed its health check: a failure within
    /// [`SILENCE_HOLDS`] stands when the grace ends, rather than asking again (which would
    /// add up to [`HEALTH_TIMEOUT`] to the failover).
    silent_since: BTreeMap<String, Instant>,
}

/// Reads what [`decide`] needs and writes its answer under the leader's term. Returns
/// when to look again for a registration that is gone but not yet for [`GONE_AFTER`],
/// or a placed node that has run no server but not yet for [`STALLED_AFTER`].
async fn evaluate(
    lead: &mut PlacementLead,
    term: i64,
    key: &str,
    since: &mut Since,
) -> Result<Option<Instant>, ClusterError> {
    let gone_since = &mut since.gone;
    let candidates = lead.candidates.borrow().clone();
    if candidates.is_empty() {
        return Ok(None);
    }
    let now = Instant::now();
    let members = keys::members(&lead.prefix);
    let registered = bounded(
        "the registered daemons",
        READ_BOUND,
        read_prefix(&mut lead.client, &members),
    )
    .await?;
    let mut alive = BTreeSet::new();
    let mut recheck = None::<Instant>;
    let registered: BTreeSet<String> = candidates
        .iter()
        .filter(|(node, _)| registered.contains_key(node))
        .map(|(node, _)| node.clone())
        .collect();
    since.fenced.retain(|node| !registered.contains(node));
    since
        .silent_since
        .retain(|node, _| !registered.contains(node));
    for (node, _) in &candidates {
        if registered.contains(node) {
            gone_since.remove(node);
        } else {
            gone_since.entry(node.clone()).or_insert(now);
        }
    }
    let serving = bounded(
        "the Milvus sessions",
        READ_BOUND,
        read_serving(&mut lead.client),
    )
    .await?;
    let current = bounded(
        "the placement",
        READ_BOUND,
        read_placement(&mut lead.client, key),
    )
    .await?;
    let mut stalled = BTreeSet::new();
    if let Some(placed) = &current {
        let address = candidates
            .iter()
            .find(|(n, _)| *n == placed.node)
            .map(|(_, a)| a.as_str());
        if address.is_some_and(|a| serving.contains(a)) {
            since.serverless = None;
        } else {
            let (node, at) = since
                .serverless
                .get_or_insert_with(|| (placed.node.clone(), now));
            if *node != placed.node {
                (*node, *at) = (placed.node.clone(), now);
            }
            if now - *at >= STALLED_AFTER {
                stalled.insert(placed.node.clone());
            } else {
                let at = *at + STALLED_AFTER;
                recheck = Some(recheck.map_or(at, |r| r.min(at)));
            }
        }
    }
    // Ask the placed server's health endpoint only when its node's daemon is gone while
    // its sessions live: the one case where the answer decides.
    let mut unresponsive = BTreeSet::new();
    if let Some(placed) = &current {
        let address = candidates
            .iter()
            .find(|(n, _)| *n == placed.node)
            .map(|(_, a)| a.clone());
        if let Some(address) = address.filter(|a| serving.contains(a)) {
            if !registered.contains(&placed.node) {
                let recent = since
                    .silent_since
                    .get(&placed.node)
                    .is_some_and(|at| at.elapsed() < SILENCE_HOLDS);
                let answered = !recent && answers(lead, &address).await;
                if answered {
                    since.silent_since.remove(&placed.node);
                } else if !recent {
                    since
                        .silent_since
                        .insert(placed.node.clone(), Instant::now());
                }
                info!(
                    "{}'s daemon is gone while its server's sessions live; its health endpoint {}",
                    placed.node,
                    if answered {
                        "answers"
                    } else {
                        "does not answer"
                    }
                );
                if !answered {
                    unresponsive.insert(placed.node.clone());
                }
            }
        }
    }
    // How long each registration has been gone, counted after the health check (see
    // GONE_AFTER).
    let now = Instant::now();
    for (node, _) in &candidates {
        if registered.contains(node) {
            alive.insert(node.clone());
            continue;
        }
        if since.fenced.contains(node) {
            continue;
        }
        let gone = since.gone.get(node).copied().unwrap_or(now);
        if now - gone < GONE_AFTER {
            alive.insert(node.clone());
            let at = gone + GONE_AFTER;
            recheck = Some(recheck.map_or(at, |r| r.min(at)));
        }
    }
    let view = View {
        candidates,
        alive,
        registered,
        serving,
        stalled,
        unresponsive,
        leader: lead.me.clone(),
    };
    let (node, reason) = match decide(current.as_ref().map(|p| p.node.as_str()), &view) {
        Decision::Keep => return Ok(recheck),
        Decision::Fence { node, reason } => {
            let address = view
                .candidates
                .iter()
                .find(|(n, _)| *n == node)
                .map(|(_, a)| a.clone())
                .unwrap_or_default();
            if fence(lead, term, &node, &address, &reason).await? {
                since.fenced.insert(node);
            }
            // The sessions' deletions wake the loop; look again soon in any case.
            return Ok(Some(Instant::now() + Duration::from_millis(200)));
        }
        Decision::Place { node, reason } => (node, reason),
    };
    let record = Placement {
        node: node.clone(),
        term,
        reason: reason.clone(),
        since_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let text = serde_json::to_string(&record).expect("a placement record is plain data");
    let txn = Txn::new()
        .when([Compare::create_revision(
            lead.leader_key.clone(),
            CompareOp::Equal,
            term,
        )])
        .and_then([TxnOp::put(key, text, None)]);
    if lead.client.txn(txn).await?.succeeded() {
        info!(
            message_id = super::messages::STANDALONE_PLACED,
            node = %node,
            term,
            "the standalone server is placed on {node}: {reason}"
        );
    }
    Ok(recheck)
}

/// Whether the Milvus server on `address` answers its health endpoint in time. Any
/// HTTP answer counts, "unhealthy" (500 while it starts) included: the question is
/// whether the process runs, not whether it is ready.
async fn answers(lead: &PlacementLead, address: &str) -> bool {
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_owned()
    };
    let url = format!("http://{host}:{}/healthz", lead.health_port);
    matches!(
        tokio::time::timeout(HEALTH_TIMEOUT, lead.http.get(&url).send()).await,
        Ok(Ok(_))
    )
}

/// Revokes the leases of the Milvus sessions on `address` (node `node`'s server), while
/// this daemon still leads.
async fn fence(
    lead: &mut PlacementLead,
    term: i64,
    node: &str,
    address: &str,
    reason: &str,
) -> Result<bool, ClusterError> {
    let leader = lead.client.get(lead.leader_key.clone(), None).await?;
    if leader.kvs().first().map(|kv| kv.create_revision()) != Some(term) {
        return Ok(false);
    }
    let answer = lead
        .client
        .get(keys::MILVUS_SESSIONS, Some(GetOptions::new().with_prefix()))
        .await?;
    let leases = session_leases(
        answer.kvs().iter().map(|kv| (kv.value(), kv.lease())),
        address,
    );
    for lease in &leases {
        // Already expired is as good as revoked.
        if let Err(e) = lead.client.lease_revoke(*lease).await {
            if !e.to_string().contains("requested lease not found") {
                return Err(e.into());
            }
        }
    }
    warn!(
        message_id = super::messages::STANDALONE_FENCED,
        node = %node,
        term,
        "ended the {} Milvus session lease(s) of {node}'s server: {reason}",
        leases.len()
    );
    Ok(true)
}

/// Follows the placement record for this node's supervisor: its value now and after
/// every change. A watch on a member that froze or was cut off never fires, and a read
/// sent to it never answers: the record is also read every [`REREAD_EVERY`], each read
/// bounded, and a read that fails or times out opens a new watch (the client's endpoint
/// prober has taken a silent member out of use by then). A node newly placed to run the
/// server learns it within a second even when its watch sat on the lost host's member.
pub async fn follow(mut client: Client, prefix: String, tx: watch::Sender<Option<Placement>>) {
    let key = keys::standalone_placement(&prefix);
    loop {
        // Opening the watch is bounded too: on a member that froze it would hang until
        // the connection's keepalive gave up (10 s). Without a watch, read meanwhile.
        let opened = tokio::time::timeout(REREAD_EVERY, client.watch(key.clone(), None)).await;
        let Ok(Ok(mut events)) = opened else {
            if let Ok(Ok(placement)) =
                tokio::time::timeout(REREAD_EVERY, read_placement(&mut client, &key)).await
            {
                publish(&tx, placement);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        loop {
            match tokio::time::timeout(REREAD_EVERY, read_placement(&mut client, &key)).await {
                Ok(Ok(placement)) => publish(&tx, placement),
                Ok(Err(e)) => {
                    warn!("reading the standalone server's placement: {e}");
                    break;
                }
                Err(_) => {
                    warn!(
                        "reading the standalone server's placement: no answer within {REREAD_EVERY:?}"
                    );
                    break;
                }
            }
            tokio::select! {
                event = events.message() => if !matches!(event, Ok(Some(_))) { break },
                _ = tokio::time::sleep(REREAD_EVERY) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Tells the supervisor of a placement that differs from the last.
fn publish(tx: &watch::Sender<Option<Placement>>, placement: Option<Placement>) {
    tx.send_if_modified(|p| {
        let changed = *p != placement;
        *p = placement;
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(alive: &[&str], serving: &[&str], leader: &str) -> View {
        View {
            candidates: [("h1", "10.0.0.1"), ("h2", "10.0.0.2"), ("h3", "10.0.0.3")]
                .iter()
                .map(|(n, a)| (n.to_string(), a.to_string()))
                .collect(),
            alive: alive.iter().map(|s| s.to_string()).collect(),
            registered: alive.iter().map(|s| s.to_string()).collect(),
            serving: serving.iter().map(|s| s.to_string()).collect(),
            stalled: BTreeSet::new(),
            unresponsive: BTreeSet::new(),
            leader: leader.to_owned(),
        }
    }

    fn placed(decision: Decision) -> String {
        match decision {
            Decision::Place { node, .. } => node,
            Decision::Fence { node, .. } => format!("fence {node}"),
            Decision::Keep => "keep".into(),
        }
    }

    #[test]
    fn a_fresh_cluster_runs_the_server_off_the_leaders_node() {
        let v = view(&["h1", "h2", "h3"], &[], "h1");
        assert_eq!(placed(decide(None, &v)), "h2");
        // The leader's node is the only candidate (a new cluster of one compute node).
        let mut v = view(&["h1"], &[], "h1");
        v.candidates.retain(|(n, _)| n == "h1");
        assert_eq!(placed(decide(None, &v)), "h1");
    }

    #[test]
    fn a_server_already_running_is_adopted_not_moved() {
        // An older release ran it on the leader's node; the new leader is elsewhere.
        let v = view(&["h1", "h2", "h3"], &["10.0.0.3"], "h1");
        assert_eq!(placed(decide(None, &v)), "h3");
    }

    #[test]
    fn a_new_leader_does_not_move_a_healthy_server() {
        let v = view(&["h1", "h2", "h3"], &["10.0.0.1"], "h2");
        assert_eq!(decide(Some("h1"), &v), Decision::Keep);
    }

    #[test]
    fn a_restarting_daemon_keeps_its_server() {
        // h1's daemon is gone (restarting, upgrading) but its server's session is alive.
        let v = view(&["h2", "h3"], &["10.0.0.1"], "h2");
        assert_eq!(decide(Some("h1"), &v), Decision::Keep);
    }

    #[test]
    fn a_lost_node_whose_server_does_not_answer_is_fenced_before_its_sessions_expire() {
        let mut v = view(&["h2", "h3"], &["10.0.0.1"], "h2");
        v.unresponsive.insert("h1".into());
        assert_eq!(placed(decide(Some("h1"), &v)), "fence h1");
        // Its server answers: only the daemon is gone (restarting); nothing moves.
        v.unresponsive.clear();
        assert_eq!(decide(Some("h1"), &v), Decision::Keep);
        // Its daemon is up: a slow health answer alone fences nothing.
        let mut v = view(&["h1", "h2", "h3"], &["10.0.0.1"], "h2");
        v.unresponsive.insert("h1".into());
        assert_eq!(decide(Some("h1"), &v), Decision::Keep);
        // Its registration went a moment ago: its node may not have killed its own
        // server yet (it does once its lease may have ended), so nothing is fenced
        // before the grace is over, answer or not.
        v.registered.remove("h1");
        assert_eq!(decide(Some("h1"), &v), Decision::Keep);
        v.alive.remove("h1");
        assert_eq!(placed(decide(Some("h1"), &v)), "fence h1");
    }

    #[test]
    fn only_the_lost_hosts_session_leases_are_revoked() {
        let a = br#"{"Address":"10.0.0.1:19530"}"#;
        let b = br#"{"Address":"10.0.0.1:21123"}"#;
        let other = br#"{"Address":"10.0.0.2:19530"}"#;
        let leases = session_leases(
            [(&a[..], 7), (&b[..], 8), (&other[..], 9), (&a[..], 0)],
            "10.0.0.1",
        );
        assert_eq!(leases, [7, 8].into());
    }

    #[test]
    fn a_node_whose_server_is_down_but_daemon_up_keeps_it() {
        // Its daemon restarts the server there; moving it would cost a second start.
        let v = view(&["h1", "h2", "h3"], &[], "h2");
        assert_eq!(decide(Some("h1"), &v), Decision::Keep);
    }

    #[test]
    fn a_node_whose_server_never_comes_up_gives_it_away() {
        let mut v = view(&["h1", "h2", "h3"], &[], "h1");
        v.stalled.insert("h1".into());
        // Not to the leader's own node: that is the stalled one.
        assert_eq!(placed(decide(Some("h1"), &v)), "h2");
    }

    #[test]
    fn a_lost_node_gives_the_server_to_a_live_node_other_than_the_leaders() {
        let v = view(&["h2", "h3"], &[], "h2");
        assert_eq!(placed(decide(Some("h1"), &v)), "h3");
        // Only the leader's node is left.
        let v = view(&["h3"], &[], "h3");
        assert_eq!(placed(decide(Some("h1"), &v)), "h3");
    }

    #[test]
    fn a_lost_node_with_a_witness_leader_gives_the_server_to_a_live_candidate() {
        let v = view(&["h3"], &[], "w1");
        assert_eq!(placed(decide(Some("h1"), &v)), "h3");
    }

    #[test]
    fn a_removed_node_gives_the_server_away() {
        let mut v = view(&["h2", "h3"], &[], "h2");
        v.candidates.retain(|(n, _)| n != "h1");
        assert_eq!(placed(decide(Some("h1"), &v)), "h3");
    }

    #[test]
    fn a_node_within_its_grace_is_not_given_the_server() {
        // h2's registration went a moment ago: alive for keeping, not for placing.
        let mut v = view(&["h2", "h3"], &[], "h3");
        v.registered.remove("h2");
        assert_eq!(placed(decide(Some("h1"), &v)), "h3");
    }

    #[test]
    fn nothing_alive_keeps_the_record() {
        let v = view(&[], &[], "w1");
        assert_eq!(decide(Some("h1"), &v), Decision::Keep);
        assert_eq!(decide(None, &v), Decision::Keep);
    }

    #[test]
    fn sessions_without_a_lease_are_not_servers() {
        let live = br#"{"Address":"10.0.0.1:19530"}"#;
        let stale = br#"{"Address":"10.0.0.2:19530"}"#;
        let hosts = serving_hosts([(&live[..], 7), (&stale[..], 0), (&b"junk"[..], 9)]);
        assert_eq!(hosts, ["10.0.0.1".to_owned()].into());
        // An IPv6 session address names the host as the node list does: no brackets.
        let v6 = br#"{"Address":"[fd00::1]:19530"}"#;
        assert_eq!(serving_hosts([(&v6[..], 7)]), ["fd00::1".to_owned()].into());
    }
}
