//! Leader election with fencing.
//!
//! Every daemon holds a lease with the configured TTL and campaigns with one
//! transaction: create `<prefix>leader` (bound to its lease) if it does not exist. The
//! winner's term is the key's create revision, and every cluster-state write the leader
//! makes compares that create revision, so once the key is gone or belongs to another
//! term, no write of the old leader is accepted: a frozen or cut-off leader cannot act,
//! whatever its clock says. Losers watch the key from the revision they saw and campaign
//! again when it is deleted.
//!
//! Fast paths around the TTL: a daemon that stops resigns (a guarded delete) at once; a
//! daemon restarted after a crash on a live host revokes its predecessor's lease, whose
//! id it keeps in the state directory, so leadership moves without waiting for expiry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::watch;
use tokio::time::{sleep, Instant};
use tracing::{info, warn};

use super::messages::{LEADER_ELECTED, LEADER_LOST};
use super::{keys, ClusterError};

/// How often a follower reads the leader key besides watching it (a watch can sit on a
/// member that froze or was cut off and never fire); at once when its keepalive stalls.
const LEADER_RECHECK: Duration = Duration::from_secs(5);
/// How long a leader that stepped down leaves the campaign to the others.
const STEP_DOWN_HOLD: Duration = Duration::from_secs(3);

/// How reopening a keepalive stream went.
enum Reopen {
    Open,
    /// No member answered in time; try again on the next tick.
    Failed,
    /// etcd answered that the lease has expired.
    LeaseGone,
}

/// What this daemon is in the cluster right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not connected to etcd, or not yet campaigned.
    Unknown,
    Follower {
        leader: Option<String>,
    },
    /// Holds leadership for `term` (the leader key's create revision: the fencing token).
    Leader {
        term: i64,
    },
}

pub struct Election {
    client: Client,
    prefix: String,
    node: String,
    /// This daemon's API URL, registered under `<prefix>members/<node>` with its lease so
    /// that followers can forward to the leader and the entry goes with the daemon.
    api_url: String,
    ttl_secs: i64,
    lease_file: PathBuf,
    role: watch::Sender<Role>,
    /// Told when a keepalive stalls, so that the endpoint prober takes a frozen member
    /// out of the client's channel now rather than on its next round.
    probe_endpoints: std::sync::Arc<tokio::sync::Notify>,
    /// The etcd members' client URLs, as the cluster changes. A stalled keepalive stream
    /// is reopened on every member at once and the first that answers wins: the balanced
    /// client could hand the new stream to the same silent member, and at a 1 s lease
    /// there is no time for a second try.
    member_urls: Option<watch::Receiver<Vec<String>>>,
    /// The one-member client the current keepalive stream runs on, when it was reopened
    /// that way (the stream lives as long as its client).
    keepalive_client: Option<Client>,
    /// Until when this daemon's lease surely lives in etcd, as this daemon can prove it:
    /// the send time of the last keepalive etcd answered, plus the TTL (etcd counts from
    /// its receipt, which is later). A node's supervisor fences its own standalone server
    /// once this has passed (supervise/node.rs); None while no lease is held.
    lease_until: watch::Sender<Option<Instant>>,
    /// When each keepalive not yet answered was sent, oldest first (a stream answers in
    /// order; a reopened stream starts afresh).
    unanswered: std::collections::VecDeque<Instant>,
    /// Where the standalone server runs: a leader on that node steps down (see
    /// [`Election::with_placement`]).
    placement: Option<watch::Receiver<Option<super::placement::Placement>>>,
    /// No campaign before this (after stepping down, so that another daemon takes over).
    hold_campaign_until: Option<Instant>,
}

/// How a leadership (or a lease) ended.
enum End {
    Shutdown,
    /// etcd said the lease is gone.
    LeaseLost,
    /// The leader's own deadline passed unconfirmed: it stopped acting, but the lease may
    /// still live (an etcd leader election stalls every keepalive for up to ~1 s, and the
    /// new etcd leader extends the leases). It keeps the lease and campaigns again.
    Lapsed,
    Fenced,
    /// This leader's node runs the standalone server and another daemon can lead.
    SteppedDown,
}

impl Election {
    pub fn new(
        client: Client,
        prefix: String,
        node: String,
        api_url: String,
        ttl_secs: u32,
        state_dir: &Path,
    ) -> Self {
        let (role, _) = watch::channel(Role::Unknown);
        Self {
            client,
            prefix,
            node,
            api_url,
            ttl_secs: i64::from(ttl_secs),
            lease_file: state_dir.join("leader-lease"),
            role,
            probe_endpoints: Default::default(),
            member_urls: None,
            keepalive_client: None,
            lease_until: watch::channel(None).0,
            unanswered: Default::default(),
            placement: None,
            hold_campaign_until: None,
        }
    }

    /// A leader whose node runs the standalone server steps down when another daemon is
    /// registered: losing a host with both would cost a leader election before the
    /// server's failover could start (seconds of failed searches).
    pub fn with_placement(
        mut self,
        placement: watch::Receiver<Option<super::placement::Placement>>,
    ) -> Self {
        self.placement = Some(placement);
        self
    }

    /// Whether this leader should step down now (see [`Election::with_placement`]).
    async fn should_step_down(&self, ttl: Duration) -> bool {
        let runs_server = self
            .placement
            .as_ref()
            .is_some_and(|p| p.borrow().as_ref().is_some_and(|p| p.node == self.node));
        if !runs_server {
            return false;
        }
        let mut client = self.client.clone();
        let members = keys::members(&self.prefix);
        let read = tokio::time::timeout(
            ttl / 2,
            client.get(
                members,
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only(),
                ),
            ),
        )
        .await;
        matches!(read, Ok(Ok(answer)) if answer.kvs().iter().any(|kv| kv.key() != keys::member(&self.prefix, &self.node).as_bytes()))
    }

    /// Publishes until when the lease surely lives on `until` (see the field).
    pub fn with_lease_until(mut self, until: watch::Sender<Option<Instant>>) -> Self {
        self.lease_until = until;
        self
    }

    /// Sends one keepalive on `keeper`, noting when.
    async fn send_keepalive(
        &mut self,
        keeper: &mut etcd_client::LeaseKeeper,
    ) -> Result<(), etcd_client::Error> {
        self.unanswered.push_back(Instant::now());
        keeper.keep_alive().await
    }

    /// A keepalive was answered: the lease lives until its send time plus `ttl`.
    fn keepalive_answered(&mut self, ttl: Duration) {
        if let Some(sent) = self.unanswered.pop_front() {
            self.confirm_lease(sent + ttl);
        }
    }

    fn confirm_lease(&self, until: Instant) {
        self.lease_until.send_if_modified(|held| match held {
            Some(held) if *held >= until => false,
            _ => {
                *held = Some(until);
                true
            }
        });
    }

    /// The etcd members to reopen a stalled keepalive stream on (see `member_urls`);
    /// without them the stream is reopened through the balanced client.
    pub fn with_member_urls(mut self, urls: watch::Receiver<Vec<String>>) -> Self {
        self.member_urls = Some(urls);
        self
    }

    /// The signal this election gives when its keepalive stream stalls (for
    /// [`super::keep_endpoints_live`]).
    pub fn endpoint_probe(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.probe_endpoints.clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    fn leader_key(&self) -> String {
        keys::leader(&self.prefix)
    }

    /// Campaigns until `shutdown` turns true; then resigns and revokes its lease.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        if let Err(e) = self.revoke_predecessor().await {
            warn!("cannot revoke the previous run's lease: {e}");
        }
        loop {
            match self.one_lease(&mut shutdown).await {
                Ok(End::Shutdown) => return,
                Ok(End::LeaseLost | End::Lapsed | End::Fenced | End::SteppedDown) => {}
                Err(e) => {
                    warn!("election: {e}; retrying");
                    self.role.send_replace(Role::Unknown);
                    tokio::select! {
                        _ = sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    /// Revokes the lease a previous run of this daemon left behind (after a crash), so
    /// its leader key goes now instead of after the TTL.
    async fn revoke_predecessor(&mut self) -> Result<(), ClusterError> {
        let Ok(text) = std::fs::read_to_string(&self.lease_file) else {
            return Ok(());
        };
        if let Ok(id) = text.trim().parse::<i64>() {
            match self.client.lease_revoke(id).await {
                Ok(_) => info!(
                    lease = id,
                    "revoked the lease of this daemon's previous run"
                ),
                // Already expired: nothing to do.
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(e.into()),
            }
        }
        let _ = std::fs::remove_file(&self.lease_file);
        Ok(())
    }

    fn record_lease(&self, id: i64) -> Result<(), ClusterError> {
        let tmp = self.lease_file.with_extension("tmp");
        let error = |error| ClusterError::StateFile {
            path: self.lease_file.clone(),
            error,
        };
        std::fs::write(&tmp, id.to_string()).map_err(error)?;
        std::fs::rename(&tmp, &self.lease_file).map_err(error)
    }

    /// One lease: campaign, lead or follow, until the lease ends.
    async fn one_lease(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<End, ClusterError> {
        let asked = Instant::now();
        let lease = self.client.lease_grant(self.ttl_secs, None).await?;
        let lease_id = lease.id();
        let ttl = Duration::from_secs(lease.ttl().max(1) as u64);
        self.unanswered.clear();
        self.lease_until.send_replace(Some(asked + ttl));
        self.record_lease(lease_id)?;
        let member = keys::member(&self.prefix, &self.node);
        let options = PutOptions::new().with_lease(lease_id);
        self.client
            .put(member, self.api_url.clone(), Some(options))
            .await?;
        let (mut keeper, mut responses) = self.client.lease_keep_alive(lease_id).await?;
        // The lease is ours until this deadline; every answered keepalive moves it on.
        // A leader past it stops acting without asking anyone. A follower only keeps its
        // lease alive: the lease ends when etcd says so, never on a local guess (giving it
        // up would drop this node's registration and raise a false peer-down alert).
        let mut deadline = Instant::now() + ttl;
        let mut keepalive = tokio::time::interval(ttl / 3);

        let end = loop {
            // Campaign: create the leader key if there is none (only read it while the
            // campaign is held after stepping down: create_revision is never negative).
            let key = self.leader_key();
            let held = self.hold_campaign_until.is_some_and(|t| Instant::now() < t);
            let campaign = if held {
                CompareOp::Less
            } else {
                CompareOp::Equal
            };
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), campaign, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    self.node.clone(),
                    Some(PutOptions::new().with_lease(lease_id)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
            let response = self.client.txn(txn).await?;
            let revision = response.header().map_or(0, |h| h.revision());
            let seen = response.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| {
                    (
                        kv.value_str().unwrap_or("").to_owned(),
                        kv.create_revision(),
                        kv.lease(),
                    )
                }),
                _ => None,
            });
            // The key is still bound to this lease after a lapse: no one else led in
            // between, so this daemon leads on under the same term (fencing token), once
            // a keepalive answered again (the deadline is ahead).
            let own_key = seen
                .as_ref()
                .is_some_and(|(_, _, lease)| *lease == lease_id);
            let resumed = seen
                .as_ref()
                .filter(|_| own_key && Instant::now() < deadline)
                .map(|(_, term, _)| *term);
            if response.succeeded() || resumed.is_some() {
                let term = resumed.unwrap_or(revision);
                if resumed.is_some() {
                    info!(message_id = LEADER_ELECTED, term, node = %self.node, "the lease held: leading again under the same term");
                } else {
                    info!(message_id = LEADER_ELECTED, term, node = %self.node, "became the leader");
                }
                self.role.send_replace(Role::Leader { term });
                let end = self
                    .lead(
                        term,
                        &mut keeper,
                        &mut responses,
                        &mut deadline,
                        &mut keepalive,
                        ttl,
                        shutdown,
                    )
                    .await?;
                let reason = match end {
                    End::Shutdown => "resigned",
                    End::LeaseLost => "lease lost",
                    End::Lapsed => "lease unconfirmed",
                    End::Fenced => "fenced",
                    End::SteppedDown => {
                        "stepped down: this node runs the standalone server, and another daemon can lead"
                    }
                };
                info!(
                    message_id = LEADER_LOST,
                    term, reason, "stopped being the leader"
                );
                self.role.send_replace(Role::Follower { leader: None });
                if let End::Shutdown | End::SteppedDown = end {
                    // Guarded: delete the key only if it is still this term's.
                    let resign = Txn::new()
                        .when([Compare::create_revision(
                            key.clone(),
                            CompareOp::Equal,
                            term,
                        )])
                        .and_then([TxnOp::delete(key.clone(), None)]);
                    let _ = self.client.txn(resign).await;
                }
                if let End::Lapsed = end {
                    // Keep the lease; the next campaign finds out whether it held.
                    continue;
                }
                if let End::SteppedDown = end {
                    // Keep the lease and the registration; let another daemon win first.
                    self.hold_campaign_until = Some(Instant::now() + STEP_DOWN_HOLD);
                    continue;
                }
                break end;
            }
            let leader_term = seen.as_ref().map_or(0, |(_, term, _)| *term);
            let following = Role::Follower {
                leader: seen.map(|(name, _, _)| name),
            };
            self.role.send_replace(following.clone());
            // Past the deadline with no answer, this daemon cannot tell who leads: it says
            // so (Unknown) until etcd answers again, rather than name a stale leader.
            let mut unsure = false;
            // Follow: wait for the key to go (from the revision the campaign saw, so a
            // delete in between is not missed), keeping the lease alive meanwhile.
            let options = WatchOptions::new().with_start_revision(revision + 1);
            let mut events = self.client.watch(key.clone(), Some(options)).await?;
            // A watch or keepalive stream can sit on a member that froze (its TCP port
            // still accepts): keepalives unanswered for half the TTL reopen the stream
            // elsewhere, and the leader key is read again now and then.
            let mut answered = Instant::now();
            let mut stream_broken = false;
            let mut recheck = tokio::time::interval(LEADER_RECHECK);
            recheck.reset();
            let campaign_again = loop {
                tokio::select! {
                    message = events.message() => {
                        // A broken or cancelled watch: campaign again (which reads the key
                        // and watches anew), keeping the lease.
                        let Ok(Some(message)) = message else { break true };
                        if message.canceled() {
                            break true;
                        }
                        if message.events().iter().any(|e| e.event_type() == EventType::Delete) {
                            break true;
                        }
                    }
                    _ = keepalive.tick() => {
                        if !unsure && Instant::now() > deadline {
                            unsure = true;
                            self.role.send_replace(Role::Unknown);
                        }
                        let stalled = answered.elapsed() > ttl / 2;
                        if stream_broken || stalled || self.send_keepalive(&mut keeper).await.is_err() {
                            match self.reopen_keepalive(&mut keeper, &mut responses, ttl).await {
                                Reopen::Open => stream_broken = false,
                                Reopen::Failed => stream_broken = true,
                                Reopen::LeaseGone => break false,
                            }
                            // The watch may sit on the same silent member.
                            recheck.reset_immediately();
                        }
                    }
                    message = responses.message(), if !stream_broken => {
                        match message {
                            Ok(Some(r)) if r.ttl() > 0 => {
                                answered = Instant::now();
                                deadline = answered + ttl;
                                self.keepalive_answered(ttl);
                                // The key is this lease's (a lapsed leader's): it held, so
                                // lead again.
                                if own_key {
                                    break true;
                                }
                                if unsure {
                                    unsure = false;
                                    self.role.send_replace(following.clone());
                                }
                            }
                            Ok(Some(_)) => break false,
                            Ok(None) | Err(_) => match self.reopen_keepalive(&mut keeper, &mut responses, ttl).await {
                                Reopen::Open => stream_broken = false,
                                Reopen::Failed => stream_broken = true,
                                Reopen::LeaseGone => break false,
                            },
                        }
                    }
                    _ = recheck.tick() => {
                        let read = tokio::time::timeout(ttl, self.client.get(key.clone(), None)).await;
                        // Vacant, or taken by another term while the watch was silent:
                        // campaign again, which also names the new leader.
                        if let Ok(Ok(answer)) = read {
                            if answer.kvs().first().is_none_or(|kv| kv.create_revision() != leader_term) {
                                break true;
                            }
                        }
                    }
                    _ = shutdown.changed() => {
                        let _ = self.client.lease_revoke(lease_id).await;
                        let _ = std::fs::remove_file(&self.lease_file);
                        return Ok(End::Shutdown);
                    }
                }
            };
            if !campaign_again {
                break End::LeaseLost;
            }
        };
        let _ = self.client.lease_revoke(lease_id).await;
        let _ = std::fs::remove_file(&self.lease_file);
        Ok(end)
    }

    /// Acts as the leader until the lease ends, a guarded write fails, or shutdown.
    #[allow(clippy::too_many_arguments)]
    async fn lead(
        &mut self,
        term: i64,
        keeper: &mut etcd_client::LeaseKeeper,
        responses: &mut etcd_client::LeaseKeepAliveStream,
        deadline: &mut Instant,
        keepalive: &mut tokio::time::Interval,
        ttl: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<End, ClusterError> {
        // An etcd error here (a member went away under a request or the keepalive
        // stream) is not the end of leadership: the lease deadline is. Until it passes,
        // retry, and reopen the keepalive stream (it goes to another member).
        let mut act = tokio::time::interval(Duration::from_secs(1));
        let mut stream_broken = false;
        let mut answered = Instant::now();
        // Dropped (and so aborted) with leadership; a late write would be fenced anyway.
        let mut acting = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = act.tick() => {
                    if Instant::now() > *deadline {
                        return Ok(End::Lapsed);
                    }
                    if self.should_step_down(ttl).await {
                        return Ok(End::SteppedDown);
                    }
                    // One write at a time, beside this loop and bounded: a write that
                    // sits on a silent member must hold up neither the keepalives nor
                    // the next write past the lease deadline.
                    if acting.is_empty() {
                        let value = format!("{} {term}", self.node);
                        let put = self.fenced_put(term, keys::leader_acting(&self.prefix), value);
                        acting.spawn(tokio::time::timeout(ttl / 2, put));
                    }
                }
                Some(written) = acting.join_next(), if !acting.is_empty() => {
                    match written {
                        Ok(Ok(Ok(true))) => {}
                        Ok(Ok(Ok(false))) => return Ok(End::Fenced),
                        Ok(Ok(Err(e))) => warn!("leader: acting write failed, retrying within the lease: {e}"),
                        Ok(Err(_)) => warn!("leader: acting write unanswered for {:?}, retrying within the lease", ttl / 2),
                        Err(e) => warn!("leader: acting write did not finish: {e}"),
                    }
                }
                _ = keepalive.tick() => {
                    if Instant::now() > *deadline {
                        return Ok(End::Lapsed);
                    }
                    // Unanswered for half the TTL: the stream sits on a member that
                    // stopped answering; open another.
                    let stalled = answered.elapsed() > ttl / 2;
                    if stream_broken || stalled || self.send_keepalive(keeper).await.is_err() {
                        match self.reopen_keepalive(keeper, responses, ttl).await {
                            Reopen::Open => stream_broken = false,
                            Reopen::Failed => stream_broken = true,
                            Reopen::LeaseGone => return Ok(End::LeaseLost),
                        }
                    }
                }
                message = responses.message(), if !stream_broken => {
                    match message {
                        Ok(Some(r)) if r.ttl() > 0 => {
                            answered = Instant::now();
                            *deadline = answered + ttl;
                            self.keepalive_answered(ttl);
                        }
                        Ok(Some(_)) => return Ok(End::LeaseLost),
                        Ok(None) | Err(_) => match self.reopen_keepalive(keeper, responses, ttl).await {
                            Reopen::Open => stream_broken = false,
                            Reopen::Failed => stream_broken = true,
                            Reopen::LeaseGone => return Ok(End::LeaseLost),
                        },
                    }
                }
                _ = shutdown.changed() => return Ok(End::Shutdown),
            }
        }
    }

    /// Opens a new keepalive stream for the lease the current one was for.
    async fn reopen_keepalive(
        &mut self,
        keeper: &mut etcd_client::LeaseKeeper,
        responses: &mut etcd_client::LeaseKeepAliveStream,
        ttl: Duration,
    ) -> Reopen {
        self.probe_endpoints.notify_one();
        let id = keeper.id();
        let urls = self
            .member_urls
            .as_ref()
            .map(|urls| urls.borrow().clone())
            .unwrap_or_default();
        let mut clients = Vec::with_capacity(urls.len());
        for url in &urls {
            if let Ok(client) = super::connect_one(url).await {
                clients.push(client);
            }
        }
        if clients.is_empty() {
            clients.push(self.client.clone());
        }
        // Opening a stream waits for the member's first answer; every member is asked at
        // once, the first answer wins, and the whole is bounded like every call here.
        let asked = Instant::now();
        let attempts = clients.into_iter().map(|mut client| {
            Box::pin(async move {
                let streams = client.lease_keep_alive(id).await?;
                Ok::<_, etcd_client::Error>((client, streams))
            })
        });
        let opened =
            match tokio::time::timeout(ttl / 3, futures_util::future::select_ok(attempts)).await {
                Ok(Ok(((client, streams), _))) => {
                    self.keepalive_client = Some(client);
                    Ok(streams)
                }
                // etcd's answer to a keepalive of an expired lease.
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e.contains("not found") => {
                    warn!("lease keepalive: etcd says the lease is gone");
                    return Reopen::LeaseGone;
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", ttl / 3)),
            };
        match opened {
            Ok((new_keeper, new_responses)) => {
                *keeper = new_keeper;
                *responses = new_responses;
                // The opening answer renewed the lease; the old stream's sends are moot.
                self.unanswered.clear();
                self.confirm_lease(asked + ttl);
                // Renew at once: the broken stream may have eaten the last answer.
                if self.send_keepalive(keeper).await.is_ok() {
                    Reopen::Open
                } else {
                    Reopen::Failed
                }
            }
            Err(e) => {
                warn!("lease keepalive stream lost, reopening: {e}");
                Reopen::Failed
            }
        }
    }

    /// A write of the leader's: applied only while `term` still holds the leader key.
    /// Returns false when fenced.
    fn fenced_put(
        &self,
        term: i64,
        key: String,
        value: String,
    ) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
        let mut client = self.client.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.leader_key(),
                CompareOp::Equal,
                term,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        async move { Ok(client.txn(txn).await?.succeeded()) }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};

    use super::*;

    /// A single etcd member on a loopback address of its own, killed when dropped (its
    /// data directory goes with it).
    struct Etcd {
        child: Child,
        _data: tempfile::TempDir,
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn etcd() -> (Etcd, Client) {
        let pid = std::process::id();
        let ip = format!("127.{}.{}.9", 100 + pid % 100, 1 + (pid / 100) % 250);
        let dir = tempfile::TempDir::new().unwrap();
        let child = Command::new("etcd")
            .arg(format!("--data-dir={}", dir.path().display()))
            .arg(format!("--listen-client-urls=http://{ip}:2379"))
            .arg(format!("--advertise-client-urls=http://{ip}:2379"))
            .arg(format!("--listen-peer-urls=http://{ip}:2380"))
            .arg(format!("--initial-advertise-peer-urls=http://{ip}:2380"))
            .arg(format!("--initial-cluster=default=http://{ip}:2380"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd from etcd-server");
        let etcd = Etcd { child, _data: dir };
        for _ in 0..100 {
            if let Ok(mut client) = Client::connect([format!("http://{ip}:2379")], None).await {
                if client.status().await.is_ok() {
                    return (etcd, client);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd on {ip} did not start");
    }

    /// The guard itself: a write carrying an old term is refused by etcd once the leader
    /// key belongs to another term, whatever the writer believes.
    #[tokio::test]
    #[ignore = "needs etcd-server: scripts/test-all.sh runs it"]
    async fn a_write_with_a_superseded_term_is_refused_by_etcd() {
        let (_etcd, mut client) = etcd().await;
        let state = tempfile::TempDir::new().unwrap();
        let election = Election::new(
            client.clone(),
            "/t/".into(),
            "a".into(),
            "https://127.0.0.1:1".into(),
            2,
            state.path(),
        );
        let term = client
            .put("/t/leader", "a", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        assert!(election
            .fenced_put(term, "/t/x".into(), "1".into())
            .await
            .unwrap());

        // Another daemon's term: the key is deleted and created again.
        client.delete("/t/leader", None).await.unwrap();
        let newer = client
            .put("/t/leader", "b", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        assert!(newer > term);
        assert!(
            !election
                .fenced_put(term, "/t/x".into(), "2".into())
                .await
                .unwrap(),
            "fenced"
        );
        let value = client.get("/t/x", None).await.unwrap();
        assert_eq!(
            value.kvs()[0].value_str().unwrap(),
            "1",
            "the fenced write changed nothing"
        );

        // And with no leader key at all.
        client.delete("/t/leader", None).await.unwrap();
        assert!(!election
            .fenced_put(newer, "/t/x".into(), "3".into())
            .await
            .unwrap());
    }
}
