//! etcd's own access control, for a cluster whose etcd milvus-fleet runs: every client
//! shows a certificate of the cluster CA, its common name is its etcd user, and the
//! user's roles bound what it reaches. Which user gets which role is data here:
//!
//! | user          | role                | reaches                                          |
//! |---------------|---------------------|--------------------------------------------------|
//! | a storage node| `root`              | everything (it leads: members, users, fencing)   |
//! | any other node| `milvus-fleet-node` | the cluster's prefix; Milvus' sessions, read     |
//! | `milvus`      | `milvus`            | Milvus' root path; key `health`, read            |
//! | `root`        | `root`              | nobody holds its certificate (etcd requires it)  |
//!
//! Removing a node deletes its user: every etcd member refuses its certificate's requests
//! from then on, whatever certificate lifetime is left.

use etcd_client::{Client, Permission, UserAddOptions};

use super::keys;

/// The etcd user of the Milvus roles' client certificate.
pub const MILVUS_USER: &str = "milvus";
const ROOT: &str = "root";
const NODE_ROLE: &str = "milvus-fleet-node";
const MILVUS_ROLE: &str = "milvus";

/// What a role may touch: read or read-write on a key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub prefix: String,
    pub write: bool,
}

/// The roles milvus-fleet defines, with their grants, for the cluster at `prefix` (pure).
pub fn roles(prefix: &str) -> Vec<(&'static str, Vec<Grant>)> {
    let grant = |prefix: &str, write| Grant {
        prefix: prefix.to_owned(),
        write,
    };
    vec![
        (
            NODE_ROLE,
            vec![grant(prefix, true), grant(keys::MILVUS_SESSIONS, false)],
        ),
        // Milvus reads key `health` (absent) to tell that etcd answers before it opens a
        // session.
        (
            MILVUS_ROLE,
            vec![grant(keys::MILVUS_ROOT, true), grant("health", false)],
        ),
    ]
}

/// The role of node user `node`: `root` for a node that may lead, else the node role.
pub fn node_role(may_lead: bool) -> &'static str {
    if may_lead {
        ROOT
    } else {
        NODE_ROLE
    }
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
    for (role, grants) in roles(prefix) {
        match client.role_add(role).await {
            Err(e) if !exists(&e) => return Err(failed(format!("adding role {role}"))(e)),
            _ => {}
        }
        for grant in grants {
            let permission = if grant.write {
                Permission::read_write(grant.prefix.clone())
            } else {
                Permission::read(grant.prefix.clone())
            }
            .with_prefix();
            client
                .role_grant_permission(role, permission)
                .await
                .map_err(failed(format!("granting {} to role {role}", grant.prefix)))?;
        }
    }
    add_user(client, ROOT, ROOT).await?;
    add_user(client, MILVUS_USER, MILVUS_ROLE).await?;
    add_user(client, node, node_role(may_lead)).await?;
    client
        .auth_enable()
        .await
        .map_err(failed("enabling auth"))?;
    Ok(())
}

/// Gives a joining node its user (see [`node_role`]). Safe to repeat.
pub async fn add_node(client: &mut Client, node: &str, may_lead: bool) -> Result<(), AuthError> {
    add_user(client, node, node_role(may_lead)).await
}

/// Takes a removed node's user away: its certificate reaches nothing from now on.
pub async fn remove_node(client: &mut Client, node: &str) -> Result<(), AuthError> {
    match client.user_delete(node).await {
        Err(e) if !e.to_string().contains("not found") => {
            Err(failed(format!("deleting user {node}"))(e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_node_that_may_lead_is_root_and_milvus_reaches_only_its_root_path() {
        assert_eq!(node_role(true), "root");
        assert_eq!(node_role(false), NODE_ROLE);
        let roles = roles("/milvus-fleet/c/");
        let milvus = &roles.iter().find(|(r, _)| *r == MILVUS_ROLE).unwrap().1;
        assert_eq!(
            milvus,
            &vec![
                Grant {
                    prefix: "by-dev".into(),
                    write: true
                },
                Grant {
                    prefix: "health".into(),
                    write: false
                }
            ]
        );
        let node = &roles.iter().find(|(r, _)| *r == NODE_ROLE).unwrap().1;
        assert!(node
            .iter()
            .all(|g| !g.write || g.prefix == "/milvus-fleet/c/"));
        // Milvus' sessions are inside its root path: the node role only reads them.
        assert!(keys::MILVUS_SESSIONS.starts_with(keys::MILVUS_ROOT));
    }
}
