//! Supervision: the leader's watch over its peers (peers.rs), every daemon's loop over
//! its node's units through systemd's D-Bus API (node.rs, reconcile.rs, systemd.rs,
//! health.rs), the component units' small main process (container.rs), and the lease
//! proof by which the standalone server's one fences it (lease_proof.rs).

pub mod container;
pub mod health;
pub mod lease_proof;
pub mod milvus_auth;
pub mod node;
pub mod peers;
pub mod reconcile;
pub mod systemd;
