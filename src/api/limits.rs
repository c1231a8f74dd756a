//! What a peer of the public API port can hold or cost before it has proven anything:
//! the port is open to the network, which the cluster does not trust. The connection
//! slots, the handshake and header bounds and the join route's rate are here, as data;
//! [`super::serve_tls`] applies them on a runtime of its own, so that no flood on the
//! port can hold up the daemon's lease keepalives.

use std::time::Duration;

use tokio::time::Instant;

/// Connections held at once; one past this is closed at once.
pub const MAX_CONNECTIONS: usize = 256;
/// A TLS handshake not done by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A request head not read by then closes the connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection older than this is closed once its request in flight ends: an idle
/// keep-alive connection does not hold a slot for ever.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// Join requests: a burst of this many, then one per [`JOIN_REFILL`] (a cloud-init wave
/// of new VMs retries after a 429; a forged-token flood costs one refusal each).
pub const JOIN_BURST: f64 = 20.0;
pub const JOIN_REFILL: Duration = Duration::from_millis(500);

/// A token bucket (pure: the caller passes the time).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
    capacity: f64,
    refill: Duration,
}

impl Bucket {
    pub fn new(capacity: f64, refill: Duration, now: Instant) -> Self {
        Self {
            tokens: capacity,
            at: now,
            capacity,
            refill,
        }
    }

    /// Takes one token at `now`; false when none is left.
    pub fn take(&mut self, now: Instant) -> bool {
        let earned =
            now.saturating_duration_since(self.at).as_secs_f64() / self.refill.as_secs_f64();
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The join route's bucket, shared by its requests.
pub fn join_bucket() -> std::sync::Arc<std::sync::Mutex<Bucket>> {
    std::sync::Arc::new(std::sync::Mutex::new(Bucket::new(
        JOIN_BURST,
        JOIN_REFILL,
        Instant::now(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::new(3.0, Duration::from_millis(500), start);
        assert!((0..3).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        // Half a refill earns nothing whole; a whole one earns one.
        assert!(!bucket.take(start + Duration::from_millis(250)));
        assert!(bucket.take(start + Duration::from_millis(500)));
        assert!(!bucket.take(start + Duration::from_millis(500)));
        // A long quiet spell fills it to its capacity, not past it.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.take(later)));
        assert!(!bucket.take(later));
    }
}
