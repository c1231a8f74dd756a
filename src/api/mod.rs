//! The daemon's API: HTTPS with mutual TLS against the cluster CA on `daemon.api_port`,
//! and the same routes over a Unix socket under /run/milvus-fleet for the local CLI
//! (guarded by the socket's mode and group).
//!
//! Every route and who may call it is one row of [`ROUTES`]: anyone (the join route and
//! /metrics), any member (a node's or an operator's certificate), or an operator (an
//! operator's certificate, or the local socket).

mod error;
pub mod limits;
mod membership;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use tokio::sync::watch;

pub use error::ApiError;

use crate::cluster::election::Role;
use crate::cluster::jobs::{JobKind, JobState, JobStore};

pub use crate::metrics::Metrics;

/// Requests larger than this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What the routes read.
#[derive(Clone)]
pub struct ApiState {
    pub node: String,
    pub cluster: String,
    /// The configured nodes (empty: not part of a cluster yet), kept current on reloads.
    pub nodes: watch::Receiver<Vec<String>>,
    pub lease_ttl_secs: u32,
    pub role: watch::Receiver<Role>,
    /// Set once the daemon has reached etcd.
    pub jobs: watch::Receiver<Option<JobStore>>,
    pub members: watch::Receiver<Option<crate::membership::store::MembershipStore>>,
    /// The node's certificates (and the CA key on storage nodes), for admitting joins.
    pub pki_dir: PathBuf,
    /// The object-storage credentials handed to a joining node over the verified channel.
    pub credentials_file: PathBuf,
    /// Milvus' root password, handed to a joining node that runs Milvus (same channel).
    pub milvus_root_password: Option<String>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// The join route's rate (limits.rs): it answers peers that hold no certificate.
    pub join_limit: Arc<std::sync::Mutex<limits::Bucket>>,
}

/// Who calls: what the connection proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No certificate (a joining node, a metrics scraper, anyone on the network).
    Anyone,
    /// A node's certificate of this cluster.
    Node,
    /// An operator's certificate, or the local socket (root or the `milvus-fleet` group).
    Operator,
}

/// Which client certificates the API admits, as etcd says: a node's only while it is the
/// node's current one (`certs/<node>`, written at init and join, deleted at removal), any
/// certificate not revoked (`revoked/<node>`), and none before etcd was read once: the
/// check fails closed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    pub loaded: bool,
    pub node_certs: std::collections::BTreeSet<String>,
    pub revoked: std::collections::BTreeSet<String>,
}

impl Admission {
    /// The caller a certificate of this CA with SHA-256 `hash` and `role` makes; None:
    /// refused (pure).
    pub fn caller(&self, hash: &str, role: crate::pki::CertRole) -> Option<Caller> {
        if !self.loaded || self.revoked.contains(hash) {
            return None;
        }
        match role {
            crate::pki::CertRole::Node => self.node_certs.contains(hash).then_some(Caller::Node),
            crate::pki::CertRole::Operator => Some(Caller::Operator),
        }
    }
}

/// The certificate a TLS caller showed (absent on the local socket).
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// Its SHA-256 (hex): how the cluster names it.
    pub hash: String,
    pub role: crate::pki::CertRole,
    /// Its common name: a node certificate's node name.
    pub name: String,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    Anyone,
    Member,
    Operator,
}

impl Caller {
    fn may(self, need: Need) -> bool {
        match need {
            Need::Anyone => true,
            Need::Member => self != Caller::Anyone,
            Need::Operator => self == Caller::Operator,
        }
    }
}

/// One route: its method and path, who may call it, and its handler.
struct Route {
    method: &'static str,
    path: &'static str,
    need: Need,
    handler: fn() -> axum::routing::MethodRouter<Arc<ApiState>>,
}

/// The routes, in one table: the routers and the authorization both read it.
const ROUTES: &[Route] = &[
    route("GET", "/v1/status", Need::Member, || get(status)),
    route("POST", "/v1/join", Need::Anyone, || post(membership::join)),
    route("GET", "/v1/tokens", Need::Operator, || {
        get(membership::list_tokens)
    }),
    route("POST", "/v1/tokens", Need::Operator, || {
        post(membership::create_token)
    }),
    route("POST", "/v1/tokens/rotate", Need::Operator, || {
        post(membership::rotate_tokens)
    }),
    route("POST", "/v1/tokens/{id}/revoke", Need::Operator, || {
        post(membership::revoke_token)
    }),
    route(
        "POST",
        crate::membership::renew::ROUTE,
        Need::Member,
        || post(membership::renew_certificates),
    ),
    route("GET", "/v1/jobs", Need::Member, || get(list_jobs)),
    route("POST", "/v1/jobs", Need::Operator, || post(submit_job)),
    route("GET", "/v1/jobs/{id}", Need::Member, || get(show_job)),
    route("POST", "/v1/jobs/{id}/cancel", Need::Operator, || {
        post(cancel_job)
    }),
    route("GET", "/metrics", Need::Anyone, || get(metrics)),
];

const fn route(
    method: &'static str,
    path: &'static str,
    need: Need,
    handler: fn() -> axum::routing::MethodRouter<Arc<ApiState>>,
) -> Route {
    Route {
        method,
        path,
        need,
        handler,
    }
}

/// Who may call `method` on the route `path` (its pattern). HEAD is a GET (axum serves
/// it with the GET handler); a pair the table does not name needs an operator: the check
/// fails closed.
fn need_of(method: &str, path: &str) -> Need {
    let method = if method == "HEAD" { "GET" } else { method };
    ROUTES
        .iter()
        .find(|r| r.method == method && r.path == path)
        .map_or(Need::Operator, |r| r.need)
}

/// The routers: `full` for a client with a cluster certificate and for the local socket,
/// `public` (what [`Need::Anyone`] may call) for a client without one. Which caller it is
/// comes with each request ([`Caller`], set by the listener).
pub struct Routers {
    pub full: Router,
    pub public: Router,
}

pub fn routers(state: ApiState) -> Routers {
    let build = |public_only: bool| {
        let router = ROUTES
            .iter()
            .filter(|r| !public_only || r.need == Need::Anyone)
            .fold(Router::new(), |router, r| {
                router.route(r.path, (r.handler)())
            });
        layers(router, &state)
    };
    let (full, public) = (build(false), build(true));
    let state = Arc::new(state);
    Routers {
        full: full.with_state(state.clone()),
        public: public.with_state(state),
    }
}

/// Refuses a call its caller may not make, with 403 and what it needs.
async fn authorize(
    caller: Option<axum::Extension<Caller>>,
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let caller = caller.map_or(Caller::Anyone, |c| c.0);
    let need = matched.map_or(Need::Operator, |m| {
        need_of(request.method().as_str(), m.as_str())
    });
    if caller.may(need) {
        return next.run(request).await;
    }
    ApiError::Forbidden(match need {
        Need::Operator => "this call needs an operator: root or the milvus-fleet group on a member's local socket, or an operator's certificate (`milvus-fleet pki issue --operator NAME`)".into(),
        _ => "this call needs a certificate of this cluster".into(),
    })
    .into_response()
}

fn layers(router: Router<Arc<ApiState>>, state: &ApiState) -> Router<Arc<ApiState>> {
    router
        .route_layer(axum::middleware::from_fn(authorize))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response_with_state(
            state.node.clone(),
            served_by,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            measure,
        ))
}

/// Counts every request, its errors and its time for /metrics.
async fn measure(
    State(metrics): State<Arc<Metrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let start = Instant::now();
    let response = next.run(request).await;
    metrics.api_requests.fetch_add(1, Ordering::Relaxed);
    if response.status().is_client_error() || response.status().is_server_error() {
        metrics.api_errors.fetch_add(1, Ordering::Relaxed);
    }
    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    metrics.api_micros.fetch_add(micros, Ordering::Relaxed);
    response
}

/// Every answer says which daemon served it.
async fn served_by(State(node): State<String>, mut response: Response) -> Response {
    if let Ok(value) = HeaderValue::from_str(&node) {
        response.headers_mut().entry(SERVED_BY).or_insert(value);
    }
    response
}

pub const SERVED_BY: &str = "x-served-by";

/// Parses a JSON body: 400 when it is not JSON, 422 when it is JSON of the wrong shape.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let status = match e.classify() {
            serde_json::error::Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::Rejected(status, format!("request body: {e}"))
    })
}

type Shared = State<Arc<ApiState>>;

fn role_json(role: &Role) -> serde_json::Value {
    match role {
        Role::Unknown => serde_json::json!({ "role": "unknown" }),
        Role::Follower { leader } => serde_json::json!({ "role": "follower", "leader": leader }),
        Role::Leader { term } => serde_json::json!({ "role": "leader", "term": term }),
    }
}

async fn status(State(state): Shared) -> Json<serde_json::Value> {
    let nodes = state.nodes.borrow().clone();
    if nodes.is_empty() {
        return Json(serde_json::json!({
            "role": "none",
            "node": state.node,
            "cluster": state.cluster,
            "uptime_secs": state.started.elapsed().as_secs(),
        }));
    }
    let mut body = role_json(&state.role.borrow());
    body["node"] = state.node.clone().into();
    body["cluster"] = state.cluster.clone().into();
    body["uptime_secs"] = state.started.elapsed().as_secs().into();
    body["lease_ttl_secs"] = state.lease_ttl_secs.into();
    // Which configured nodes have a live daemon, and the jobs by state, from etcd.
    let store = state.jobs.borrow().clone();
    // An etcd read that fails says so: "every daemon down" or "no jobs" would be a lie.
    if let Some(mut store) = store {
        match store.members().await {
            Ok(members) => {
                body["nodes"] = nodes
                    .iter()
                    .map(|n| serde_json::json!({ "name": n, "daemon": if members.contains_key(n) { "up" } else { "down" } }))
                    .collect();
            }
            Err(e) => {
                body["nodes_error"] =
                    format!("reading the daemons' registrations from etcd: {e}").into()
            }
        }
        match store.list().await {
            Ok(jobs) => {
                let mut counts = serde_json::Map::new();
                for job in &jobs {
                    let state = job.state.as_str().to_owned();
                    let n = counts.get(&state).and_then(Value::as_u64).unwrap_or(0);
                    counts.insert(state, (n + 1).into());
                }
                body["jobs"] = counts.into();
            }
            Err(e) => body["jobs_error"] = format!("reading the jobs from etcd: {e}").into(),
        }
    }
    Json(body)
}

fn store(state: &ApiState) -> Result<JobStore, ApiError> {
    state.jobs.borrow().clone().ok_or(ApiError::NoCluster)
}

async fn list_jobs(State(state): Shared) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(store(&state)?.list().await?))
}

async fn show_job(
    State(state): Shared,
    UrlPath(id): UrlPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(store(&state)?.get(&id).await?.0))
}

async fn submit_job(State(state): Shared, body: Bytes) -> Result<Response, ApiError> {
    let kind: JobKind = parse(&body)?;
    if let JobKind::NodeRemove { node } = &kind {
        // Refused now, with the reason, rather than failing later in the job. The checks
        // only read, so an etcd error (a member restarting under the leader) is tried
        // again before it is an answer.
        let members = state.members.borrow().clone().ok_or(ApiError::NoCluster)?;
        crate::cluster::retry_reads(
            Duration::from_secs(5),
            |e| matches!(e, ApiError::Unavailable(_)),
            || {
                let mut members = members.clone();
                let node = node.clone();
                async move {
                    let (config, _, _) = members.config().await?;
                    crate::membership::remove::check(&mut members.client, &config, &node).await?;
                    Ok::<_, ApiError>(())
                }
            },
        )
        .await?;
    }
    let resource = kind.resource();
    let steps = crate::job_kinds::step_count(&kind);
    let job = store(&state)?.submit(kind, steps, &resource).await?;
    Ok((StatusCode::CREATED, Json(job)).into_response())
}

async fn cancel_job(
    State(state): Shared,
    UrlPath(id): UrlPath<String>,
    // Read, though unused: a request body left unread makes the socket reset the answer.
    _body: Bytes,
) -> Result<Response, ApiError> {
    Ok(Json(store(&state)?.request_cancel(&id).await?).into_response())
}

async fn metrics(State(state): Shared) -> String {
    use std::fmt::Write;
    let (leader, term) = match *state.role.borrow() {
        Role::Leader { term } => (1, term),
        _ => (0, 0),
    };
    let m = &state.metrics;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let plain = |v: String| vec![(String::new(), v)];
    metric(
        "milvus_fleet_leader",
        "gauge",
        "Whether this daemon is the cluster's leader.",
        &plain(leader.to_string()),
    );
    metric(
        "milvus_fleet_term",
        "gauge",
        "The leader term this daemon holds (0 when it does not lead).",
        &plain(term.to_string()),
    );
    let elections = m.leader_elections.load(Ordering::Relaxed).to_string();
    metric(
        "milvus_fleet_leader_elections_total",
        "counter",
        "Times this daemon became the leader.",
        &plain(elections),
    );
    let requests = m.api_requests.load(Ordering::Relaxed).to_string();
    metric(
        "milvus_fleet_api_requests_total",
        "counter",
        "API requests served.",
        &plain(requests),
    );
    let errors = m.api_errors.load(Ordering::Relaxed).to_string();
    metric(
        "milvus_fleet_api_errors_total",
        "counter",
        "API requests answered with 4xx or 5xx.",
        &plain(errors),
    );
    let seconds = format!("{:.6}", m.api_micros.load(Ordering::Relaxed) as f64 / 1e6);
    metric(
        "milvus_fleet_api_request_seconds_sum",
        "counter",
        "Time spent serving API requests.",
        &plain(seconds),
    );
    metric(
        "milvus_fleet_peers_down",
        "gauge",
        "Configured peers whose daemon is not registered (leader only).",
        &plain(m.peers_down.load(Ordering::Relaxed).to_string()),
    );
    metric(
        "milvus_fleet_peer_alerts_total",
        "counter",
        "Peer alerts this daemon raised as the leader.",
        &[
            (
                "{event=\"down\"}".into(),
                m.peer_down_alerts.load(Ordering::Relaxed).to_string(),
            ),
            (
                "{event=\"recovered\"}".into(),
                m.peer_recovered_alerts.load(Ordering::Relaxed).to_string(),
            ),
        ],
    );
    metric(
        "milvus_fleet_wedged_restarts_total",
        "counter",
        "Components this daemon restarted because they stopped answering their probe.",
        &plain(m.wedged_restarts.load(Ordering::Relaxed).to_string()),
    );
    metric(
        "milvus_fleet_component_alerts_total",
        "counter",
        "Component alerts: a unit systemd gave up on, or a used-up restart budget.",
        &plain(m.component_alerts.load(Ordering::Relaxed).to_string()),
    );
    // Jobs by state, and how long the ended ones took, from the records in etcd. A failed
    // read leaves the series out (absent, not zero) and says why in their help.
    let store = state.jobs.borrow().clone();
    let jobs = match store {
        Some(mut store) => store.list().await.map_err(|e| e.to_string()),
        None => Ok(Vec::new()),
    };
    match jobs {
        Ok(jobs) => {
            let counts: Vec<(String, String)> = JobState::ALL
                .iter()
                .map(|state| {
                    let n = jobs.iter().filter(|j| j.state == *state).count();
                    (format!("{{state=\"{}\"}}", state.as_str()), n.to_string())
                })
                .collect();
            metric(
                "milvus_fleet_jobs",
                "gauge",
                "Jobs in etcd by state.",
                &counts,
            );
            let ended: Vec<_> = jobs.iter().filter(|j| j.state.is_final()).collect();
            let total_ms: u64 = ended
                .iter()
                .map(|j| j.updated_unix_ms.saturating_sub(j.created_unix_ms))
                .sum();
            metric(
                "milvus_fleet_job_duration_seconds",
                "summary",
                "Duration of the jobs that ended, from queued to ended.",
                &[
                    ("_sum".into(), format!("{:.3}", total_ms as f64 / 1e3)),
                    ("_count".into(), ended.len().to_string()),
                ],
            );
        }
        Err(e) => metric(
            "milvus_fleet_jobs",
            "gauge",
            &format!(
                "Jobs in etcd by state: left out, reading them failed: {}",
                e.replace('\n', " ")
            ),
            &[],
        ),
    }
    let uptime = state.started.elapsed().as_secs().to_string();
    metric(
        "milvus_fleet_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        &plain(uptime),
    );
    out
}

/// The node's TLS material under the state directory.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("node.crt"),
            key: dir.join("node.key"),
        }
    }

    pub fn exist(&self) -> bool {
        self.ca.is_file() && self.cert.is_file() && self.key.is_file()
    }

    /// A server config that checks client certificates against the cluster CA. A client
    /// without one gets only the public routes (see [`serve_tls`]). The chain sent includes
    /// the CA, so a joining node can check it against its token's pin.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        use anyhow::Context;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca)
            .with_context(|| format!("{}", self.ca.display()))?
        {
            roots.add(cert?)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()?;
        let mut chain = CertificateDer::pem_file_iter(&self.cert)
            .with_context(|| format!("{}", self.cert.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        for cert in CertificateDer::pem_file_iter(&self.ca)
            .with_context(|| format!("{}", self.ca.display()))?
        {
            chain.push(cert?);
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("{}", self.key.display()))?;
        Ok(rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?)
    }
}

/// Serves the public port on a thread and a runtime of its own until the process ends:
/// whatever arrives on the port (a flood of connections, handshakes that never finish)
/// costs that thread, never the daemon's loop with its lease keepalives.
pub fn spawn_tls_server(
    listener: std::net::TcpListener,
    config: rustls::ServerConfig,
    routers: Routers,
    admission: watch::Receiver<Admission>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    listener
        .set_nonblocking(true)
        .context("setting the API listener non-blocking")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the API's runtime")?;
    std::thread::Builder::new()
        .name("api-tls".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => serve_tls(listener, config, routers, admission).await,
                    Err(e) => tracing::error!("the API port cannot be served: {e}"),
                }
            })
        })
        .context("starting the API's thread")?;
    Ok(())
}

/// Serves over TLS on `listener`: a client with a certificate of the cluster CA that
/// `admission` admits gets every route its role may call, one it does not admit is
/// dropped; a client without one gets the public routes. Bounded by [`limits`]: connection slots, the handshake
/// and header timeouts, a connection's age.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    config: rustls::ServerConfig,
    routers: Routers,
    admission: watch::Receiver<Admission>,
) {
    use sha2::{Digest, Sha256};
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits::MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            // Out of file descriptors, say: do not spin on it.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Every slot taken: this one is closed at once.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let acceptor = acceptor.clone();
        let (full, public) = (routers.full.clone(), routers.public.clone());
        let admission = admission.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // A certificate not from our CA fails here, before any route runs.
            let Ok(Ok(tls)) =
                tokio::time::timeout(limits::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            else {
                return;
            };
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| ClientCert {
                    hash: crate::config::hex(&Sha256::digest(cert.as_ref())),
                    role: crate::pki::CertRole::of_der(cert.as_ref()),
                    name: crate::pki::common_name_of_der(cert.as_ref()).unwrap_or_default(),
                });
            let router = match client_cert {
                Some(cert) => match admission.borrow().caller(&cert.hash, cert.role) {
                    Some(caller) => full
                        .layer(axum::Extension(caller))
                        .layer(axum::Extension(cert)),
                    None => return,
                },
                None => public.layer(axum::Extension(Caller::Anyone)),
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits::HEADER_TIMEOUT);
            builder.http2().timer(hyper_util::rt::TokioTimer::new());
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = tokio::time::sleep(limits::MAX_CONNECTION_AGE) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits::HEADER_TIMEOUT, connection).await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CertRole;

    #[test]
    fn a_node_certificate_is_admitted_only_while_it_is_the_current_one() {
        let mut admission = Admission::default();
        // Nothing read from etcd yet: nothing is admitted.
        assert_eq!(admission.caller("a", CertRole::Node), None);
        assert_eq!(admission.caller("o", CertRole::Operator), None);
        admission.loaded = true;
        admission.node_certs.insert("a".into());
        assert_eq!(admission.caller("a", CertRole::Node), Some(Caller::Node));
        // Another certificate of the same CA for a node: not its current one.
        assert_eq!(admission.caller("b", CertRole::Node), None);
        assert_eq!(
            admission.caller("o", CertRole::Operator),
            Some(Caller::Operator)
        );
        admission.revoked.insert("a".into());
        admission.revoked.insert("o".into());
        assert_eq!(admission.caller("a", CertRole::Node), None);
        assert_eq!(admission.caller("o", CertRole::Operator), None);
    }

    #[test]
    fn every_route_names_who_may_call_it_and_callers_get_what_their_role_allows() {
        assert_eq!(need_of("POST", "/v1/join"), Need::Anyone);
        assert_eq!(need_of("GET", "/v1/status"), Need::Member);
        assert_eq!(need_of("POST", "/v1/tokens"), Need::Operator);
        // HEAD runs the GET handler: it needs what GET needs; anything unnamed, an operator.
        assert_eq!(need_of("HEAD", "/v1/tokens"), Need::Operator);
        assert_eq!(need_of("HEAD", "/metrics"), Need::Anyone);
        assert_eq!(need_of("DELETE", "/v1/status"), Need::Operator);
        for route in ROUTES {
            assert!(Caller::Operator.may(route.need), "{}", route.path);
            assert_eq!(
                Caller::Node.may(route.need),
                route.need != Need::Operator,
                "{}",
                route.path
            );
            assert_eq!(Caller::Anyone.may(route.need), route.need == Need::Anyone);
        }
    }
}
