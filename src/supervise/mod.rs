//! Supervision: what the daemons watch. For now the leader's watch over its peers
//! (peers.rs); the D-Bus reconcile loop over this node's units comes next.

pub mod health;
pub mod node;
pub mod peers;
pub mod reconcile;
pub mod systemd;
