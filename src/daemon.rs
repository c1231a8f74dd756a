//! The node daemon: what `milvus-fleet.service` runs.
//!
//! For now it loads and watches its configuration, tells systemd when it is ready,
//! proves its main loop is alive with watchdog pings, reloads on SIGHUP (keeping the
//! running configuration when the new one is invalid) and stops cleanly on SIGTERM.
//! Later the cluster loops (election, jobs, API, supervision) hang off this loop.

use std::time::Duration;

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::cluster::election::{Election, Role};
use crate::config::{ConfigPaths, Settings};
use crate::host::state_dir;
use crate::membership::store::MembershipStore;

pub fn run(paths: ConfigPaths) -> anyhow::Result<()> {
    // One thread is plenty for a control loop and keeps the daemon's footprint small.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(main_loop(paths))
}

async fn main_loop(paths: ConfigPaths) -> anyhow::Result<()> {
    let mut settings = Settings::load(&paths)?;
    crate::logging::init(settings.config.daemon.log_level.as_str());
    crate::cluster::probe_members_at(&settings.config);
    info!(
        fingerprint = %settings.fingerprint(),
        files = settings.sources.len(),
        "configuration loaded"
    );

    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    // Ping at half the interval systemd expects; pings come from this loop only, so a
    // wedged loop stops them and systemd restarts us.
    let watchdog = sd_notify::watchdog_enabled();
    let mut watchdog_tick =
        tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |d| d / 2));

    // The cluster loops (election, jobs, configuration sync) run beside this loop while
    // this node is in the cluster; they are told to stop, and waited for, at SIGTERM or
    // when the node is removed.
    let (role_tx, mut role) = tokio::sync::watch::channel(Role::Unknown);
    let (lease_until_tx, lease_until_rx) = tokio::sync::watch::channel(None);
    let (jobs_tx, jobs_rx) = tokio::sync::watch::channel(None);
    let (members_tx, members_rx) = tokio::sync::watch::channel(None);
    let (admission_tx, admission_rx) = tokio::sync::watch::channel(Default::default());
    let (nodes_tx, nodes_rx) = tokio::sync::watch::channel(node_names(&settings));
    let (leaders_tx, leaders_rx) = tokio::sync::watch::channel(may_lead(&settings));
    // The etcd members change as storage nodes join and leave: the long-lived clients
    // follow this list rather than the one they started with.
    let (etcd_urls_tx, etcd_urls_rx) =
        tokio::sync::watch::channel(settings.config.etcd_client_urls());
    let (config_changed_tx, mut config_changed) = tokio::sync::mpsc::channel::<()>(4);
    let (candidates_tx, candidates_rx) =
        tokio::sync::watch::channel(standalone_candidates(&settings));
    let (placement_tx, placement_rx) = tokio::sync::watch::channel(None);
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
    // One plain HTTP client for the components' probes and the leader's look at a
    // server's health endpoint (a client holds ~1.8 MB; each call bounds its own wait).
    let plain_http = crate::supervise::health::client()?;
    let channels = ClusterChannels {
        role: role_tx,
        lease_until: lease_until_tx,
        jobs: jobs_tx,
        members: members_tx,
        admission: admission_tx,
        config_changed: config_changed_tx,
        nodes: nodes_rx.clone(),
        may_lead: leaders_rx,
        etcd_urls: etcd_urls_rx,
        standalone_candidates: candidates_rx,
        placement: placement_tx,
        metrics: metrics.clone(),
        health_http: plain_http.clone(),
    };
    let mut cluster = ClusterLoops::default();
    cluster.follow(&settings, &channels).await;

    // Node supervision beside the main loop: it follows the settings and the role.
    let (settings_tx, settings_rx) = tokio::sync::watch::channel(settings.clone());
    let (supervision_tx, mut supervision) = tokio::sync::watch::channel(String::new());
    let heartbeat = std::sync::Arc::new(crate::supervise::node::Heartbeat::default());
    // The standalone server's follower kills it when this daemon cannot prove its lease.
    let lease_proof = tokio::spawn(crate::supervise::lease_proof::publish(
        lease_until_rx.clone(),
    ));
    let supervisor = tokio::spawn(crate::supervise::node::run(
        crate::supervise::node::Inputs {
            settings: settings_rx,
            role: role.clone(),
            lease_until: lease_until_rx.clone(),
            placement: placement_rx,
            metrics: metrics.clone(),
            heartbeat: heartbeat.clone(),
            status: supervision_tx,
            probe_http: plain_http,
            milvus_root_password: milvus_root_password(),
        },
    ));
    let pki_dir = state_dir().join("pki");
    let api = crate::api::ApiState {
        node: settings.node_name.clone(),
        cluster: settings.config.cluster.name.clone(),
        nodes: nodes_rx,
        lease_ttl_secs: settings.config.daemon.lease_ttl_secs,
        role: role.clone(),
        jobs: jobs_rx,
        members: members_rx,
        pki_dir: pki_dir.clone(),
        credentials_file: credentials_file(&settings),
        milvus_root_password: milvus_root_password(),
        metrics: metrics.clone(),
        started: std::time::Instant::now(),
        join_limit: crate::api::limits::join_bucket(),
    };
    // Listeners are bound before READY, so a started daemon answers at once.
    let _listeners = listen(&settings, crate::api::routers(api), admission_rx).await?;

    let status = status_line(&settings, &role.borrow(), &supervision.borrow());
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    info!(message_id = crate::cluster::messages::DAEMON_READY, node = %settings.node_name, "ready");

    loop {
        tokio::select! {
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                // No ping while the supervision loop is stuck: systemd then restarts us.
                let limit = watchdog.map_or(Duration::from_secs(5), |d| d / 2);
                if heartbeat.alive_within(limit) {
                    notify(&[NotifyState::Watchdog]);
                } else {
                    error!("the supervision loop has not ticked for {:?}: withholding the watchdog ping", heartbeat.age());
                }
            }
            Ok(()) = supervision.changed() => {
                let status = status_line(&settings, &role.borrow(), &supervision.borrow());
                notify(&[NotifyState::Status(&status)]);
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                let current = role.borrow().clone();
                reload(&paths, &mut settings, &current);
                nodes_tx.send_replace(node_names(&settings));
                leaders_tx.send_replace(may_lead(&settings));
                candidates_tx.send_if_modified(|c| replace_if_changed(c, &standalone_candidates(&settings)));
                etcd_urls_tx.send_if_modified(|urls| replace_if_changed(urls, &settings.config.etcd_client_urls()));
                settings_tx.send_if_modified(|s| replace_if_changed(s, &settings));
                cluster.follow(&settings, &channels).await;
            }
            Some(()) = config_changed.recv() => {
                // The daemon wrote a new cluster file from etcd: take it in.
                let current = role.borrow().clone();
                reload(&paths, &mut settings, &current);
                nodes_tx.send_replace(node_names(&settings));
                leaders_tx.send_replace(may_lead(&settings));
                candidates_tx.send_if_modified(|c| replace_if_changed(c, &standalone_candidates(&settings)));
                etcd_urls_tx.send_if_modified(|urls| replace_if_changed(urls, &settings.config.etcd_client_urls()));
                settings_tx.send_if_modified(|s| replace_if_changed(s, &settings));
                cluster.follow(&settings, &channels).await;
            }
            Ok(()) = role.changed() => {
                if matches!(*role.borrow(), Role::Leader { .. }) {
                    metrics.leader_elections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let status = status_line(&settings, &role.borrow(), &supervision.borrow());
                notify(&[NotifyState::Status(&status)]);
            }
        }
    }
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    // Supervision ends first: leaving the election must not read as having lost etcd
    // (which stops the standalone server); the components run on without the daemon.
    supervisor.abort();
    lease_proof.abort();
    // Leaving the election must not read as a lapsed lease either: the server runs on.
    if let Err(e) = crate::supervise::lease_proof::write(None) {
        warn!("withdrawing the lease proof: {e:#}");
    }
    cluster.stop().await;
    info!("stopped");
    Ok(())
}

/// Connects to etcd (retrying while it is unreachable) and runs the election, publishing
/// this daemon's role, until told to stop.
async fn campaign(
    settings: Settings,
    channels: ClusterChannels,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let ClusterChannels {
        role,
        lease_until,
        jobs: jobs_store,
        members,
        admission,
        config_changed,
        nodes,
        may_lead,
        etcd_urls,
        standalone_candidates,
        placement,
        metrics,
        health_http,
    } = channels;
    let config = &settings.config;
    let urls = etcd_urls.borrow().clone();
    let (client, connected) = loop {
        match crate::cluster::connect_live(&urls).await {
            Ok(connected) => break connected,
            Err(e) => {
                warn!("cannot reach etcd yet: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    let election = Election::new(
        client.clone(),
        crate::cluster::prefix(config),
        settings.node_name.clone(),
        settings.api_url(),
        config.daemon.lease_ttl_secs,
        &state_dir(),
    );
    let election = election
        .with_candidacy(config.may_lead(&settings.node_name))
        .with_member_urls(etcd_urls.clone())
        .with_lease_until(lease_until.clone())
        .with_placement(placement.subscribe(), may_lead);
    let mut updates = election.subscribe();
    let prefix = crate::cluster::prefix(config);
    let job_store =
        crate::cluster::jobs::JobStore::new(std::sync::Arc::new(client.clone()), prefix.clone());
    jobs_store.send_replace(Some(job_store.clone()));
    let jobs = crate::cluster::runner::run(
        job_store,
        std::sync::Arc::new(crate::job_kinds::Catalog {
            etcd: client.clone(),
        }),
        crate::cluster::keys::leader(&prefix),
        election.subscribe(),
    );
    let peers = crate::supervise::peers::run(
        crate::supervise::peers::PeerWatch {
            client: client.clone(),
            prefix: prefix.clone(),
            leader_key: crate::cluster::keys::leader(&prefix),
            nodes,
            me: settings.node_name.clone(),
            metrics,
            webhook: Some(settings.config.daemon.alert_webhook.clone()).filter(|u| !u.is_empty()),
        },
        election.subscribe(),
    );
    // The standalone server's node's address, for keeping etcd's raft leader off it.
    let server_host = {
        let (placed, candidates) = (placement.subscribe(), standalone_candidates.clone());
        move || match placed.borrow().as_ref() {
            None => crate::cluster::raft_leader::ServerHost::None,
            Some(p) if crate::host::now_unix().saturating_sub(p.since_unix) < 30 => {
                crate::cluster::raft_leader::ServerHost::Moving
            }
            Some(p) => candidates
                .borrow()
                .iter()
                .find(|(n, _)| *n == p.node)
                .map_or(crate::cluster::raft_leader::ServerHost::None, |(_, a)| {
                    crate::cluster::raft_leader::ServerHost::At(a.clone())
                }),
        }
    };
    // Where the standalone server runs: the leader decides, every node follows.
    let place = crate::cluster::placement::lead(
        crate::cluster::placement::PlacementLead {
            client: client.clone(),
            prefix: prefix.clone(),
            leader_key: crate::cluster::keys::leader(&prefix),
            me: settings.node_name.clone(),
            candidates: standalone_candidates,
            health_port: config.milvus.metrics_port,
            http: health_http,
        },
        election.subscribe(),
    );
    // Only the standalone-ha topology has a placement to follow (a read a second).
    let standalone_ha = config.cluster.topology == crate::config::model::Topology::StandaloneHa;
    let placed = async {
        if standalone_ha {
            crate::cluster::placement::follow(client.clone(), prefix.clone(), placement).await
        } else {
            std::future::pending().await
        }
    };
    let store = MembershipStore::new(client.clone(), prefix.clone());
    members.send_replace(Some(store.clone()));
    let forward = async {
        while updates.changed().await.is_ok() {
            role.send_replace(updates.borrow().clone());
        }
    };
    // With etcd run by the cluster itself, the fleet leader keeps etcd's raft leader off
    // its host (a lost host would otherwise cost two elections in a row).
    let own_etcd_address = match config.etcd.mode {
        crate::config::model::ServiceMode::Local => {
            settings.local_node().map(|n| n.address.clone())
        }
        crate::config::model::ServiceMode::External => None,
    };
    let raft_role = election.subscribe();
    let probe_now = election.endpoint_probe();
    let endpoint_changes = election.endpoint_changes();
    let endpoints_seen = endpoint_changes.subscribe();
    let vouch = crate::cluster::vouch_while_reachable(
        lease_until.clone(),
        etcd_urls.clone(),
        settings
            .local_node()
            .map(|n| n.address.clone())
            .unwrap_or_default(),
    );
    let raft_leader = async {
        match own_etcd_address {
            Some(address) => {
                crate::cluster::raft_leader::keep_off_this_host(
                    client.clone(),
                    address,
                    server_host,
                    raft_role,
                    endpoints_seen,
                )
                .await
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = election.run(stop) => {}
        _ = raft_leader => {}
        _ = vouch => {}
        _ = crate::cluster::keep_endpoints_live(client.clone(), etcd_urls, connected, probe_now, endpoint_changes) => {}
        _ = forward => {}
        _ = jobs => {}
        _ = peers => {}
        _ = place => {}
        _ = placed => {}
        _ = sync_from_etcd(store, admission, config_changed) => {}
    }
    role.send_replace(Role::Unknown);
    // Out of the election (a removed node, a stopping daemon): no lease to watch.
    lease_until.send_replace(None);
    members.send_replace(None);
    jobs_store.send_replace(None);
}

/// Keeps the cluster file in step with the configuration in etcd (telling the main loop
/// when it changed: it then has root render and converges), and the set of
/// certificates the API admits in step with `certs/` and `revoked/`. Follows them with
/// etcd watches.
async fn sync_from_etcd(
    mut store: MembershipStore,
    admission: tokio::sync::watch::Sender<crate::api::Admission>,
    changed: tokio::sync::mpsc::Sender<()>,
) {
    use etcd_client::WatchOptions;
    let file = crate::host::cluster_file();
    loop {
        let config_watch = store.client.watch(store.config_key(), None).await;
        let prefix_watch = |key: String| {
            let mut client = store.client.clone();
            async move {
                client
                    .watch(key, Some(WatchOptions::new().with_prefix()))
                    .await
            }
        };
        let revoked_watch = prefix_watch(store.revoked_key("")).await;
        let certs_watch = prefix_watch(store.cert_key("")).await;
        let (Ok(mut config_events), Ok(mut revoked_events), Ok(mut certs_events)) =
            (config_watch, revoked_watch, certs_watch)
        else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        // Read after the watches exist, so no change falls between.
        loop {
            match store.config().await {
                Ok((_, text, _)) => {
                    if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
                        match crate::host::write_file(&file, text.as_bytes(), 0o644, None) {
                            Ok(()) => {
                                info!(file = %file.display(), "cluster configuration changed in etcd");
                                let _ = changed.send(()).await;
                            }
                            Err(e) => error!("writing the cluster file: {e:#}"),
                        }
                    }
                }
                Err(crate::membership::store::StoreError::NoConfig) => {}
                Err(e) => {
                    warn!("reading the cluster configuration: {e}");
                    break;
                }
            }
            if let (Ok(current), Ok(revoked)) =
                (store.node_certs().await, store.revoked_certs().await)
            {
                let hashes = |records: std::collections::BTreeMap<String, String>| {
                    records.into_values().filter(|c| !c.is_empty()).collect()
                };
                admission.send_if_modified(|held| {
                    let read = crate::api::Admission {
                        loaded: true,
                        node_certs: hashes(current),
                        revoked: hashes(revoked),
                    };
                    let changed = *held != read;
                    *held = read;
                    changed
                });
            }
            // A watch can sit on a member that no longer hears the cluster (this node's own
            // etcd right after its removal) and never fire: read again every few seconds.
            tokio::select! {
                event = config_events.message() => if !matches!(event, Ok(Some(_))) { break },
                event = revoked_events.message() => if !matches!(event, Ok(Some(_))) { break },
                event = certs_events.message() => if !matches!(event, Ok(Some(_))) { break },
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The channels the cluster loops publish on.
#[derive(Clone)]
struct ClusterChannels {
    role: tokio::sync::watch::Sender<Role>,
    /// Until when this daemon's lease surely lives (see `Election::with_lease_until`).
    lease_until: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
    jobs: tokio::sync::watch::Sender<Option<crate::cluster::jobs::JobStore>>,
    members: tokio::sync::watch::Sender<Option<MembershipStore>>,
    admission: tokio::sync::watch::Sender<crate::api::Admission>,
    config_changed: tokio::sync::mpsc::Sender<()>,
    nodes: tokio::sync::watch::Receiver<Vec<String>>,
    /// The nodes that may lead (`FleetConfig::may_lead`).
    may_lead: tokio::sync::watch::Receiver<Vec<String>>,
    etcd_urls: tokio::sync::watch::Receiver<Vec<String>>,
    /// The nodes that may run the standalone server, with their addresses.
    standalone_candidates: tokio::sync::watch::Receiver<Vec<(String, String)>>,
    placement: tokio::sync::watch::Sender<Option<crate::cluster::placement::Placement>>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The leader's client for the standalone server's health endpoint.
    health_http: reqwest::Client,
}

/// The running cluster loops, if this node is in a cluster.
#[derive(Default)]
struct ClusterLoops {
    running: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::watch::Sender<bool>,
    )>,
}

impl ClusterLoops {
    /// Starts the loops when this node is in the cluster and they are not running; stops
    /// them when it is no longer (a removed node must not lead or run jobs).
    async fn follow(&mut self, settings: &Settings, channels: &ClusterChannels) {
        let member = settings.local_node().is_some();
        if member && self.running.is_none() {
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(campaign(settings.clone(), channels.clone(), stop_rx));
            self.running = Some((task, stop_tx));
        } else if !member && self.running.is_some() {
            warn!("this node is no longer in the cluster: leaving the election");
            self.stop().await;
        }
    }

    async fn stop(&mut self) {
        if let Some((task, stop)) = self.running.take() {
            // Resigning is one guarded delete; a dead etcd must not hold the stop up.
            let _ = stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }
}

/// The compute nodes, which may run the standalone server (none in other topologies).
fn standalone_candidates(settings: &Settings) -> Vec<(String, String)> {
    use crate::config::model::{Role as NodeRole, Topology};
    if settings.config.cluster.topology != Topology::StandaloneHa {
        return Vec::new();
    }
    settings
        .config
        .nodes
        .iter()
        .filter(|n| n.roles.contains(&NodeRole::Compute))
        .map(|n| (n.name.clone(), n.address.clone()))
        .collect()
}

/// The nodes that may lead (storage nodes, or every node of a cluster without any).
fn may_lead(settings: &Settings) -> Vec<String> {
    let config = &settings.config;
    config
        .nodes
        .iter()
        .filter(|n| config.may_lead(&n.name))
        .map(|n| n.name.clone())
        .collect()
}

fn node_names(settings: &Settings) -> Vec<String> {
    settings
        .config
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .collect()
}

/// Milvus' root password (LoadCredential=milvus, read as root from the 0600 file), when
/// this node has one (it runs Milvus).
fn milvus_root_password() -> Option<String> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let text = std::fs::read_to_string(std::path::Path::new(&dir).join("milvus")).ok()?;
    Some(text.trim().to_owned()).filter(|p| !p.is_empty())
}

/// Where the object-storage credentials are: systemd's credential (LoadCredential=,
/// read as root from the 0600 file), else the configured file.
fn credentials_file(settings: &Settings) -> std::path::PathBuf {
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|dir| std::path::PathBuf::from(dir).join("object-storage"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            settings
                .config
                .object_storage
                .credentials_file
                .clone()
                .into()
        })
}

/// Binds the API: mutual TLS on daemon.api_port when the node has its certificates
/// (state directory, pki/), and the local Unix socket in the runtime directory.
async fn listen(
    settings: &Settings,
    routers: crate::api::Routers,
    admission: tokio::sync::watch::Receiver<crate::api::Admission>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    // The local socket's callers are root or the milvus-fleet group: operators.
    let router = routers
        .full
        .clone()
        .layer(axum::Extension(crate::api::Caller::Operator));
    let mut tasks = Vec::new();
    let tls = crate::api::TlsFiles::in_dir(&state_dir().join("pki"));
    if tls.exist() {
        let config = tls
            .server_config()
            .context("loading the node's TLS certificates")?;
        let port = settings.config.daemon.api_port;
        let listener = std::net::TcpListener::bind(("0.0.0.0", port))
            .with_context(|| format!("binding the API port {port}"))?;
        info!(port, "API listening (mutual TLS)");
        crate::api::spawn_tls_server(listener, config, routers, admission)?;
    }
    let runtime = crate::host::runtime_dir();
    if runtime.is_dir() {
        use std::os::unix::fs::PermissionsExt;
        let path = runtime.join("api.sock");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .with_context(|| format!("binding {}", path.display()))?;
        // Owner and group only: the group is the local API's access list.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("{}: setting its mode", path.display()))?;
        info!(socket = %path.display(), "local API listening");
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        }));
    }
    Ok(tasks)
}

/// Replaces the settings only when the new configuration is valid as a whole.
fn reload(paths: &ConfigPaths, settings: &mut Settings, role: &Role) {
    match Settings::load(paths) {
        Ok(new) if new == *settings => info!("configuration reloaded: unchanged"),
        Ok(new) => {
            info!(fingerprint = %new.fingerprint(), "configuration reloaded: changed");
            *settings = new;
            notify(&[NotifyState::Status(&status_line(settings, role, ""))]);
        }
        Err(e) => error!("configuration reload rejected, keeping the running configuration: {e}"),
    }
}

fn replace_if_changed<T: PartialEq + Clone>(current: &mut T, new: &T) -> bool {
    if current == new {
        return false;
    }
    *current = new.clone();
    true
}

fn status_line(settings: &Settings, role: &Role, supervision: &str) -> String {
    let config = &settings.config;
    if config.nodes.is_empty() {
        return "not part of a cluster yet: run `milvus-fleet init` or `milvus-fleet join`"
            .to_owned();
    }
    if settings.local_node().is_none() {
        return format!(
            "node {} is not in cluster {}'s node list (removed, or not joined)",
            settings.node_name, config.cluster.name
        );
    }
    let role = match role {
        Role::Unknown => "connecting to etcd".to_owned(),
        Role::Leader { term } => format!("leader (term {term})"),
        Role::Follower {
            leader: Some(leader),
        } => format!("follower of {leader}"),
        Role::Follower { leader: None } => "follower, no leader yet".to_owned(),
    };
    let mut line = format!(
        "node {} of cluster {}: {role}",
        settings.node_name, config.cluster.name
    );
    if !supervision.is_empty() {
        line.push_str("; ");
        line.push_str(supervision);
    }
    line
}

fn notify(state: &[NotifyState]) {
    // Outside systemd there is no NOTIFY_SOCKET and this is a no-op.
    if let Err(e) = sd_notify::notify(state) {
        warn!("cannot notify systemd: {e}");
    }
}
