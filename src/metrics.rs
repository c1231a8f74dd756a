//! The daemon's counters, kept by the modules that count (election, API, peer watch,
//! node supervision) and rendered in one place, the API's `/metrics` route. At the
//! bottom of the layers: every module may count here, none imports upward to do so.

use std::sync::atomic::AtomicU64;

/// Counters the daemon keeps for /metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Times this daemon became the leader.
    pub leader_elections: AtomicU64,
    pub api_requests: AtomicU64,
    pub api_errors: AtomicU64,
    pub api_micros: AtomicU64,
    /// Configured peers whose daemon is not registered (as the leader last saw).
    pub peers_down: AtomicU64,
    pub peer_down_alerts: AtomicU64,
    pub peer_recovered_alerts: AtomicU64,
    /// Wedged components this node's daemon restarted.
    pub wedged_restarts: AtomicU64,
    /// Component alerts: restart budget used up, unit failed.
    pub component_alerts: AtomicU64,
}
