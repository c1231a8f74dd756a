//! Peer-down alerts, raised by the leader only, exactly once per event.
//!
//! A daemon's registration `<prefix>members/<node>` lives on its lease: a killed, frozen
//! or cut-off daemon's key goes when the lease expires (the lease TTL, plus etcd's 0.5 s
//! expiry scan). The leader follows `members/` with a watch and compares it with the
//! configured nodes; a registration gone for a second is a peer down (a daemon whose
//! lease lapsed registers again at once, and that blip raises nothing). The alert state is kept in etcd (`<prefix>alerts/peers/<node>`:
//! `up` once the node was seen registered, `down` once its loss was raised), written in
//! transactions guarded by the leader's term: an alert is raised only by the write that
//! records it, so a new leader neither repeats an alert its predecessor raised
//! nor misses the "recovered" that ends it, and a deposed leader raises nothing.
//!
//! Each alert is a journal entry with a stable MESSAGE_ID, a Prometheus counter, and,
//! when `daemon.alert_webhook` is set, a JSON POST sent (and retried) beside the loop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::cluster::election::Role;
use crate::cluster::keys;
use crate::cluster::messages::{PEER_DOWN, PEER_RECOVERED};
use crate::cluster::{read_prefix, ClusterError};
use crate::metrics::Metrics;

/// How long a registration must stay gone before it is an event. A daemon whose lease
/// lapsed (a loaded host, an etcd leader election) registers again within milliseconds;
/// that blip is not a peer going down, and alerting on it would page for nothing.
const DOWN_AFTER: Duration = Duration::from_secs(1);

/// What the peer watcher needs.
pub struct PeerWatch {
    pub client: Client,
    pub prefix: String,
    pub leader_key: String,
    /// The configured nodes (kept current on reloads).
    pub nodes: watch::Receiver<Vec<String>>,
    pub me: String,
    pub metrics: Arc<Metrics>,
    pub webhook: Option<String>,
}

/// Watches the peers whenever `role` says this daemon leads; returns when `role` closes.
pub async fn run(mut watch: PeerWatch, mut role: watch::Receiver<Role>) {
    loop {
        let current = role.borrow_and_update().clone();
        if let Role::Leader { term } = current {
            tokio::select! {
                _ = lead(&mut watch, term) => {}
                changed = role.changed() => if changed.is_err() { return },
            }
        } else if role.changed().await.is_err() {
            return;
        }
    }
}

async fn lead(watch: &mut PeerWatch, term: i64) {
    let members = keys::members(&watch.prefix);
    loop {
        let Ok(mut events) = watch
            .client
            .watch(members.clone(), Some(WatchOptions::new().with_prefix()))
            .await
        else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut absent_since = BTreeMap::new();
        loop {
            let recheck = match evaluate(watch, term, &mut absent_since).await {
                Ok(recheck) => recheck,
                Err(e) => {
                    warn!("checking the peers: {e}");
                    break;
                }
            };
            // A node added or removed is no members/ event but a `nodes` change; the slow
            // timer only backs up a watch that went quiet on a member cut off from the rest.
            tokio::select! {
                event = events.message() => if !matches!(event, Ok(Some(_))) { break },
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                _ = tokio::time::sleep_until(recheck.unwrap_or_else(Instant::now)), if recheck.is_some() => {}
                _ = watch.nodes.changed() => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Compares live registrations with the configured nodes and records (and raises) each
/// transition once. Returns when to look again for a registration that is gone but not
/// yet for [`DOWN_AFTER`].
async fn evaluate(
    watch: &mut PeerWatch,
    term: i64,
    absent_since: &mut BTreeMap<String, Instant>,
) -> Result<Option<Instant>, ClusterError> {
    let now = Instant::now();
    let mut recheck: Option<Instant> = None;
    let up = read_prefix(&mut watch.client, &keys::members(&watch.prefix)).await?;
    let alerts_prefix = keys::peer_alerts(&watch.prefix);
    let down = read_prefix(&mut watch.client, &alerts_prefix).await?;
    let configured: BTreeSet<String> = watch.nodes.borrow().iter().cloned().collect();
    let guard = Compare::create_revision(watch.leader_key.clone(), CompareOp::Equal, term);
    for node in &configured {
        let key = keys::peer_alert(&watch.prefix, node);
        let registered = up.contains_key(node);
        if registered {
            absent_since.remove(node);
        } else if down.get(node).map(String::as_str) == Some("up") && *node != watch.me {
            let since = *absent_since.entry(node.clone()).or_insert(now);
            if now - since < DOWN_AFTER {
                let at = since + DOWN_AFTER;
                recheck = Some(recheck.map_or(at, |r| r.min(at)));
                continue;
            }
        }
        // "up" once seen registered, "down" once alerted; a node never seen (its daemon
        // not started yet, say while it joins) raises nothing.
        let (value, event) = match (registered, down.get(node).map(String::as_str)) {
            (true, None) => ("up", None),
            (true, Some("down")) => ("up", Some(PeerEvent::Recovered)),
            (false, Some("up")) if *node != watch.me => ("down", Some(PeerEvent::Down)),
            _ => continue,
        };
        let txn = Txn::new()
            .when([guard.clone()])
            .and_then([TxnOp::put(key, value, None)]);
        if !watch.client.txn(txn).await?.succeeded() {
            // No longer the leader of `term`: the next leader takes over.
            return Ok(None);
        }
        if let Some(event) = event {
            raise(watch, node, event, term);
        }
    }
    // A node that left the cluster is not down; forget its alert quietly.
    for node in down.keys().filter(|n| !configured.contains(*n)) {
        let txn = Txn::new()
            .when([guard.clone()])
            .and_then([TxnOp::delete(keys::peer_alert(&watch.prefix, node), None)]);
        watch.client.txn(txn).await?;
    }
    let still_down = configured
        .iter()
        .filter(|n| !up.contains_key(*n) && down.contains_key(*n))
        .count();
    watch
        .metrics
        .peers_down
        .store(still_down as u64, Ordering::Relaxed);
    Ok(recheck)
}

#[derive(Debug, Clone, Copy)]
enum PeerEvent {
    Down,
    Recovered,
}

fn raise(watch: &PeerWatch, node: &str, event: PeerEvent, term: i64) {
    match event {
        PeerEvent::Down => {
            watch
                .metrics
                .peer_down_alerts
                .fetch_add(1, Ordering::Relaxed);
            warn!(
                message_id = PEER_DOWN,
                peer = node,
                term,
                "peer {node} is down: its daemon's lease is gone (killed, frozen, or cut off)"
            );
        }
        PeerEvent::Recovered => {
            watch
                .metrics
                .peer_recovered_alerts
                .fetch_add(1, Ordering::Relaxed);
            info!(
                message_id = PEER_RECOVERED,
                peer = node,
                term,
                "peer {node} recovered: its daemon is registered again"
            );
        }
    }
    if let Some(url) = watch.webhook.clone() {
        let body = serde_json::json!({
            "event": match event { PeerEvent::Down => "peer-down", PeerEvent::Recovered => "peer-recovered" },
            "peer": node,
            "reported_by": watch.me,
            "term": term,
            "unix": crate::host::now_unix(),
        });
        // Beside the loop: a slow or dead receiver never holds up supervision.
        tokio::spawn(send_webhook(url, body));
    }
}

pub(crate) async fn send_webhook(url: String, body: serde_json::Value) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    else {
        return;
    };
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=5 {
        match client.post(&url).json(&body).send().await {
            Ok(answer) if answer.status().is_success() => return,
            Ok(answer) => warn!(attempt, "alert webhook answered {}", answer.status()),
            Err(e) => warn!(attempt, "alert webhook: {e}"),
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    warn!("alert webhook: giving up after 5 attempts");
}
