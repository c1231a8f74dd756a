//! etcd's own access control, for a cluster whose etcd milvus-fleet runs: every client
//! shows a certificate of the cluster CA, its common name is its etcd user, and the
//! user's roles bound what it reaches. Which user gets which role is data here:
//!
//! | user            | role                       | reaches                                   |
//! |-----------------|----------------------------|-------------------------------------------|
//! | a storage node  | `root`                     | everything (it leads: members, users, fencing) |
//! | any other node N| `milvus-fleet-node-N`      | the cluster's prefix, read; its own registration (`members/N`), read-write; Milvus' sessions, read |
//! | `milvus`        | `milvus`                   | Milvus' root path; key `health`, read     |
//! | `root`          | `root`                     | nobody holds its certificate (etcd requires it) |
//!
//! So a compromised compute or witness node can change no record of the cluster (its
//! configuration, tokens, jobs, the leader key, other registrations); operators change
//! them through a storage node. Removing a node deletes its user (and role): every etcd
//! member refuses its certificate's requests from then on, whatever lifetime is left.

use etcd_client::{Client, Permission, UserAddOptions};

use super::keys;

/// The etcd user of the Milvus roles' client certificate.
pub const MILVUS_USER: &str = "milvus";
const ROOT: &str = "root";
const MILVUS_ROLE: &str = "milvus";

/// What a role may touch: read or read-write on a key prefix, or on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub key: String,
    /// `key` is a prefix (every key under it), not one key.
    pub prefix: bool,
    pub write: bool,
}

fn grant(key: &str, prefix: bool, write: bool) -> Grant {
    Grant {
        key: key.to_owned(),
        prefix,
        write,
    }
}

/// The roles every cluster has, with their grants (pure).
pub fn shared_roles() -> Vec<(String, Vec<Grant>)> {
    // Milvus reads key `health` (absent) to tell that etcd answers before it opens a
    // session.
    vec![(
        MILVUS_ROLE.to_owned(),
        vec![
            grant(keys::MILVUS_ROOT, true, true),
            grant("health", false, false),
        ],
    )]
}

/// The role of node user `node` of the cluster at `prefix`: `root` for a node that may
/// lead (no grants to make), else a role of its own with its grants (pure).
pub fn node_role(prefix: &str, node: &str, may_lead: bool) -> (String, Vec<Grant>) {
    if may_lead {
        return (ROOT.to_owned(), vec![]);
    }
    (
        format!("milvus-fleet-node-{node}"),
        vec![
            grant(prefix, true, false),
            // Its registration, put and revoked with its lease (a lease revoke needs
            // write access to the keys it holds).
            grant(&keys::member(prefix, node), false, true),
            grant(keys::MILVUS_SESSIONS, true, false),
        ],
    )
}

#[derive(Debug, thiserror::Error)]
#[error("etcd access control: {what}: {error}")]
pub struct AuthError {
    what: String,
    error: etcd_client::Error,
}

fn failed(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> AuthError {
    let what = what.into();
    move |error| AuthError { what, error }
}

/// Whether etcd refused because the thing exists already (a repeated init or join).
fn exists(error: &etcd_client::Error) -> bool {
    error.to_string().contains("already exists")
}

/// Makes `role` with `grants` (the grants are added again on a repeat: etcd keeps one).
async fn add_role(client: &mut Client, role: &str, grants: &[Grant]) -> Result<(), AuthError> {
    if role == ROOT {
        return Ok(());
    }
    match client.role_add(role).await {
        Err(e) if !exists(&e) => return Err(failed(format!("adding role {role}"))(e)),
        _ => {}
    }
    for grant in grants {
        let permission = if grant.write {
            Permission::read_write(grant.key.clone())
        } else {
            Permission::read(grant.key.clone())
        };
        let permission = if grant.prefix {
            permission.with_prefix()
        } else {
            permission
        };
        client
            .role_grant_permission(role, permission)
            .await
            .map_err(failed(format!("granting {} to role {role}", grant.key)))?;
    }
    Ok(())
}

async fn add_user(client: &mut Client, user: &str, role: &str) -> Result<(), AuthError> {
    // No password: the user is its certificate's common name, and only that.
    match client
        .user_add(user, "", Some(UserAddOptions::new().with_no_pwd()))
        .await
    {
        Err(e) if !exists(&e) => return Err(failed(format!("adding user {user}"))(e)),
        _ => {}
    }
    client
        .user_grant_role(user, role)
        .await
        .map_err(failed(format!("granting role {role} to user {user}")))?;
    Ok(())
}

/// Turns access control on for a new cluster at `prefix` whose first node is `node`:
/// the roles, `root`, `milvus` and the node's user, then auth. Safe to repeat.
pub async fn enable(
    client: &mut Client,
    prefix: &str,
    node: &str,
    may_lead: bool,
) -> Result<(), AuthError> {
    for (role, grants) in shared_roles() {
        add_role(client, &role, &grants).await?;
    }
    add_user(client, ROOT, ROOT).await?;
    add_user(client, MILVUS_USER, MILVUS_ROLE).await?;
    add_node(client, prefix, node, may_lead).await?;
    client
        .auth_enable()
        .await
        .map_err(failed("enabling auth"))?;
    Ok(())
}

/// Gives node `node` of the cluster at `prefix` its user and role (see [`node_role`]).
/// Safe to repeat.
pub async fn add_node(
    client: &mut Client,
    prefix: &str,
    node: &str,
    may_lead: bool,
) -> Result<(), AuthError> {
    let (role, grants) = node_role(prefix, node, may_lead);
    add_role(client, &role, &grants).await?;
    add_user(client, node, &role).await
}

/// Takes a removed node's user (and its own role) away: its certificate reaches nothing
/// from now on.
pub async fn remove_node(client: &mut Client, prefix: &str, node: &str) -> Result<(), AuthError> {
    let gone = |e: &etcd_client::Error| e.to_string().contains("not found");
    match client.user_delete(node).await {
        Err(e) if !gone(&e) => return Err(failed(format!("deleting user {node}"))(e)),
        _ => {}
    }
    let (role, _) = node_role(prefix, node, false);
    match client.role_delete(role.as_str()).await {
        Err(e) if !gone(&e) => Err(failed(format!("deleting role {role}"))(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_node_that_may_lead_is_root_and_others_write_only_their_registration() {
        let prefix = "/milvus-fleet/c/";
        assert_eq!(node_role(prefix, "s1", true), ("root".to_owned(), vec![]));
        let (role, grants) = node_role(prefix, "c1", false);
        assert_eq!(role, "milvus-fleet-node-c1");
        let writes: Vec<&Grant> = grants.iter().filter(|g| g.write).collect();
        assert_eq!(
            writes,
            vec![&Grant {
                key: "/milvus-fleet/c/members/c1".into(),
                prefix: false,
                write: true
            }],
            "a compute or witness node writes its own registration and nothing else"
        );
        assert!(grants.contains(&grant(prefix, true, false)));
        let shared = shared_roles();
        let milvus = &shared.iter().find(|(r, _)| r == MILVUS_ROLE).unwrap().1;
        assert_eq!(
            milvus,
            &vec![grant("by-dev", true, true), grant("health", false, false)]
        );
        // Milvus' sessions are inside its root path: the node role only reads them.
        assert!(keys::MILVUS_SESSIONS.starts_with(keys::MILVUS_ROOT));
    }
}
