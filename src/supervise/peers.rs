//! Peer-down alerts, raised by the leader only, exactly once per event.
//!
//! A daemon's registration `<prefix>members/<node>` lives on its lease: a killed, frozen
//! or cut-off daemon's key goes when the lease expires (the lease TTL, plus etcd's 0.5 s
//! expiry scan). The leader follows `members/` with a watch and compares it with the
//! configured nodes. The alert state is kept in etcd (`<prefix>alerts/peers/<node>`:
//! `up` once the node was seen registered, `down` once its loss was raised), written in
//! transactions guarded by the leader's term: an alert is raised only by the write that
//! records it, so a new leader neither repeats an alert its predecessor raised
//! nor misses the "recovered" that ends it, and a deposed leader raises nothing.
//!
//! Each alert is a journal entry with a stable MESSAGE_ID, a Prometheus counter, and,
//! when `daemon.alert_webhook` is set, a JSON POST sent (and retried) beside the loop.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::Metrics;
use crate::cluster::election::Role;
use crate::cluster::messages::{PEER_DOWN, PEER_RECOVERED};
use crate::cluster::{read_prefix, ClusterError};

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
    let members = format!("{}members/", watch.prefix);
    loop {
        let Ok(mut events) = watch
            .client
            .watch(members.clone(), Some(WatchOptions::new().with_prefix()))
            .await
        else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        loop {
            if let Err(e) = evaluate(watch, term).await {
                warn!("checking the peers: {e}");
                break;
            }
            // A node added or removed is no members/ event but a `nodes` change; the slow
            // timer only backs up a watch that went quiet on a member cut off from the rest.
            tokio::select! {
                event = events.message() => if !matches!(event, Ok(Some(_))) { break },
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                _ = watch.nodes.changed() => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Compares live registrations with the configured nodes and records (and raises) each
/// transition once.
async fn evaluate(watch: &mut PeerWatch, term: i64) -> Result<(), ClusterError> {
    let up = read_prefix(&mut watch.client, &format!("{}members/", watch.prefix)).await?;
    let alerts_prefix = format!("{}alerts/peers/", watch.prefix);
    let down = read_prefix(&mut watch.client, &alerts_prefix).await?;
    let configured: BTreeSet<String> = watch.nodes.borrow().iter().cloned().collect();
    let guard = Compare::create_revision(watch.leader_key.clone(), CompareOp::Equal, term);
    for node in &configured {
        let key = format!("{alerts_prefix}{node}");
        let registered = up.contains_key(node);
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
            return Ok(());
        }
        if let Some(event) = event {
            raise(watch, node, event, term);
        }
    }
    // A node that left the cluster is not down; forget its alert quietly.
    for node in down.keys().filter(|n| !configured.contains(*n)) {
        let txn = Txn::new()
            .when([guard.clone()])
            .and_then([TxnOp::delete(format!("{alerts_prefix}{node}"), None)]);
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
    Ok(())
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
            "unix": crate::membership::now_unix(),
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
