//! The node supervisor: this daemon keeps its own node's components right over D-Bus,
//! as its unprivileged user (the package's polkit rule grants it start, stop, restart and reload of its units).
//!
//! - Converge: when the configuration changes (and at start), it asks root to render
//!   (starts milvus-fleet-apply.service and waits for the job), then brings the units
//!   to the new render in dependency order (reconcile.rs).
//! - Health: every second it probes each running component (beside the loop, one probe
//!   in flight per component); one that has not answered for `daemon.wedged_after_secs`
//!   is wedged and restarted, within a restart budget per window; past the budget it
//!   raises one alert and leaves the component alone. Unit state comes from systemd's
//!   PropertiesChanged signals; a unit systemd gives up on (it failed repeatedly) raises
//!   one alert.
//! - Standalone (standalone-ha topology): only the node the placement record names
//!   runs the Milvus standalone server (the leader writes the record, see
//!   cluster/placement.rs; leadership moving does not move the server). A node the
//!   record newly names starts it only once no Milvus session of another node is left
//!   in etcd: Milvus exits when its session's lease is lost, and that lease is what etcd
//!   just expired, so the old server cannot still be serving. A node the record no
//!   longer names stops its server at once; a node whose daemon has lost etcd for
//!   [`OUT_OF_TOUCH_AFTER`] lets no server of its own start again (it can no longer
//!   learn that the server moved). A restarted daemon adopts the server it finds
//!   running: it neither starts nor stops it until it has read the record.
//! - Self-fence: a daemon that cannot prove its etcd lease still lives (no keepalive
//!   answered for the TTL, plus [`SELF_FENCE_GRACE`]) kills its own server at once, no
//!   graceful stop: from then on the leader may count the node as lost and start a
//!   server elsewhere (it waits longer than that, see cluster/placement.rs), so a node
//!   cut off, or frozen and thawed, never runs its server beside the new one for more
//!   than the kill takes.
//!
//! The loop never waits on a unit job itself (jobs run beside it), so it ticks every
//! second; the daemon's watchdog pings depend on those ticks.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::health::{Health, Probe};
use super::milvus_auth::{ensure_root_password, MilvusAuthError, RootPassword};
use super::reconcile::{
    converge, lb_placement_entry, needs_clean_state, placement_id, standalone_wanted,
    StandaloneWanted, CLEAR_STANDALONE_UNIT, JOB_TIMEOUT,
};
use super::systemd::{ActiveState, Systemd, SystemdError, UnitAction};
use crate::cluster::election::Role;
use crate::cluster::messages::{
    COMPONENT_FAILED, COMPONENT_GAVE_UP, COMPONENT_WEDGED, STANDALONE_STARTED,
};
use crate::cluster::placement::Placement;
use crate::config::Settings;
use crate::render::plan::{Component, NodePlan, LB_PLACEMENT_DIR, LB_PLACEMENT_FILE, RENDERED_DIR};

/// The unit that renders as root (`milvus-fleet apply --render-only`).
pub const RENDER_UNIT: &str = "milvus-fleet-apply.service";
/// A unit still "failed" after this is not waiting for an automatic restart (the units'
/// RestartSec= is 2 s): systemd gave up on it.
const FAILED_FOR_GOOD_AFTER: Duration = Duration::from_secs(5);
/// A daemon that has lost etcd this long stops its standalone server: it cannot learn
/// that the server moved. Longer than the keepalive stalls of an etcd leader election
/// (up to a second), shorter than the Milvus session TTL that lets another node start.
pub const OUT_OF_TOUCH_AFTER: Duration = Duration::from_secs(3);
/// How long past its lease's proven end a daemon waits before it kills its own server:
/// room for an etcd leader election, which stalls keepalives for up to a second while
/// etcd keeps the lease (a new raft leader extends it). The leader waits longer than this
/// plus the kill before it fences (placement.rs `GONE_AFTER`).
pub const SELF_FENCE_GRACE: Duration = Duration::from_millis(500);

/// Proof of life of the supervision loop, read by the daemon's watchdog.
#[derive(Debug, Default)]
pub struct Heartbeat {
    millis: AtomicU64,
    origin: std::sync::OnceLock<Instant>,
    /// Set once the loop supervises (systemd answered on the bus).
    live: std::sync::atomic::AtomicBool,
}

impl Heartbeat {
    /// Whether the watchdog should hear from this daemon: the loop is not supervising
    /// (no systemd to talk to), or it ticked within `limit`.
    pub fn alive_within(&self, limit: Duration) -> bool {
        !self.live.load(Ordering::Relaxed) || self.age() < limit
    }
    fn now(&self) -> u64 {
        self.origin.get_or_init(Instant::now).elapsed().as_millis() as u64
    }
    pub fn beat(&self) {
        self.millis.store(self.now(), Ordering::Relaxed);
    }
    /// How long since the last beat.
    pub fn age(&self) -> Duration {
        Duration::from_millis(
            self.now()
                .saturating_sub(self.millis.load(Ordering::Relaxed)),
        )
    }
}

pub struct Inputs {
    pub settings: watch::Receiver<Settings>,
    pub role: watch::Receiver<Role>,
    /// Until when this daemon's etcd lease surely lives (None: it holds none).
    pub lease_until: watch::Receiver<Option<tokio::time::Instant>>,
    /// The standalone server's placement record (standalone-ha topology).
    pub placement: watch::Receiver<Option<Placement>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub heartbeat: Arc<Heartbeat>,
    /// What supervision is doing, for the daemon's STATUS= line.
    pub status: watch::Sender<String>,
    /// The components' health probes' client (supervise::health::client).
    pub probe_http: reqwest::Client,
    /// Milvus' root password, when this node has one (it runs Milvus).
    pub milvus_root_password: Option<String>,
}

/// Setting Milvus' root password through a server on this node (supervise::milvus_auth).
struct MilvusRoot {
    password: Option<String>,
    /// Confirmed in this daemon's run: nothing more to do.
    done: bool,
    task: Option<JoinHandle<Result<RootPassword, MilvusAuthError>>>,
    next_try: Instant,
}

/// How long after a failed attempt the next one comes (a server still starting).
const MILVUS_ROOT_RETRY: Duration = Duration::from_secs(5);

/// What the supervisor knows of one component.
struct Watched {
    unit: String,
    probe: Option<Probe>,
    active: ActiveState,
    /// When its probe last answered in this activation (None while the unit is not
    /// active): "wedged" counts from the last answer, not from the first missed probe,
    /// which a probe timing out would report seconds late.
    answered_at: Option<Instant>,
    /// The probe in flight, beside the loop (a probe that times out must not hold up the
    /// tick, or the silence would be noticed only at the next probe's end), and when it
    /// was sent: an answer counts from then, so the silence is measured to the tick.
    probing: Option<JoinHandle<(Health, Instant)>>,
    /// Why the last finished probe got no answer.
    silence: String,
    /// Its last finished probe said healthy (in this activation).
    healthy: bool,
    restarts: VecDeque<Instant>,
    gave_up: bool,
    /// Since when the unit has been "failed" (systemd passes through "failed" on every
    /// failure, also right before an automatic restart).
    failed_since: Option<Instant>,
    failed_alerted: bool,
}

/// A unit job running beside the loop.
enum Operation {
    Converge {
        task: JoinHandle<Result<(), String>>,
        /// It renders first (so aborting it leaves a render owed).
        renders: bool,
        /// It may start the standalone server (so losing leadership aborts it).
        starts_standalone: bool,
    },
}

pub async fn run(mut inputs: Inputs) {
    let mut warned = false;
    let systemd = loop {
        match Systemd::system().await {
            Ok(systemd) => break systemd,
            Err(e) => {
                // Outside a systemd host (a developer's daemon) there is nothing to supervise.
                if !warned {
                    warn!("node supervision is off until systemd answers on the system bus: {e}");
                    inputs
                        .status
                        .send_replace("node supervision off: no systemd on the system bus".into());
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    };
    inputs.heartbeat.beat();
    inputs.heartbeat.live.store(true, Ordering::Relaxed);
    info!("node supervision on: following this node's units over D-Bus");
    let mut supervisor = Supervisor {
        systemd,
        watched: BTreeMap::new(),
        operation: None,
        restart: None,
        render_needed: true,
        converge_needed: true,
        next_converge: Instant::now(),
        standalone_blocker: None,
        health_checked_at: None,
        placement: None,
        in_touch: false,
        out_of_touch_since: None,
        stopping: None,
        lease_until: None,
        self_fenced_for: None,
        lb_pointed: None,
        lb_reloading: None,
        status_tx: inputs.status.clone(),
        metrics: inputs.metrics.clone(),
        milvus_root: MilvusRoot {
            password: inputs.milvus_root_password.clone(),
            done: false,
            task: None,
            next_try: Instant::now(),
        },
    };
    let (events_tx, mut events) = mpsc::channel::<(String, ActiveState)>(64);
    let mut followed: BTreeMap<String, JoinHandle<()>> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let probe_client = inputs.probe_http.clone();
    loop {
        // The moment this daemon's lease may have ended (plus the grace), once per lease
        // end: the kill happens there, not on the next tick.
        let fence_at = supervisor
            .lease_until
            .filter(|until| supervisor.self_fenced_for != Some(*until))
            .map(|until| until + SELF_FENCE_GRACE);
        tokio::select! {
            _ = tokio::time::sleep_until(fence_at.unwrap_or_else(Instant::now).into()), if fence_at.is_some() => {
                supervisor.self_fenced_for = supervisor.lease_until;
                let settings = inputs.settings.borrow().clone();
                supervisor.fence_if_lapsed(&settings).await;
            }
            Ok(()) = inputs.lease_until.changed() => {
                supervisor.lease_until = inputs.lease_until.borrow().map(|i| i.into_std());
            }
            _ = tick.tick() => {
                inputs.heartbeat.beat();
                let settings = inputs.settings.borrow().clone();
                supervisor.track(&settings, &events_tx, &mut followed).await;
                supervisor.finish_operation().await;
                if supervisor.operation.is_none() && supervisor.restart.is_none() {
                    supervisor.maybe_converge(&settings).await;
                }
                supervisor.check_health(&settings, &probe_client).await;
                supervisor
                    .ensure_milvus_root(settings.config.milvus.proxy_port)
                    .await;
                supervisor.alert_failed_units();
                supervisor.fence_if_lapsed(&settings).await;
                supervisor.fence_while_out_of_touch(&settings).await;
                supervisor.point_load_balancer(&settings).await;
            }
            Ok(()) = inputs.settings.changed() => {
                supervisor.render_needed = true;
                supervisor.converge_needed = true;
                supervisor.next_converge = Instant::now();
            }
            Ok(()) = inputs.role.changed() => {
                // Only losing etcd matters here (the leadership does not place the
                // server): a daemon that was in touch and now is not.
                let role = inputs.role.borrow().clone();
                if role == Role::Unknown {
                    if supervisor.in_touch {
                        supervisor.out_of_touch_since.get_or_insert_with(Instant::now);
                    }
                } else {
                    supervisor.in_touch = true;
                    supervisor.out_of_touch_since = None;
                }
                supervisor.converge_needed = true;
                supervisor.next_converge = Instant::now();
            }
            Ok(()) = inputs.placement.changed() => {
                let placement = inputs.placement.borrow().clone();
                let settings = inputs.settings.borrow().clone();
                supervisor.placement = placement.clone();
                if let Some(p) = placement.filter(|p| p.node != settings.node_name) {
                    let how = supervisor.how_to_stop_placed_elsewhere(&settings).await;
                    supervisor.stop_standalone(&settings, &format!("the server is placed on {} ({})", p.node, p.reason), how).await;
                }
                supervisor.converge_needed = true;
                supervisor.next_converge = Instant::now();
                // A server placed here starts now, not on the next tick: every second
                // here is a second of failed searches.
                if supervisor.operation.is_none() && supervisor.restart.is_none() {
                    supervisor.maybe_converge(&settings).await;
                } else if supervisor.placement.as_ref().is_some_and(|p| p.node == settings.node_name) {
                    info!(
                        "the standalone server is placed on this node: starting it once the {} in progress ends",
                        if supervisor.restart.is_some() { "wedged component's restart" } else { "converge" }
                    );
                }
                supervisor.point_load_balancer(&settings).await;
            }
            Some((unit, active)) = events.recv() => supervisor.unit_changed(&unit, active),
        }
    }
}

/// The hosts with a live Milvus session, through a fresh client of the members that
/// answer now (a client made earlier may still send requests to a lost host's member),
/// bounded: these reads decide a start or a kill, and must not hang.
async fn read_serving_now(
    settings: &Settings,
) -> Result<std::collections::BTreeSet<String>, String> {
    let read = tokio::time::timeout(Duration::from_secs(2), async {
        let mut client = crate::cluster::connect(&settings.config).await?;
        crate::cluster::placement::read_serving(&mut client).await
    })
    .await;
    match read {
        Ok(Ok(serving)) => Ok(serving),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Where this daemon keeps the placement its node's standalone server last ran under.
fn last_ran_under_file() -> std::path::PathBuf {
    crate::host::state_dir().join("standalone-ran-under")
}

/// Records the placement the server runs under here. Without the record, the next start
/// here would clear the server's own log, so a start does not go on without it.
fn record_ran_under(id: &str) -> Result<(), String> {
    let path = last_ran_under_file();
    crate::host::write_file(&path, id.as_bytes(), 0o600, None).map_err(|e| {
        format!(
            "recording the standalone server's placement in {}: {e:#}",
            path.display()
        )
    })
}

/// Whether a daemon whose lease surely lived until `until` (None: it holds none) must
/// have killed its own standalone server by `now`.
fn self_fence_due(until: Option<Instant>, now: Instant) -> bool {
    until.is_some_and(|until| now >= until + SELF_FENCE_GRACE)
}

/// How the standalone server is stopped here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopHow {
    /// `systemctl stop`: Milvus ends its sessions and flushes (it is placed elsewhere, or
    /// this node leaves, while it still holds its sessions).
    Graceful,
    /// Killed at once: its node may already count as lost, so a server may run elsewhere.
    Kill,
}

/// A gap this long between two health checks (run every tick) means the daemon was
/// stalled with its host.
const HEALTH_CHECK_STALLED: Duration = Duration::from_secs(3);

struct Supervisor {
    systemd: Systemd,
    watched: BTreeMap<Component, Watched>,
    operation: Option<Operation>,
    /// A wedged component's restart. Apart from `operation`: a converge can wait on the
    /// wedged component itself (a server's stop that needs the frozen etcd), and the
    /// restart must not wait for it.
    restart: Option<(Component, JoinHandle<Result<(), SystemdError>>)>,
    render_needed: bool,
    converge_needed: bool,
    next_converge: Instant,
    /// Why the standalone server is not started here yet (the old one's session).
    standalone_blocker: Option<String>,
    /// When the health check last ran (see [`HEALTH_CHECK_STALLED`]).
    health_checked_at: Option<Instant>,
    /// The placement record as last read.
    placement: Option<Placement>,
    /// This daemon has been in touch with etcd since it started.
    in_touch: bool,
    /// Since when it has not been (it was before).
    out_of_touch_since: Option<Instant>,
    /// A stop of the standalone server in flight (beside the loop), and how.
    stopping: Option<(StopHow, JoinHandle<()>)>,
    /// Until when this daemon's etcd lease surely lives (None: it holds none).
    lease_until: Option<Instant>,
    /// The lease end the self-fence last acted on.
    self_fenced_for: Option<Instant>,
    /// The load balancer's placement line it was last reloaded with (`None`: not yet).
    lb_pointed: Option<String>,
    /// A reload of the load balancer in flight, for that line.
    lb_reloading: Option<(String, JoinHandle<bool>)>,
    status_tx: watch::Sender<String>,
    metrics: Arc<crate::metrics::Metrics>,
    milvus_root: MilvusRoot,
}

impl Supervisor {
    /// Once a Milvus server on this node answers its probe, makes the cluster's root
    /// password Milvus' (one attempt at a time, beside the loop; again after a failure).
    async fn ensure_milvus_root(&mut self, proxy_port: u16) {
        let root = &mut self.milvus_root;
        if root.done {
            return;
        }
        let Some(password) = root.password.clone() else {
            return;
        };
        if let Some(finished) = root.task.take_if(|t| t.is_finished()) {
            match finished.await {
                Ok(Ok(RootPassword::AlreadySet)) => {
                    info!("Milvus' root password is the cluster's");
                    root.done = true;
                }
                Ok(Ok(RootPassword::Changed)) => {
                    info!("Milvus' root password changed from its first one to the cluster's");
                    root.done = true;
                }
                Ok(Err(e)) => warn!("Milvus' root password: {e}; trying again"),
                Err(e) => warn!("Milvus' root password: the attempt failed: {e}"),
            }
            return;
        }
        let serving = self.watched.iter().any(|(component, watched)| {
            component.spec().serves_clients
                && watched.active == ActiveState::Active
                && watched.healthy
        });
        let now = Instant::now();
        if root.task.is_none() && serving && now >= root.next_try {
            root.next_try = now + MILVUS_ROOT_RETRY;
            let endpoint = format!("http://127.0.0.1:{proxy_port}");
            root.task = Some(tokio::spawn(async move {
                ensure_root_password(&endpoint, &password).await
            }));
        }
    }

    fn status(&self, line: &str) {
        self.status_tx.send_replace(line.to_owned());
    }

    /// Keeps the set of watched components equal to the plan's, following each unit's
    /// ActiveState through PropertiesChanged signals.
    async fn track(
        &mut self,
        settings: &Settings,
        events: &mpsc::Sender<(String, ActiveState)>,
        followed: &mut BTreeMap<String, JoinHandle<()>>,
    ) {
        let plan = NodePlan::for_node(&settings.config, &settings.node_name);
        let components = plan
            .as_ref()
            .map(|p| p.components.clone())
            .unwrap_or_default();
        self.watched.retain(|c, _| components.contains(c));
        for component in components {
            let unit = component.unit_name();
            if !followed.contains_key(&unit) {
                followed.insert(unit.clone(), self.follow(unit.clone(), events.clone()));
            }
            let probe = plan.as_ref().and_then(|p| {
                p.component_view(component, settings.config.milvus.metrics_port)
                    .probe
                    .parse()
                    .ok()
            });
            let watched = self.watched.entry(component).or_insert_with(|| Watched {
                unit: unit.clone(),
                probe: None,
                active: ActiveState::Inactive,
                answered_at: None,
                probing: None,
                silence: String::new(),
                healthy: false,
                restarts: VecDeque::new(),
                gave_up: false,
                failed_since: None,
                failed_alerted: false,
            });
            watched.probe = probe;
        }
        followed.retain(|unit, task| {
            let keep = self.watched.values().any(|w| &w.unit == unit);
            if !keep {
                task.abort();
            }
            keep
        });
    }

    /// A task that forwards the unit's ActiveState (now, then on every change).
    fn follow(&self, unit: String, events: mpsc::Sender<(String, ActiveState)>) -> JoinHandle<()> {
        let systemd = self.systemd.clone();
        tokio::spawn(async move {
            let Ok(proxy) = systemd.unit(&unit).await else {
                return;
            };
            let mut changes = proxy.receive_active_state_changed().await;
            if let Ok(active) = proxy.active_state().await {
                let _ = events
                    .send((unit.clone(), ActiveState::named(&active)))
                    .await;
            }
            while let Some(change) = changes.next().await {
                if let Ok(active) = change.get().await {
                    if events
                        .send((unit.clone(), ActiveState::named(&active)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        })
    }

    fn unit_changed(&mut self, unit: &str, active: ActiveState) {
        let Some(watched) = self.watched.values_mut().find(|w| w.unit == unit) else {
            return;
        };
        if watched.active != active {
            info!(unit, state = active.as_str(), "{unit}: {active}");
        }
        watched.active = active;
        match active {
            ActiveState::Failed => {
                watched.failed_since.get_or_insert_with(Instant::now);
            }
            ActiveState::Active => {
                watched.failed_since = None;
                watched.failed_alerted = false;
            }
            _ => watched.failed_since = None,
        }
    }

    /// One alert for a unit that stayed "failed" longer than systemd's restart delay:
    /// systemd gave up on it (start limit) and only an operator brings it back.
    fn alert_failed_units(&mut self) {
        let now = Instant::now();
        for (component, watched) in self.watched.iter_mut() {
            let failed_for_good = watched
                .failed_since
                .is_some_and(|since| now - since >= FAILED_FOR_GOOD_AFTER);
            if !failed_for_good || watched.failed_alerted {
                continue;
            }
            watched.failed_alerted = true;
            self.metrics
                .component_alerts
                .fetch_add(1, Ordering::Relaxed);
            let systemd = self.systemd.clone();
            let (unit, name) = (watched.unit.clone(), component.name());
            tokio::spawn(async move {
                let result = systemd
                    .state(&unit)
                    .await
                    .map(|s| s.result)
                    .unwrap_or_default();
                error!(
                    message_id = COMPONENT_FAILED,
                    component = name,
                    unit = %unit,
                    result = %result,
                    "{unit} failed ({result}) and systemd stopped restarting it: see `journalctl -u {unit}`; `systemctl reset-failed {unit}` arms it again"
                );
            });
        }
    }

    /// Collects a finished operation's (and restart's) outcome.
    async fn finish_operation(&mut self) {
        if self
            .restart
            .as_ref()
            .is_some_and(|(_, task)| task.is_finished())
        {
            if let Some((component, task)) = self.restart.take() {
                match task.await {
                    Ok(Ok(())) => {
                        info!(component = component.name(), "restarted and healthy again")
                    }
                    Ok(Err(e)) => error!(component = component.name(), "restart: {e}"),
                    Err(e) => warn!("restart task: {e}"),
                }
            }
        }
        let finished = match &self.operation {
            Some(Operation::Converge { task, .. }) => task.is_finished(),
            None => false,
        };
        if !finished {
            return;
        }
        match self.operation.take() {
            Some(Operation::Converge { task, .. }) => match task.await {
                Ok(Ok(())) => {
                    // Keep a request that came while this converge ran (the role or the
                    // settings changed): it planned with what it knew when it began.
                    self.converge_needed |= self.standalone_blocker.is_some();
                    self.next_converge = Instant::now() + Duration::from_secs(1);
                }
                Ok(Err(e)) => {
                    error!("bringing this node's units up: {e}");
                    self.status(&format!("units: {e}"));
                    self.converge_needed = true;
                    self.next_converge = Instant::now() + Duration::from_secs(10);
                }
                Err(e) => warn!("converge task: {e}"),
            },
            None => {}
        }
    }

    /// Renders (root, through the apply unit) and converges, when something changed.
    async fn maybe_converge(&mut self, settings: &Settings) {
        if !self.converge_needed || Instant::now() < self.next_converge {
            return;
        }
        self.converge_needed = false;
        let Some(plan) = NodePlan::for_node(&settings.config, &settings.node_name) else {
            // Not (or no longer) in the cluster: root's apply stops what ran here.
            if self.render_needed && !settings.config.nodes.is_empty() {
                self.render_needed = false;
                let systemd = self.systemd.clone();
                self.operation = Some(Operation::Converge {
                    task: tokio::spawn(async move {
                        systemd
                            .run(UnitAction::Start, RENDER_UNIT, JOB_TIMEOUT)
                            .await
                            .map_err(|e| e.to_string())
                    }),
                    renders: true,
                    starts_standalone: false,
                });
            }
            return;
        };
        // A lapsed lease counts too: the server was killed for it and must not come back
        // before the lease is proven again.
        let out_of_touch = self
            .out_of_touch_since
            .is_some_and(|t| t.elapsed() >= OUT_OF_TOUCH_AFTER)
            || self.lease_lapsed();
        let placed_on = self.placement.as_ref().map(|p| p.node.as_str());
        // Set when the server starts here under a placement it did not run under before:
        // the converge clears the node-local state first, then records the placement.
        let mut clean_first = None;
        let standalone = if !plan.components.contains(&Component::Standalone) {
            StandaloneWanted::Leave
        } else {
            match standalone_wanted(placed_on, &settings.node_name, out_of_touch) {
                StandaloneWanted::Run => {
                    let unit = Component::Standalone.unit_name();
                    let running = self
                        .systemd
                        .state(&unit)
                        .await
                        .is_ok_and(|s| s.is_running());
                    if running {
                        self.standalone_blocker = None;
                        // Adopted (a restarted or upgraded daemon): its log is its own.
                        if let Some(id) = self.placement.as_ref().map(placement_id) {
                            let last = std::fs::read_to_string(last_ran_under_file()).ok();
                            if needs_clean_state(last.as_deref(), &id) {
                                if let Err(e) = record_ran_under(&id) {
                                    error!("{e}");
                                }
                            }
                        }
                        StandaloneWanted::Run
                    } else {
                        match self.standalone_blocker(settings).await {
                            None => {
                                let waited = self.standalone_blocker.take().is_some();
                                if let Some(id) = self.placement.as_ref().map(placement_id) {
                                    let last = std::fs::read_to_string(last_ran_under_file()).ok();
                                    if needs_clean_state(last.as_deref(), &id) {
                                        clean_first = Some(id);
                                    }
                                }
                                let (term, reason) = self
                                    .placement
                                    .as_ref()
                                    .map(|p| (p.term, p.reason.clone()))
                                    .unwrap_or_default();
                                info!(
                                    message_id = STANDALONE_STARTED,
                                    term,
                                    waited,
                                    "the standalone server is placed on this node (term {term}: {reason}) and no other node's Milvus session is alive: starting it here"
                                );
                                StandaloneWanted::Run
                            }
                            Some(why) => {
                                if self.standalone_blocker.as_deref() != Some(why.as_str()) {
                                    info!("standalone server: waiting: {why}");
                                }
                                self.status(&format!("standalone server: waiting: {why}"));
                                self.standalone_blocker = Some(why);
                                // Check again shortly; the rest of the node converges meanwhile.
                                self.converge_needed = true;
                                self.next_converge = Instant::now() + Duration::from_millis(500);
                                StandaloneWanted::Leave
                            }
                        }
                    }
                }
                wanted => {
                    self.standalone_blocker = None;
                    wanted
                }
            }
        };
        let render = std::mem::take(&mut self.render_needed);
        let systemd = self.systemd.clone();
        let status = self.status_tx.clone();
        let task = tokio::spawn(async move {
            if render {
                status.send_replace(format!("rendering: {RENDER_UNIT}"));
                systemd
                    .run(UnitAction::Start, RENDER_UNIT, JOB_TIMEOUT)
                    .await
                    .map_err(|e| format!("rendering as root failed: {e}"))?;
            }
            if let Some(id) = clean_first {
                status.send_replace(format!(
                    "clearing the standalone server's local state: {CLEAR_STANDALONE_UNIT}"
                ));
                systemd
                    .run(UnitAction::Start, CLEAR_STANDALONE_UNIT, JOB_TIMEOUT)
                    .await
                    .map_err(|e| format!("the standalone server does not start here: clearing its local state failed: {e}"))?;
                info!("cleared the standalone server's local state: it last ran elsewhere");
                record_ran_under(&id)?;
            }
            let manifest = crate::render::output::read_manifest(std::path::Path::new(RENDERED_DIR))
                .ok_or_else(|| format!("no rendered manifest in {RENDERED_DIR}"))?;
            if plan
                .components
                .iter()
                .any(|c| !manifest.components.contains_key(c.name()))
            {
                return Err(format!(
                    "the render in {RENDERED_DIR} does not match this configuration (see `journalctl -u {RENDER_UNIT}`)"
                ));
            }
            let report = converge(&systemd, &plan, &manifest, standalone, &|step| {
                status.send_replace(format!("units: {step}"));
            })
            .await
            .map_err(|e| e.to_string())?;
            let changed = report.started.len()
                + report.restarted.len()
                + report.reloaded.len()
                + report.stopped.len();
            if changed > 0 {
                info!(
                    started = ?report.started,
                    restarted = ?report.restarted,
                    reloaded = ?report.reloaded,
                    stopped = ?report.stopped,
                    "units converged"
                );
            }
            let mut line = format!("units: {} up to date", plan.components.len());
            if !report.failed.is_empty() {
                line = format!("units: failed, left alone: {}", report.failed.join(" "));
            }
            status.send_replace(line);
            Ok(())
        });
        self.operation = Some(Operation::Converge {
            task,
            renders: render,
            starts_standalone: standalone == StandaloneWanted::Run,
        });
    }

    /// Why the standalone server must not start here yet: a live Milvus session of
    /// another node in etcd. None when it may start.
    async fn standalone_blocker(&mut self, settings: &Settings) -> Option<String> {
        // A fresh client of the members that answer now: this check runs when the server
        // is about to start here, typically because its host was just lost, and a client
        // made earlier would still send every other request to that host's member.
        let serving = match read_serving_now(settings).await {
            Ok(serving) => serving,
            Err(e) => return Some(format!("cannot read Milvus sessions from etcd: {e}")),
        };
        let me = settings.local_node().map(|n| n.address.clone())?;
        serving
            .into_iter()
            .find(|host| *host != me)
            .map(|host| format!("a Milvus session of {host} is still alive (ends with its lease)"))
    }

    /// Whether this daemon's lease may have ended [`SELF_FENCE_GRACE`] ago or more.
    fn lease_lapsed(&self) -> bool {
        self_fence_due(self.lease_until, Instant::now())
    }

    /// Kills the standalone server here when this daemon's lease may have ended (see
    /// the module's "Self-fence"). Also from the tick: a server that systemd restarted
    /// meanwhile goes too.
    async fn fence_if_lapsed(&mut self, settings: &Settings) {
        if !self.lease_lapsed() {
            return;
        }
        let killing = self
            .stopping
            .as_ref()
            .is_some_and(|(how, task)| *how == StopHow::Kill && !task.is_finished());
        if killing {
            return;
        }
        self.stop_standalone(
            settings,
            "this daemon cannot prove that its etcd lease lives: the leader may start the server elsewhere",
            StopHow::Kill,
        )
        .await;
    }

    /// How a server placed elsewhere goes: gracefully while it holds its Milvus sessions
    /// (a planned move: it ends them itself); killed when they are gone, as after the
    /// leader fenced a lost node that is back (a thawed one whose daemon was restarted by
    /// its watchdog, so no self-fence ran): such a server must not run on for the
    /// seconds a graceful stop takes.
    async fn how_to_stop_placed_elsewhere(&self, settings: &Settings) -> StopHow {
        let unit = Component::Standalone.unit_name();
        if !self
            .systemd
            .state(&unit)
            .await
            .is_ok_and(|s| s.is_running())
        {
            return StopHow::Graceful;
        }
        let me = settings.local_node().map(|n| n.address.clone());
        match (read_serving_now(settings).await, me) {
            (Ok(serving), Some(me)) if !serving.contains(&me) => StopHow::Kill,
            _ => StopHow::Graceful,
        }
    }

    /// Stops the standalone server here at once (it is placed elsewhere, or this daemon
    /// lost etcd), saying `why`: gracefully, or killed when it may run elsewhere already.
    async fn stop_standalone(&mut self, settings: &Settings, why: &str, how: StopHow) {
        let runs_here = NodePlan::for_node(&settings.config, &settings.node_name)
            .is_some_and(|p| p.components.contains(&Component::Standalone));
        if !runs_here {
            return;
        }
        if let Some(Operation::Converge {
            task,
            renders,
            starts_standalone: true,
        }) = &self.operation
        {
            // A converge that may be starting the server must not finish it; the next
            // one (the role change asks for it) renders if this one was to.
            task.abort();
            self.render_needed |= *renders;
            self.operation = None;
        }
        let unit = Component::Standalone.unit_name();
        match self.systemd.state(&unit).await {
            Ok(state) if state.is_running() => {
                if how == StopHow::Kill {
                    warn!(
                        message_id = crate::cluster::messages::STANDALONE_SELF_FENCED,
                        "killing the standalone server here: {why}"
                    );
                } else {
                    warn!("stopping the standalone server here: {why}");
                }
                // Beside the loop: a server that cannot reach etcd takes its whole stop
                // timeout to go, and the loop (whose ticks feed the watchdog) must not wait.
                let systemd = self.systemd.clone();
                let task = tokio::spawn(async move {
                    if how == StopHow::Kill {
                        // The unit's follower (its main process, root) kills the
                        // container within its 0.1 s poll, also while the stop job below
                        // runs; the stop then finds it gone and cannot restart it.
                        match systemd.main_pid(&unit).await {
                            Ok(Some(follower)) => {
                                if let Err(e) = super::lease_proof::request_kill(follower) {
                                    error!("asking {unit} to kill its container: {e:#}");
                                }
                            }
                            Ok(None) => {}
                            Err(e) => error!("asking {unit} to kill its container: {e}"),
                        }
                    }
                    if let Err(e) = systemd.run(UnitAction::Stop, &unit, JOB_TIMEOUT).await {
                        error!("stopping {unit}: {e}");
                    }
                });
                self.stopping = Some((how, task));
            }
            Ok(_) => {}
            Err(e) => error!("{unit}: {e}"),
        }
    }

    /// Points this node's load balancer at the node the standalone server is placed on
    /// (standalone-ha): writes the placement file its nginx includes and reloads it when
    /// the line changed. Until this daemon has read a placement it leaves the file as it
    /// is (a restarted daemon must not undo what the load balancer uses). The reload runs
    /// beside the loop; a failed write or reload is tried again on the next tick.
    async fn point_load_balancer(&mut self, settings: &Settings) {
        if let Some((_, task)) = &self.lb_reloading {
            if !task.is_finished() {
                return;
            }
            if let Some((line, task)) = self.lb_reloading.take() {
                if task.await.unwrap_or(false) {
                    self.lb_pointed = Some(line);
                }
            }
        }
        let Some(plan) = NodePlan::for_node(&settings.config, &settings.node_name) else {
            return;
        };
        if !plan.components.contains(&Component::Lb) || plan.lb.placed_upstreams.is_empty() {
            return;
        }
        let Some(wanted) =
            lb_placement_entry(&plan, self.placement.as_ref().map(|p| p.node.as_str()))
        else {
            return;
        };
        if self.lb_pointed.as_deref() == Some(wanted.as_str()) {
            return;
        }
        let path = std::path::Path::new(LB_PLACEMENT_DIR).join(LB_PLACEMENT_FILE);
        let on_disk = std::fs::read_to_string(&path).ok();
        if on_disk.as_deref() != Some(wanted.as_str()) {
            if let Err(e) = crate::host::write_file(&path, wanted.as_bytes(), 0o640, None) {
                error!("pointing the load balancer at the standalone server: {e:#}");
                return;
            }
            info!("load balancer: clients go to {}", wanted.trim());
        }
        // A load balancer that is not running reads the file when it starts; one that runs
        // is reloaded once per line (also once after this daemon starts: it cannot know
        // what a load balancer started before it read).
        let running = self
            .watched
            .get(&Component::Lb)
            .is_some_and(|w| w.active == ActiveState::Active);
        if !running {
            return;
        }
        let systemd = self.systemd.clone();
        let unit = Component::Lb.unit_name();
        self.lb_reloading = Some((
            wanted,
            tokio::spawn(async move {
                match systemd
                    .run(UnitAction::Reload, &unit, Duration::from_secs(30))
                    .await
                {
                    Ok(()) => true,
                    Err(e) => {
                        error!("reloading {unit}: {e}");
                        false
                    }
                }
            }),
        ));
    }

    /// Keeps the standalone server from coming back while this daemon has lost etcd for
    /// [`OUT_OF_TOUCH_AFTER`]: systemd restarts a server that exits on its own (Milvus
    /// does when its session is lost), and such a server, on a node cut off and healed,
    /// would register beside its successor. A server that runs is left alone: its own
    /// session fences it, and a daemon's etcd trouble (a healed member rejoining, seen in
    /// the client_view bench) must not stop a healthy server.
    async fn fence_while_out_of_touch(&mut self, settings: &Settings) {
        let out_of_touch = self
            .out_of_touch_since
            .is_some_and(|t| t.elapsed() >= OUT_OF_TOUCH_AFTER);
        let stop_in_flight = self
            .stopping
            .as_ref()
            .is_some_and(|(_, t)| !t.is_finished());
        let running = self
            .watched
            .get(&Component::Standalone)
            .is_some_and(|w| w.active == ActiveState::Activating);
        if out_of_touch && running && !stop_in_flight {
            self.stop_standalone(
                settings,
                "this daemon has lost etcd: it cannot learn whether the server moved",
                StopHow::Graceful,
            )
            .await;
        }
    }

    /// Probes every running component, one probe at a time each, beside the loop;
    /// restarts one that has not answered for `wedged_after_secs`, within its budget.
    async fn check_health(&mut self, settings: &Settings, client: &reqwest::Client) {
        let daemon = &settings.config.daemon;
        let wedged_after = Duration::from_secs(daemon.wedged_after_secs.into());
        let window = Duration::from_secs(daemon.restart_window_secs.into());
        let now = Instant::now();
        // The daemon itself did not run (its host was frozen or stopped, and the
        // components with it): their silence in that time proves nothing, and a thawed
        // etcd must not be restarted for it. Count afresh.
        if self
            .health_checked_at
            .is_some_and(|at| now - at >= HEALTH_CHECK_STALLED)
        {
            for watched in self.watched.values_mut() {
                watched.answered_at = None;
            }
        }
        self.health_checked_at = Some(now);
        let mut silent = Vec::new();
        for (component, watched) in &mut self.watched {
            let Some(probe) = watched
                .probe
                .clone()
                .filter(|_| watched.active == ActiveState::Active)
            else {
                // Not running: a restarted unit starts counting afresh.
                watched.answered_at = None;
                watched.healthy = false;
                if let Some(probing) = watched.probing.take() {
                    probing.abort();
                }
                continue;
            };
            if let Some(finished) = watched.probing.take_if(|p| p.is_finished()) {
                if let Ok((health, at)) = finished.await {
                    watched.healthy = health == Health::Healthy;
                    match health {
                        Health::NoAnswer(why) => watched.silence = why,
                        // Answering: alive, even if not yet healthy (etcd without quorum).
                        Health::Healthy | Health::Unhealthy(_) => {
                            watched.answered_at = Some(at);
                            watched.silence.clear();
                        }
                    }
                }
            }
            // Not answered yet in this activation: silent since now.
            let since = *watched.answered_at.get_or_insert(now);
            if watched.probing.is_none() {
                let client = client.clone();
                watched.probing = Some(tokio::spawn(async move {
                    let sent = Instant::now();
                    (probe.check(&client).await, sent)
                }));
            }
            if now - since >= wedged_after {
                silent.push((*component, since));
            }
        }
        for (component, since) in silent {
            if self.restart.is_some() {
                break;
            }
            let Some(watched) = self.watched.get_mut(&component) else {
                continue;
            };
            let why = match watched.silence.as_str() {
                "" => "no answer".to_owned(),
                why => why.to_owned(),
            };
            watched.restarts.retain(|t| now - *t < window);
            if watched.restarts.len() >= daemon.restart_budget as usize {
                if !watched.gave_up {
                    watched.gave_up = true;
                    self.metrics
                        .component_alerts
                        .fetch_add(1, Ordering::Relaxed);
                    error!(
                        message_id = COMPONENT_GAVE_UP,
                        component = component.name(),
                        unit = %watched.unit,
                        "{} is wedged again ({why}) after {} restarts in {:?}: leaving it alone, it needs an operator",
                        watched.unit,
                        watched.restarts.len(),
                        window
                    );
                }
                continue;
            }
            watched.gave_up = false;
            watched.restarts.push_back(now);
            watched.answered_at = None;
            self.metrics.wedged_restarts.fetch_add(1, Ordering::Relaxed);
            warn!(
                message_id = COMPONENT_WEDGED,
                component = component.name(),
                unit = %watched.unit,
                reason = %why,
                "{} is wedged: no answer from its health probe for {:?} ({why}); restarting it",
                watched.unit,
                now - since
            );
            let systemd = self.systemd.clone();
            let unit = watched.unit.clone();
            self.restart = Some((
                component,
                tokio::spawn(async move {
                    systemd
                        .run(UnitAction::RestartAlone, &unit, JOB_TIMEOUT)
                        .await
                }),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_killed_once_its_node_cannot_prove_its_lease_for_the_grace() {
        let now = Instant::now();
        let proven = now - Duration::from_secs(1);
        // No lease held (a daemon starting, or out of the cluster): nothing to prove.
        assert!(!self_fence_due(None, now));
        // The lease ended a moment ago: etcd may be electing a leader.
        assert!(!self_fence_due(Some(now - SELF_FENCE_GRACE / 2), now));
        assert!(!self_fence_due(Some(now + Duration::from_secs(1)), now));
        // Past the grace: the leader may count the node as lost.
        assert!(self_fence_due(Some(proven), now));
        assert!(self_fence_due(Some(now - SELF_FENCE_GRACE), now));
    }

    #[test]
    fn the_self_fence_comes_before_the_leader_may_fence() {
        // The leader waits GONE_AFTER after the registration (which lives no shorter
        // than the proven lease) is gone; the kill must fit well inside it.
        assert!(SELF_FENCE_GRACE * 2 <= crate::cluster::placement::GONE_AFTER);
    }
}
