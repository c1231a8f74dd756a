//! journald MESSAGE_IDs of the events an operator looks for:
//! `journalctl MESSAGE_ID=<id>` lists every occurrence.

/// This daemon became the cluster's leader (fields: TERM, NODE).
pub const LEADER_ELECTED: &str = "ad7e514e78b14466b1d62e0895a7e250";
/// This daemon stopped being the leader: lease lost, fenced, or resigned (fields: TERM, REASON).
pub const LEADER_LOST: &str = "8b6f66f41af649208c7581d7e6ce86de";
/// A job changed state: queued, running, succeeded, failed, cancelled (fields: JOB, STATE).
pub const JOB_STATE: &str = "50f0c29b700c400880b3c6cd9f50ea96";
/// The leader found a peer's daemon gone: its lease expired (fields: PEER, TERM).
pub const PEER_DOWN: &str = "3eab256b8aa646e690c4e162f94c0fe8";
/// A peer that was down is registered again (fields: PEER, TERM).
pub const PEER_RECOVERED: &str = "a6c7801f4743406eb8270a1fc7c1a53a";
/// The daemon is up and told systemd READY (fields: NODE).
pub const DAEMON_READY: &str = "bbec81ecd6ba4931bc992b49cf555be1";
