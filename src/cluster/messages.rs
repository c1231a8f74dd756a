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
/// A running component stopped answering its health probe and the daemon restarted it
/// (fields: COMPONENT, UNIT, REASON).
pub const COMPONENT_WEDGED: &str = "5d0b3f6ad5a04a4c9a8e3f0c2b7e91d4";
/// A component used up its restart budget: the daemon leaves it alone (fields: COMPONENT, UNIT).
pub const COMPONENT_GAVE_UP: &str = "c41a7e2d9b3f4e0f8a6d1b5c7e9f2a38";
/// systemd gave up on a component unit: it failed (fields: COMPONENT, UNIT, RESULT).
pub const COMPONENT_FAILED: &str = "e2b94c6f1d8a4f37b0c5a9d3e6f1b284";
/// The standalone server started on this node, the one its placement names, once no
/// other node's Milvus session was left (fields: TERM).
pub const STANDALONE_STARTED: &str = "7f3c1e9a2b6d4c08a5e4f2d1b9c8a673";
/// The leader placed the standalone server on a node (fields: NODE, TERM).
pub const STANDALONE_PLACED: &str = "0c6e2f7d94b1458a9f3d8e5b2a71c406";
/// The leader revoked the Milvus sessions of a lost node's server: the node's daemon is
/// gone and its server does not answer its health endpoint (fields: NODE, TERM).
pub const STANDALONE_FENCED: &str = "9d4b2c7e1f0a4e6b8c3d5a7f2e1b9c04";
/// A node killed its own standalone server: its daemon could not prove that its lease
/// still lives, so the leader may count the node as lost and start a server elsewhere.
pub const STANDALONE_SELF_FENCED: &str = "60ebe6a14b2c4da288892b3c4994a53c";
/// This node's certificates could not be renewed; the message says until when the
/// current ones are valid and why.
pub const CERT_RENEWAL_FAILED: &str = "1b7d5e93c0a24f6e9d28a4c7f3e05b61";
