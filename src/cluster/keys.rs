//! Every etcd key milvus-fleet reads or writes, built here and nowhere else: the
//! cluster's layout in one file. A cluster's keys live under one prefix:
//!
//! ```text
//! /milvus-fleet/<cluster>/
//!   leader                     the leader key, bound to the leader's lease; its create
//!                              revision is the term (the fencing token)
//!   leader-acting              the leader's guarded write each second
//!   members/<node>             a daemon's registration (its API URL), bound to its lease
//!   config                     the cluster configuration (TOML)
//!   tokens/<id>                join tokens (hashes only)
//!   certs/<node>               the SHA-256 of each node's certificate
//!   revoked/<node>             certificates of removed nodes
//!   jobs/<id>                  job records
//!   locks/<resource>           a job's lock on the resource it changes
//!   drill-effects/<id>/<step>  what a drill job's steps did (tests of the job engine)
//!   placement/standalone       where the standalone server runs (standalone-ha)
//!   alerts/peers/<node>        a raised peer-down alert (one per lost node)
//! ```
//!
//! One key lives outside the prefix: `/milvus-fleet-ca/<cluster>`, the cluster CA's
//! private key when milvus-fleet runs etcd (only etcd's `root` role reads it: the storage
//! nodes, which sign joining nodes' certificates; see cluster::auth).
//!
//! Milvus keeps its own sessions under `by-dev/meta/session/` (etcd.rootPath `by-dev`),
//! read to tell where a server runs and revoked to fence a lost one.

use crate::config::FleetConfig;

/// Milvus' keys (etcd.rootPath): the `milvus` etcd user's whole reach.
pub const MILVUS_ROOT: &str = "by-dev";

/// Where Milvus keeps its component sessions in etcd (etcd.rootPath + metaSubPath).
pub const MILVUS_SESSIONS: &str = "by-dev/meta/session/";

/// The key prefix of one cluster.
pub fn prefix(config: &FleetConfig) -> String {
    format!("/milvus-fleet/{}/", config.cluster.name)
}

/// The CA key of the cluster at `prefix` (`/milvus-fleet/<cluster>/`): beside the
/// prefix, not in it, so that a role granted the prefix does not reach it.
pub fn ca_key(prefix: &str) -> String {
    let cluster = prefix
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    format!("/milvus-fleet-ca/{cluster}")
}

pub fn leader(prefix: &str) -> String {
    format!("{prefix}leader")
}

pub fn leader_acting(prefix: &str) -> String {
    format!("{prefix}leader-acting")
}

/// Every daemon registration (a prefix).
pub fn members(prefix: &str) -> String {
    format!("{prefix}members/")
}

pub fn member(prefix: &str, node: &str) -> String {
    format!("{prefix}members/{node}")
}

pub fn config(prefix: &str) -> String {
    format!("{prefix}config")
}

/// Every join token (a prefix).
pub fn tokens(prefix: &str) -> String {
    format!("{prefix}tokens/")
}

pub fn token(prefix: &str, id: &str) -> String {
    format!("{prefix}tokens/{id}")
}

pub fn cert(prefix: &str, node: &str) -> String {
    format!("{prefix}certs/{node}")
}

/// Every revoked certificate (a prefix).
/// Every current node certificate's record (see [`cert`]).
pub fn certs_all(prefix: &str) -> String {
    format!("{prefix}certs/")
}

pub fn revoked_all(prefix: &str) -> String {
    format!("{prefix}revoked/")
}

pub fn revoked(prefix: &str, node: &str) -> String {
    format!("{prefix}revoked/{node}")
}

/// Every job record (a prefix).
pub fn jobs(prefix: &str) -> String {
    format!("{prefix}jobs/")
}

pub fn job(prefix: &str, id: &str) -> String {
    format!("{prefix}jobs/{id}")
}

pub fn lock(prefix: &str, resource: &str) -> String {
    format!("{prefix}locks/{resource}")
}

pub fn drill_effect(prefix: &str, id: &str, step: u32) -> String {
    format!("{prefix}drill-effects/{id}/{step:04}")
}

pub fn standalone_placement(prefix: &str) -> String {
    format!("{prefix}placement/standalone")
}

/// Every raised peer-down alert (a prefix).
pub fn peer_alerts(prefix: &str) -> String {
    format!("{prefix}alerts/peers/")
}

pub fn peer_alert(prefix: &str, node: &str) -> String {
    format!("{prefix}alerts/peers/{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nest_under_their_prefixes() {
        let p = "/milvus-fleet/c/";
        assert!(member(p, "h1").starts_with(&members(p)));
        assert!(token(p, "t").starts_with(&tokens(p)));
        assert!(revoked(p, "h1").starts_with(&revoked_all(p)));
        assert!(job(p, "j").starts_with(&jobs(p)));
        assert!(peer_alert(p, "h1").starts_with(&peer_alerts(p)));
        assert_eq!(
            drill_effect(p, "j", 7),
            "/milvus-fleet/c/drill-effects/j/0007"
        );
        assert_eq!(ca_key(p), "/milvus-fleet-ca/c");
        assert!(!ca_key(p).starts_with(p));
        // The leader key is no prefix of the acting key's watchers' concern: distinct keys.
        assert_ne!(leader(p), leader_acting(p));
    }
}
