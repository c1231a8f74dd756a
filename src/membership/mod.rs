//! Membership: how a VM becomes part of the cluster and leaves it.
//!
//! - `init` (init.rs) makes the CA and the first member;
//! - join tokens (token.rs) let a new VM in, checked and counted in etcd (store.rs);
//! - `join` (join.rs) is both sides of the handshake: the joining CLI checks the CA pin
//!   before it sends anything, the daemon it talks to admits it;
//! - `apply` (apply.rs) is the root side on every node: cluster config -> rendered files
//!   -> units, restarting only what changed;
//! - node removal (remove.rs) is a leader job;
//! - certificate renewal (renew.rs): root asks a storage node with the current certificate;
//! - cloud-init (cloud_init.rs) prints the user-data that joins a VM at its first boot.

pub mod apply;
pub mod cloud_init;
pub mod init;
pub mod join;
pub mod remove;
pub mod renew;
pub mod store;
pub mod token;

pub use crate::host::now_unix;
