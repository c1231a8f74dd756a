//! Supervision: the leader's watch over its peers (peers.rs), every daemon's loop over
//! its node's units through systemd's D-Bus API (node.rs, reconcile.rs, systemd.rs,
//! health.rs), and the component units' small main process (container.rs).

pub mod container;
pub mod health;
pub mod node;
pub mod peers;
pub mod reconcile;
pub mod systemd;
