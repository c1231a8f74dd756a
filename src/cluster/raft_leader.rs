//! Keeps etcd's own (raft) leader off the fleet leader's host and off the host that runs
//! the standalone server.
//!
//! When one host carries both leaders, losing that host costs two elections in a row:
//! etcd's members first elect a new raft leader (up to twice the election timeout), and
//! that new raft leader then extends every lease by its TTL before any can expire, so the
//! fleet leader's key outlives its host by ~2.5 s instead of the lease TTL. The same
//! holds for the server's host: its daemon's registration, which the failover waits for,
//! would outlive it by a TTL more. While this daemon leads, it checks now and then where
//! the raft leader is and, when it is the etcd member on one of those hosts and every
//! member answers, hands raft leadership to a member on neither.

use std::time::Duration;

use etcd_client::{Client, Member};
use tokio::sync::watch;
use tracing::{info, warn};

use super::election::Role;
use super::{answering, ClusterError};

/// How often the leader looks where etcd's raft leader is. Raft leadership moves only
/// on an etcd election (a member restarted, lost, or added), and a look is two small
/// reads.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// The first look after becoming the leader: soon, but after the election settled.
const FIRST_CHECK: Duration = Duration::from_secs(1);
/// Bound on every etcd call here: this is housekeeping, never worth a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the standalone server runs, as the raft leader's keeper needs it.
pub enum ServerHost {
    /// No server (another topology, or not placed yet).
    None,
    /// Placed moments ago: a move now would be an etcd election (stalled keepalives,
    /// extended leases) while the new server starts, for a gain only at the next loss.
    /// The keeper waits.
    Moving,
    /// On the node with this address.
    At(String),
}

/// Runs while `role` is open: whenever this daemon leads, keeps etcd's raft leader off
/// `own_address` (this node's address, as the etcd members' client URLs name it) and off
/// the standalone server's node, which `server_host` tells; soon after `endpoints` change
/// as well as every few seconds.
pub async fn keep_off_this_host(
    client: Client,
    own_address: String,
    server_host: impl Fn() -> ServerHost,
    mut role: watch::Receiver<Role>,
    mut endpoints: watch::Receiver<super::EndpointChanges>,
) {
    loop {
        let leading = matches!(*role.borrow_and_update(), Role::Leader { .. });
        if !leading {
            if role.changed().await.is_err() {
                return;
            }
            continue;
        }
        let mut wait = FIRST_CHECK;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                changed = role.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                // A member dropped or back (a host cut off, or healed): raft leadership
                // may have moved, and may be movable again; look soon.
                Ok(()) = endpoints.changed() => {
                    wait = FIRST_CHECK;
                    continue;
                }
            }
            wait = CHECK_EVERY;
            let server = match server_host() {
                ServerHost::Moving => continue,
                ServerHost::None => None,
                ServerHost::At(address) => Some(address),
            };
            let mut client = client.clone();
            let avoid: Vec<String> = std::iter::once(own_address.clone()).chain(server).collect();
            match tokio::time::timeout(CALL_TIMEOUT * 3, move_off(&mut client, &avoid)).await {
                Ok(Ok(Some((from, to)))) => info!(
                    "moved etcd's raft leadership from {from} to {to}: it shared a host with \
                     the fleet leader or the standalone server, and losing that host would wait \
                     out an etcd election before the failover"
                ),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => warn!("cannot check where etcd's raft leader is: {e}"),
                Err(_) => warn!(
                    "cannot check where etcd's raft leader is: no answer within {:?}",
                    CALL_TIMEOUT * 3
                ),
            }
        }
    }
}

/// The host part of an etcd client URL (`http://10.0.0.1:2379` -> `10.0.0.1`).
pub(super) fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    }
}

fn on_host(member: &Member, address: &str) -> bool {
    member
        .client_urls()
        .iter()
        .any(|url| url_host(url) == address)
}

/// Moves raft leadership away when the raft leader is a member on one of the `avoid`
/// addresses, to a member on none of them; returns the names it moved from and to.
async fn move_off(
    client: &mut Client,
    avoid: &[String],
) -> Result<Option<(String, String)>, ClusterError> {
    let raft_leader = client.status().await?.leader();
    let members = client.member_list().await?;
    let members = members.members();
    let Some(leader) = members.iter().find(|m| m.id() == raft_leader) else {
        return Ok(None);
    };
    if !avoid.iter().any(|a| on_host(leader, a)) {
        return Ok(None);
    }
    // Only while every member answers: a move is an etcd election, and a new raft leader
    // extends every lease by its whole TTL. While a member is lost, the leases of what
    // ran there (its Milvus sessions, which the standalone server's handover waits out)
    // must expire on time, not a TTL later.
    let mut target = None;
    for member in members
        .iter()
        .filter(|m| m.id() != raft_leader && !m.is_learner())
    {
        if answering(member.client_urls()).await.is_empty() {
            return Ok(None);
        }
        if !avoid.iter().any(|a| on_host(member, a)) {
            target.get_or_insert(member);
        }
    }
    let Some(target) = target else {
        return Ok(None);
    };
    // etcd takes MoveLeader from the raft leader only; the balanced client could send it
    // to any member, so ask the leader's own endpoints.
    let options = super::connect_options(leader.client_urls())?
        .with_connect_timeout(CALL_TIMEOUT)
        .with_timeout(CALL_TIMEOUT);
    let mut direct = Client::connect(leader.client_urls(), Some(options)).await?;
    direct.move_leader(target.id()).await?;
    Ok(Some((leader.name().to_owned(), target.name().to_owned())))
}

#[cfg(test)]
mod tests {
    use super::url_host;

    #[test]
    fn the_host_of_a_client_url_is_its_address_without_scheme_port_or_path() {
        assert_eq!(url_host("http://10.0.0.1:2379"), "10.0.0.1");
        assert_eq!(url_host("https://etcd-1.example:2379/"), "etcd-1.example");
        assert_eq!(url_host("http://[fd00::1]:2379"), "fd00::1");
        assert_eq!(url_host("10.0.0.2"), "10.0.0.2");
    }
}
