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

use std::sync::Arc;

use etcd_client::{Client, EventType, PutOptions, WatchOptions};
use tokio::sync::watch;
use tokio::time::{sleep, Instant};
use tracing::{info, warn};

use super::kv::{Check, Cmp, Kv, Op, Txn, TxnAnswer};
use super::messages::{LEADER_ELECTED, LEADER_LOST};
use super::{keys, ClusterError};

/// How often a follower reads the leader key besides watching it (a watch can sit on a
/// member that froze or was cut off and never fire); at once when its keepalive stalls.
const LEADER_RECHECK: Duration = Duration::from_secs(5);
/// How long a leader that stepped down leaves the campaign to the others.
const STEP_DOWN_HOLD: Duration = Duration::from_secs(3);
/// How long the per-member clients of a keepalive reopen are kept after their last use:
/// through a cut or a member's restart, not for good.
const MEMBER_CLIENTS_KEPT: Duration = Duration::from_secs(60);

/// This daemon's lease while it lives: its keepalive stream and what the answers prove.
struct HeldLease {
    id: i64,
    ttl: Duration,
    keeper: etcd_client::LeaseKeeper,
    responses: etcd_client::LeaseKeepAliveStream,
    /// The one-member client the stream runs on, when it was reopened that way (the
    /// stream lives as long as its client).
    stream_client: Option<Client>,
    /// No answer can come on the stream: reopen it on the next tick.
    stream_broken: bool,
    /// Every keepalive is sent on this tick (a third of the TTL).
    keepalive: tokio::time::Interval,
    /// When each keepalive not yet answered was sent, oldest first (a stream answers in
    /// order; a reopened stream starts afresh).
    unanswered: std::collections::VecDeque<Instant>,
    /// When the last answer came.
    answered: Instant,
    /// The lease is ours until this deadline; every answered keepalive moves it on. A
    /// leader past it stops acting without asking anyone. A follower only keeps its
    /// lease alive: the lease ends when etcd says so, never on a local guess (giving it
    /// up would drop this node's registration and raise a false peer-down alert).
    deadline: Instant,
}

/// Something for the keepalive to handle.
enum LeaseEvent {
    /// Time to send the next keepalive.
    Tick,
    Answer(Result<Option<etcd_client::LeaseKeepAliveResponse>, etcd_client::Error>),
}

/// What handling a [`LeaseEvent`] did.
enum Kept {
    Sent,
    /// etcd answered: the deadline moved on.
    Answered,
    /// The stream stalled or broke and was reopened (or will be on the next tick): a
    /// watch may sit on the same silent member.
    Reopened,
    /// etcd said the lease is gone.
    Gone,
}

impl HeldLease {
    /// The next event; cancel-safe (for `select!`).
    async fn next_event(&mut self) -> LeaseEvent {
        tokio::select! {
            _ = self.keepalive.tick() => LeaseEvent::Tick,
            answer = self.responses.message(), if !self.stream_broken => LeaseEvent::Answer(answer),
        }
    }

    /// Whether the deadline passed unconfirmed.
    fn lapsed(&self) -> bool {
        Instant::now() > self.deadline
    }
}

/// How a follower's wait ended.
enum Followed {
    /// The leader key went or changed, the watch ended, or this lease's own key held:
    /// campaign again.
    CampaignAgain,
    LeaseLost,
    Shutdown,
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
    /// The same etcd, for the campaign and the leader's fenced writes.
    kv: Arc<dyn Kv>,
    prefix: String,
    node: String,
    /// This daemon's API URL, registered under `<prefix>members/<node>` with its lease, so
    /// that the entry goes with the daemon.
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
    /// A client per etcd member (by client URL) for reopening keepalive streams, kept so
    /// that a reopen pays no new connection (a TLS handshake per member) within its
    /// third of the TTL.
    member_clients: std::collections::HashMap<String, Client>,
    /// When a reopen last used `member_clients`: they are dropped a while after (each
    /// holds a connection and its buffers; an idle daemon needs none).
    member_clients_used: Option<Instant>,
    /// Counts what the endpoint prober changed; on a drop, a follower's
    /// watch may sit on the member that went silent (its HTTP/2 connection outlives the
    /// endpoint's removal until a keepalive ping times out), so a follower campaigns
    /// again, which reads the leader key and watches anew through members that answer.
    endpoint_changes: watch::Sender<super::EndpointChanges>,
    /// Until when this daemon's lease surely lives in etcd, as this daemon can prove it:
    /// the send time of the last keepalive etcd answered, plus the TTL (etcd counts from
    /// its receipt, which is later). A node's supervisor fences its own standalone server
    /// once this has passed (supervise/node.rs); None while no lease is held.
    lease_until: watch::Sender<Option<Instant>>,
    /// Where the standalone server runs: a leader on that node steps down (see
    /// [`Election::with_placement`]).
    placement: Option<watch::Receiver<Option<super::placement::Placement>>>,
    /// The nodes that may lead: only for one of them does a leader step down.
    may_lead: Option<watch::Receiver<Vec<String>>>,
    /// No campaign before this (after stepping down, so that another daemon takes over).
    hold_campaign_until: Option<Instant>,
    /// Whether this daemon may lead at all (`FleetConfig::may_lead`); one that may not
    /// still holds a lease and registers (its server's fencing needs the lease), and
    /// only reads the leader key.
    candidate: bool,
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
            kv: Arc::new(client.clone()),
            client,
            prefix,
            node,
            api_url,
            ttl_secs: i64::from(ttl_secs),
            lease_file: state_dir.join("leader-lease"),
            role,
            probe_endpoints: Default::default(),
            member_urls: None,
            member_clients: Default::default(),
            member_clients_used: None,
            endpoint_changes: watch::channel(Default::default()).0,
            lease_until: watch::channel(None).0,
            placement: None,
            may_lead: None,
            hold_campaign_until: None,
            candidate: true,
        }
    }

    /// Whether this daemon campaigns (see the field).
    pub fn with_candidacy(mut self, candidate: bool) -> Self {
        self.candidate = candidate;
        self
    }

    /// A leader whose node runs the standalone server steps down when another daemon that
    /// may lead (one of `may_lead`) is registered: losing a host with both would cost a
    /// leader election before the server's failover could start (seconds of failed
    /// searches). With no such daemon it leads on: a compute or witness node cannot take
    /// over.
    pub fn with_placement(
        mut self,
        placement: watch::Receiver<Option<super::placement::Placement>>,
        may_lead: watch::Receiver<Vec<String>>,
    ) -> Self {
        self.placement = Some(placement);
        self.may_lead = Some(may_lead);
        self
    }

    /// Whether this leader should step down now (see [`Election::with_placement`]).
    async fn should_step_down(&self, ttl: Duration) -> bool {
        let server_node = self
            .placement
            .as_ref()
            .and_then(|p| p.borrow().as_ref().map(|p| p.node.clone()));
        if server_node.as_deref() != Some(self.node.as_str()) {
            return false;
        }
        let members = keys::members(&self.prefix);
        let read = tokio::time::timeout(ttl / 2, self.kv.get_prefix(&members)).await;
        let Ok(Ok(registered)) = read else {
            return false;
        };
        let may_lead = self
            .may_lead
            .as_ref()
            .map(|m| m.borrow().clone())
            .unwrap_or_default();
        let registered: Vec<&str> = registered
            .iter()
            .filter_map(|e| e.key.strip_prefix(&members))
            .filter(|node| may_lead.iter().any(|n| n == node))
            .collect();
        step_down(server_node.as_deref(), &self.node, &registered)
    }

    /// Publishes until when the lease surely lives on `until` (see the field).
    pub fn with_lease_until(mut self, until: watch::Sender<Option<Instant>>) -> Self {
        self.lease_until = until;
        self
    }

    /// Sends one keepalive, noting when.
    async fn send_keepalive(lease: &mut HeldLease) -> Result<(), etcd_client::Error> {
        lease.unanswered.push_back(Instant::now());
        lease.keeper.keep_alive().await
    }

    /// Handles one keepalive event: send on the tick (or reopen a stalled or broken
    /// stream), move the deadline on an answer. One handler for leader and follower.
    async fn keep(&mut self, lease: &mut HeldLease, event: LeaseEvent) -> Kept {
        match event {
            LeaseEvent::Tick => {
                if self
                    .member_clients_used
                    .is_some_and(|used| used.elapsed() > MEMBER_CLIENTS_KEPT)
                {
                    self.member_clients.clear();
                    self.member_clients_used = None;
                }
                // Unanswered for half the TTL: the stream sits on a member that stopped
                // answering; open another.
                let stalled = lease.answered.elapsed() > lease.ttl / 2;
                if lease.stream_broken || stalled || Self::send_keepalive(lease).await.is_err() {
                    return self.reopen_keepalive(lease).await;
                }
                Kept::Sent
            }
            LeaseEvent::Answer(Ok(Some(answer))) if answer.ttl() > 0 => {
                lease.answered = Instant::now();
                lease.deadline = lease.answered + lease.ttl;
                // The lease lives until the answered keepalive's send time plus the TTL.
                if let Some(sent) = lease.unanswered.pop_front() {
                    self.confirm_lease(sent + lease.ttl);
                }
                Kept::Answered
            }
            LeaseEvent::Answer(Ok(Some(_))) => Kept::Gone,
            LeaseEvent::Answer(Ok(None) | Err(_)) => self.reopen_keepalive(lease).await,
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

    /// What the endpoint prober counts its changes on (see `endpoint_changes`).
    pub fn endpoint_changes(&self) -> watch::Sender<super::EndpointChanges> {
        self.endpoint_changes.clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// The lease TTL asked for: what bounds each call of the election.
    fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs.max(1) as u64)
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
        // Every call here is bounded: one that reached etcd while its raft leader changed
        // waits out etcd's request timeout (5 s and more) otherwise, and this daemon with
        // it (a cut of the leader's host measured a 6 s stall and a 13.4 s gap). On a
        // timeout the run loop begins again with a new lease; the old one ends by its TTL.
        let ttl = self.ttl();
        let mut lease = super::bounded("granting a lease", ttl, self.grant_lease()).await?;
        let end = loop {
            let key = self.leader_key();
            let held =
                !self.candidate || self.hold_campaign_until.is_some_and(|t| Instant::now() < t);
            let campaigned = super::bounded(
                "the campaign",
                ttl / 2,
                campaign(self.kv.as_ref(), &key, &self.node, lease.id, held),
            )
            .await;
            let answer = match campaigned {
                // The lease lapsed in etcd (its keepalives went unanswered): a new one at
                // once, not after the run loop's pause for errors.
                Err(e) if e.is_lease_gone() => {
                    warn!("the campaign found this daemon's lease gone; taking a new one");
                    break End::LeaseLost;
                }
                other => other?,
            };
            match outcome(&answer, lease.id, !lease.lapsed()) {
                Outcome::Lead { term, resumed } => {
                    if resumed {
                        info!(message_id = LEADER_ELECTED, term, node = %self.node, "the lease held: leading again under the same term");
                    } else {
                        info!(message_id = LEADER_ELECTED, term, node = %self.node, "became the leader");
                    }
                    self.role.send_replace(Role::Leader { term });
                    let end = self.lead(term, &mut lease, shutdown).await?;
                    self.role.send_replace(Role::Follower { leader: None });
                    match end {
                        // Keep the lease; the next campaign finds out whether it held.
                        End::Lapsed => continue,
                        // Keep the lease and the registration; let another daemon win first.
                        End::SteppedDown => {
                            self.hold_campaign_until = Some(Instant::now() + STEP_DOWN_HOLD);
                            continue;
                        }
                        end => break end,
                    }
                }
                Outcome::Follow {
                    leader,
                    term,
                    own_key,
                } => {
                    let following = Following {
                        role: Role::Follower { leader },
                        term,
                        own_key,
                        from_revision: answer.revision + 1,
                    };
                    match self.follow(&mut lease, following, shutdown).await? {
                        Followed::CampaignAgain => continue,
                        Followed::LeaseLost => break End::LeaseLost,
                        Followed::Shutdown => break End::Shutdown,
                    }
                }
            }
        };
        let _ = tokio::time::timeout(ttl / 2, self.client.lease_revoke(lease.id)).await;
        let _ = std::fs::remove_file(&self.lease_file);
        Ok(end)
    }

    /// Grants a lease, records its id (for the next run to revoke after a crash),
    /// registers this daemon under it and opens its keepalive stream.
    async fn grant_lease(&mut self) -> Result<HeldLease, ClusterError> {
        let asked = Instant::now();
        let granted = self.client.lease_grant(self.ttl_secs, None).await?;
        let id = granted.id();
        let ttl = Duration::from_secs(granted.ttl().max(1) as u64);
        self.lease_until.send_replace(Some(asked + ttl));
        self.record_lease(id)?;
        let member = keys::member(&self.prefix, &self.node);
        let options = PutOptions::new().with_lease(id);
        self.client
            .put(member, self.api_url.clone(), Some(options))
            .await?;
        let (keeper, responses) = self.client.lease_keep_alive(id).await?;
        Ok(HeldLease {
            id,
            ttl,
            keeper,
            responses,
            stream_client: None,
            stream_broken: false,
            keepalive: tokio::time::interval(ttl / 3),
            unanswered: Default::default(),
            answered: Instant::now(),
            deadline: Instant::now() + ttl,
        })
    }

    /// Follows the leader the campaign saw until the key goes or changes (campaign
    /// again), keeping the lease alive meanwhile.
    async fn follow(
        &mut self,
        lease: &mut HeldLease,
        following: Following,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Followed, ClusterError> {
        let key = self.leader_key();
        self.role.send_replace(following.role.clone());
        // Past the deadline with no answer, this daemon cannot tell who leads: it says
        // so (Unknown) until etcd answers again, rather than name a stale leader.
        let mut unsure = false;
        // From the revision after the campaign's, so that a delete in between is not missed.
        let options = WatchOptions::new().with_start_revision(following.from_revision);
        let mut events = self.client.watch(key.clone(), Some(options)).await?;
        // A watch can sit on a member that froze (its TCP port still accepts): the
        // leader key is read again now and then, and at once when the keepalive stalls.
        let mut recheck = tokio::time::interval(LEADER_RECHECK);
        recheck.reset();
        let mut changes = self.endpoint_changes.subscribe();
        let dropped_before = changes.borrow_and_update().dropped;
        loop {
            tokio::select! {
                Ok(()) = changes.changed() => {
                    if changes.borrow_and_update().dropped != dropped_before {
                        return Ok(Followed::CampaignAgain);
                    }
                }
                message = events.message() => {
                    // A broken or cancelled watch: campaign again (which reads the key
                    // and watches anew), keeping the lease.
                    let Ok(Some(message)) = message else { return Ok(Followed::CampaignAgain) };
                    if message.canceled()
                        || message.events().iter().any(|e| e.event_type() == EventType::Delete)
                    {
                        return Ok(Followed::CampaignAgain);
                    }
                }
                event = lease.next_event() => {
                    if matches!(event, LeaseEvent::Tick) && !unsure && lease.lapsed() {
                        unsure = true;
                        self.role.send_replace(Role::Unknown);
                    }
                    match self.keep(lease, event).await {
                        Kept::Sent => {}
                        Kept::Gone => return Ok(Followed::LeaseLost),
                        Kept::Reopened => recheck.reset_immediately(),
                        // The key is this lease's (a lapsed leader's): it held, so lead
                        // again.
                        Kept::Answered if following.own_key => return Ok(Followed::CampaignAgain),
                        Kept::Answered => {
                            if unsure {
                                unsure = false;
                                self.role.send_replace(following.role.clone());
                            }
                        }
                    }
                }
                _ = recheck.tick() => {
                    let read = tokio::time::timeout(lease.ttl, self.kv.get(&key)).await;
                    // Vacant, or taken by another term while the watch was silent:
                    // campaign again, which also names the new leader.
                    if let Ok(Ok(leader)) = read {
                        if leader.is_none_or(|l| l.create_revision != following.term) {
                            return Ok(Followed::CampaignAgain);
                        }
                    }
                }
                _ = shutdown.changed() => return Ok(Followed::Shutdown),
            }
        }
    }

    /// Acts as the leader of `term` until the lease ends, a guarded write fails, it steps
    /// down, or shutdown; then says so, and resigns (a guarded delete) when it stops or
    /// steps down.
    async fn lead(
        &mut self,
        term: i64,
        lease: &mut HeldLease,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<End, ClusterError> {
        let end = self.act(term, lease, shutdown).await;
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
        if let End::Shutdown | End::SteppedDown = end {
            let key = self.leader_key();
            let resign = Txn {
                when: vec![Check::create_revision(key.clone(), Cmp::Equal, term)],
                then: vec![Op::delete(key)],
                otherwise: vec![],
            };
            // Bounded: a resign left unanswered ends with the lease anyway.
            let _ = tokio::time::timeout(self.ttl(), self.kv.txn(resign)).await;
        }
        Ok(end)
    }

    /// The leader's loop: one fenced write a second (the acting record), the keepalive,
    /// the step-down check.
    async fn act(
        &mut self,
        term: i64,
        lease: &mut HeldLease,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        // An etcd error here (a member went away under a request or the keepalive
        // stream) is not the end of leadership: the lease deadline is. Until it passes,
        // retry, and reopen the keepalive stream (it goes to another member).
        let ttl = lease.ttl;
        let mut act = tokio::time::interval(Duration::from_secs(1));
        // Dropped (and so aborted) with leadership; a late write would be fenced anyway.
        let mut acting = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = act.tick() => {
                    if lease.lapsed() {
                        return End::Lapsed;
                    }
                    if self.should_step_down(ttl).await {
                        return End::SteppedDown;
                    }
                    // One write at a time, beside this loop and bounded: a write that
                    // sits on a silent member must hold up neither the keepalives nor
                    // the next write past the lease deadline.
                    if acting.is_empty() {
                        let value = format!("{} {term}", self.node);
                        let put = fenced_write(self.kv.clone(), self.leader_key(), term, keys::leader_acting(&self.prefix), value);
                        acting.spawn(tokio::time::timeout(ttl / 2, put));
                    }
                }
                Some(written) = acting.join_next(), if !acting.is_empty() => {
                    match written {
                        Ok(Ok(Ok(true))) => {}
                        Ok(Ok(Ok(false))) => return End::Fenced,
                        Ok(Ok(Err(e))) => warn!("leader: acting write failed, retrying within the lease: {e}"),
                        Ok(Err(_)) => warn!("leader: acting write unanswered for {:?}, retrying within the lease", ttl / 2),
                        Err(e) => warn!("leader: acting write did not finish: {e}"),
                    }
                }
                event = lease.next_event() => {
                    if matches!(event, LeaseEvent::Tick) && lease.lapsed() {
                        return End::Lapsed;
                    }
                    if let Kept::Gone = self.keep(lease, event).await {
                        return End::LeaseLost;
                    }
                }
                _ = shutdown.changed() => return End::Shutdown,
            }
        }
    }

    /// Opens a new keepalive stream for the lease, on every etcd member at once.
    async fn reopen_keepalive(&mut self, lease: &mut HeldLease) -> Kept {
        self.probe_endpoints.notify_one();
        let (id, ttl) = (lease.id, lease.ttl);
        let urls = self
            .member_urls
            .as_ref()
            .map(|urls| urls.borrow().clone())
            .unwrap_or_default();
        self.member_clients_used = Some(Instant::now());
        self.member_clients.retain(|url, _| urls.contains(url));
        let mut clients = Vec::with_capacity(urls.len());
        for url in &urls {
            if let Some(client) = self.member_clients.get(url) {
                clients.push(client.clone());
            } else if let Ok(client) = super::connect_one(url).await {
                self.member_clients.insert(url.clone(), client.clone());
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
                Ok(Ok(((client, streams), _))) => Ok((client, streams)),
                // etcd's answer to a keepalive of an expired lease.
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e.contains("not found") => {
                    warn!("lease keepalive: etcd says the lease is gone");
                    return Kept::Gone;
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", ttl / 3)),
            };
        match opened {
            Ok((client, (keeper, responses))) => {
                lease.stream_client = Some(client);
                lease.keeper = keeper;
                lease.responses = responses;
                // The opening answer renewed the lease; the old stream's sends are moot.
                lease.unanswered.clear();
                self.confirm_lease(asked + ttl);
                // Renew at once: the broken stream may have eaten the last answer.
                lease.stream_broken = Self::send_keepalive(lease).await.is_err();
            }
            Err(e) => {
                warn!("lease keepalive stream lost, reopening: {e}");
                lease.stream_broken = true;
            }
        }
        Kept::Reopened
    }
}

/// What a follower follows: the campaign's view of the leader key.
struct Following {
    role: Role,
    /// The leader key's term (create revision) when the campaign saw it; 0: vacant.
    term: i64,
    /// The key is this daemon's own lease's (a lapsed leader's).
    own_key: bool,
    /// Watch the key from here.
    from_revision: i64,
}

/// What a campaign found: won, or the leader key as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignAnswer {
    pub won: bool,
    /// The store's revision after the campaign (a follower watches from the next one).
    pub revision: i64,
    /// The leader key: this campaign's own when won.
    pub leader: Option<super::kv::Entry>,
}

/// One campaign of `node` holding `lease`: create the leader key, bound to the lease, if
/// there is none, in one transaction; the key's create revision is the term. While
/// `held` (after stepping down, or a node that may not lead) the key is only read.
pub async fn campaign(
    kv: &dyn Kv,
    leader_key: &str,
    node: &str,
    lease: i64,
    held: bool,
) -> Result<CampaignAnswer, ClusterError> {
    // Held: a read alone (etcd checks a transaction's every branch against the caller's
    // role, and a node that may not lead has no write access to the leader key).
    let txn = if held {
        Txn {
            when: vec![],
            then: vec![Op::get(leader_key)],
            otherwise: vec![],
        }
    } else {
        Txn {
            when: vec![Check::create_revision(leader_key, Cmp::Equal, 0)],
            then: vec![
                Op::put_with_lease(leader_key, node, lease),
                Op::get(leader_key),
            ],
            otherwise: vec![Op::get(leader_key)],
        }
    };
    let TxnAnswer {
        succeeded,
        revision,
        got,
    } = kv.txn(txn).await?;
    Ok(CampaignAnswer {
        won: succeeded && !held,
        revision,
        leader: got.into_iter().flatten().next(),
    })
}

/// What this daemon does after a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Lead under `term`; `resumed` when the term is an earlier one of this same lease.
    Lead { term: i64, resumed: bool },
    /// Follow `leader` (None: vacant, while the campaign is held) of `term`; `own_key`
    /// when the key is still this lease's but the lease is not confirmed yet.
    Follow {
        leader: Option<String>,
        term: i64,
        own_key: bool,
    },
}

/// The decision after a campaign (pure). A key still bound to this daemon's lease after
/// a lapse means no one else led in between: it leads on under the same term (fencing
/// token), once the lease is confirmed again (a keepalive answered: `lease_confirmed`).
pub fn outcome(answer: &CampaignAnswer, lease: i64, lease_confirmed: bool) -> Outcome {
    let term = answer.leader.as_ref().map_or(0, |l| l.create_revision);
    if answer.won {
        return Outcome::Lead {
            term,
            resumed: false,
        };
    }
    let own_key = answer.leader.as_ref().is_some_and(|l| l.lease == lease);
    if own_key && lease_confirmed {
        return Outcome::Lead {
            term,
            resumed: true,
        };
    }
    Outcome::Follow {
        leader: answer.leader.as_ref().map(|l| l.value_str().to_owned()),
        term,
        own_key,
    }
}

/// Whether a leader on `me` steps down (pure): its node runs the standalone server
/// (`server_node`) and another daemon is registered to take over.
pub fn step_down(server_node: Option<&str>, me: &str, registered: &[&str]) -> bool {
    server_node == Some(me) && registered.iter().any(|node| *node != me)
}

/// A write of the leader of `term`: applied only while `term` still holds the leader key.
/// Resolves to false when fenced.
pub fn fenced_write(
    kv: Arc<dyn Kv>,
    leader_key: String,
    term: i64,
    key: String,
    value: String,
) -> impl std::future::Future<Output = Result<bool, ClusterError>> + Send + 'static {
    let txn = Txn {
        when: vec![Check::create_revision(leader_key, Cmp::Equal, term)],
        then: vec![Op::put(key, value)],
        otherwise: vec![],
    };
    async move { Ok(kv.txn(txn).await?.succeeded) }
}

#[cfg(test)]
mod decisions {
    use super::*;
    use crate::cluster::kv::MemoryKv;

    const KEY: &str = "/t/leader";

    #[tokio::test]
    async fn the_first_campaign_leads_and_the_next_follows_it() {
        let kv = MemoryKv::new();
        let (a, b) = (kv.grant_lease(), kv.grant_lease());
        let first = campaign(&kv, KEY, "a", a, false).await.unwrap();
        let Outcome::Lead { term, resumed } = outcome(&first, a, true) else {
            panic!("a leads: {first:?}");
        };
        assert!(!resumed);
        assert_eq!(
            term, first.revision,
            "the term is the key's create revision"
        );
        let second = campaign(&kv, KEY, "b", b, false).await.unwrap();
        assert_eq!(
            outcome(&second, b, true),
            Outcome::Follow {
                leader: Some("a".into()),
                term,
                own_key: false
            }
        );
        assert_eq!(kv.get(KEY).await.unwrap().unwrap().value_str(), "a");
    }

    #[tokio::test]
    async fn a_deposed_leader_s_writes_are_refused_once_another_term_holds_the_key() {
        let kv = MemoryKv::new();
        let (a, b) = (kv.grant_lease(), kv.grant_lease());
        let shared: Arc<dyn Kv> = Arc::new(kv.clone());
        let write = |term: i64, value: &str| {
            fenced_write(
                shared.clone(),
                KEY.into(),
                term,
                "/t/x".into(),
                value.into(),
            )
        };
        let term_a = campaign(&kv, KEY, "a", a, false).await.unwrap().revision;
        assert!(write(term_a, "a1").await.unwrap());

        // a's lease runs out (frozen, cut off): b campaigns and wins a newer term.
        kv.expire_lease(a);
        assert!(!write(term_a, "a2").await.unwrap(), "no leader key: fenced");
        let won = campaign(&kv, KEY, "b", b, false).await.unwrap();
        let Outcome::Lead { term: term_b, .. } = outcome(&won, b, true) else {
            panic!("b leads: {won:?}");
        };
        assert!(term_b > term_a);
        assert!(
            !write(term_a, "a3").await.unwrap(),
            "a's term is superseded: fenced"
        );
        assert_eq!(kv.get("/t/x").await.unwrap().unwrap().value_str(), "a1");
        assert!(write(term_b, "b1").await.unwrap());
        assert_eq!(kv.get("/t/x").await.unwrap().unwrap().value_str(), "b1");
    }

    #[tokio::test]
    async fn a_lapsed_leader_resumes_its_term_only_while_its_key_is_bound_to_its_lease() {
        let kv = MemoryKv::new();
        let (a, b) = (kv.grant_lease(), kv.grant_lease());
        let term_a = campaign(&kv, KEY, "a", a, false).await.unwrap().revision;

        // The leader's deadline passed unconfirmed; its next campaign finds its own key.
        let again = campaign(&kv, KEY, "a", a, false).await.unwrap();
        assert_eq!(
            outcome(&again, a, false),
            Outcome::Follow {
                leader: Some("a".into()),
                term: term_a,
                own_key: true
            },
            "not while the lease is unconfirmed"
        );
        assert_eq!(
            outcome(&again, a, true),
            Outcome::Lead {
                term: term_a,
                resumed: true
            },
            "the lease held: the same term"
        );

        // Had the lease run out, another daemon leads and a follows it.
        kv.expire_lease(a);
        let a2 = kv.grant_lease();
        let term_b = campaign(&kv, KEY, "b", b, false).await.unwrap().revision;
        let late = campaign(&kv, KEY, "a", a2, false).await.unwrap();
        assert_eq!(
            outcome(&late, a2, true),
            Outcome::Follow {
                leader: Some("b".into()),
                term: term_b,
                own_key: false
            }
        );
    }

    #[tokio::test]
    async fn a_held_campaign_leaves_a_vacant_key_to_the_others() {
        let kv = MemoryKv::new();
        let (a, b) = (kv.grant_lease(), kv.grant_lease());
        let held = campaign(&kv, KEY, "a", a, true).await.unwrap();
        assert_eq!(
            outcome(&held, a, true),
            Outcome::Follow {
                leader: None,
                term: 0,
                own_key: false
            }
        );
        assert!(kv.get(KEY).await.unwrap().is_none());
        let other = campaign(&kv, KEY, "b", b, false).await.unwrap();
        assert!(other.won);
    }

    #[test]
    fn a_leader_steps_down_only_from_the_server_s_node_and_only_to_another_daemon() {
        assert!(step_down(Some("h1"), "h1", &["h1", "h2"]));
        assert!(!step_down(Some("h1"), "h1", &["h1"]), "no one to take over");
        assert!(
            !step_down(Some("h2"), "h1", &["h1", "h2"]),
            "server elsewhere"
        );
        assert!(!step_down(None, "h1", &["h1", "h2"]), "no server placed");
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
        let kv: Arc<dyn Kv> = Arc::new(client.clone());
        let write = |term: i64, value: &str| {
            fenced_write(
                kv.clone(),
                "/t/leader".into(),
                term,
                "/t/x".into(),
                value.into(),
            )
        };
        let term = client
            .put("/t/leader", "a", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        assert!(write(term, "1").await.unwrap());

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
        assert!(!write(term, "2").await.unwrap(), "fenced");
        let value = etcd_client::Client::get(&mut client, "/t/x", None)
            .await
            .unwrap();
        assert_eq!(
            value.kvs()[0].value_str().unwrap(),
            "1",
            "the fenced write changed nothing"
        );

        // And with no leader key at all.
        client.delete("/t/leader", None).await.unwrap();
        assert!(!write(newer, "3").await.unwrap());
    }
}
