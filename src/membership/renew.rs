//! Certificate renewal, both sides.
//!
//! Root on every node runs `milvus-fleet pki renew` once a day (milvus-fleet-renew.timer).
//! When this node's certificate, or the Milvus roles' etcd client certificate it keeps,
//! has less than a third of its lifetime left, it makes new keys and certificate
//! requests and sends them to a storage node's API over mutual TLS with the node's
//! current certificate: that certificate is the proof of who asks, so no token is
//! needed and a removed node's (revoked) certificate gets nothing. The storage node signs
//! for the name in the caller's certificate (never a name from the request), with the
//! addresses the cluster configuration holds, and makes the new certificate the node's
//! current one in the same transaction that checks the old one still is. Root then
//! writes the new files (its data-plane copies and the daemon's) and restarts the daemon
//! (a graceful handover if it leads). A renewal that fails leaves every file as it was,
//! says why in the journal with an alert (`CERT_RENEWAL_FAILED`), and fails the unit, so
//! `systemctl --failed` shows it; the next day's run tries again.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tracing::{error, info};

use super::join::JoinError;
use super::store::MembershipStore;
use crate::cluster::messages::CERT_RENEWAL_FAILED;
use crate::config::model::Role;
use crate::config::{ConfigPaths, Settings};
use crate::host::TLS_DIR;
use crate::pki::{Ca, Pem};

/// The API route a node renews its certificates on.
pub const ROUTE: &str = "/v1/certificates/renew";

/// What a node sends to renew its certificates (the caller's own name comes from its
/// certificate).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// A request for the node's new certificate (its new key stays on the node).
    pub csr: String,
    /// A request for the Milvus roles' etcd client certificate (a compute node).
    #[serde(default)]
    pub milvus_csr: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewResponse {
    pub node_cert: String,
    #[serde(default)]
    pub milvus_cert: Option<String>,
}

/// Signs the renewal of node `node`, whose current certificate has SHA-256 `current`
/// (the caller's, as the TLS handshake showed it), and makes the new certificate its
/// current one.
pub async fn renew(
    store: &mut MembershipStore,
    ca: &Ca,
    node: &str,
    current: &str,
    request: &RenewRequest,
) -> Result<RenewResponse, JoinError> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let (config, _, _) = store.config().await?;
    let entry = config
        .nodes
        .iter()
        .find(|n| n.name == node)
        .ok_or_else(|| JoinError::Conflict(format!("{node} is not a node of this cluster")))?;
    let node_cert = ca
        .sign_csr(&request.csr, node, std::slice::from_ref(&entry.address))
        .map_err(|e| JoinError::Invalid(format!("csr: {e}")))?;
    let milvus_cert = match (&request.milvus_csr, entry.roles.contains(&Role::Compute)) {
        (Some(csr), true) => Some(
            ca.sign_etcd_client_csr(csr, crate::cluster::auth::MILVUS_USER)
                .map_err(|e| JoinError::Invalid(format!("milvus_csr: {e}")))?,
        ),
        (Some(_), false) => {
            return Err(JoinError::Invalid(format!(
                "milvus_csr: {node} runs no Milvus role"
            )))
        }
        (None, _) => None,
    };
    let hash = crate::pki::cert_sha256(&node_cert)
        .map_err(|e| JoinError::Invalid(format!("the signed certificate: {e}")))?;
    let cert_key = store.cert_key(node);
    // Only while the caller's certificate is still the node's current one: two renewals
    // at once, or a removal meanwhile, leave one winner (or none).
    let txn = Txn::new()
        .when([Compare::value(cert_key.clone(), CompareOp::Equal, current)])
        .and_then([TxnOp::put(cert_key, hash, None)]);
    if !store.client.txn(txn).await?.succeeded() {
        return Err(JoinError::Conflict(format!(
            "the certificate {node} presented is no longer its current one (renewed or removed meanwhile)"
        )));
    }
    Ok(RenewResponse {
        node_cert,
        milvus_cert,
    })
}

/// Whether a certificate valid from `not_before` to `not_after` (Unix seconds) is due for
/// renewal at `now`: less than a third of its lifetime left (pure).
pub fn due(not_before: i64, not_after: i64, now: i64) -> bool {
    let lifetime = (not_after - not_before).max(0);
    not_after - now < lifetime / 3
}

/// A certificate file's validity, Unix seconds (not before, not after).
fn validity(path: &Path) -> anyhow::Result<(i64, i64)> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate: {e}", path.display()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("{}: not a certificate: {e}", path.display()))?;
    let validity = cert.validity();
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

fn date(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| unix.to_string())
}

/// What `pki renew` did.
pub enum Renewed {
    /// Nothing due: the node certificate ends then, renewal starts then.
    NotDue { ends: String, from: String },
    /// Renewed: the new node certificate ends then.
    Renewed { ends: String, milvus: bool },
}

/// Root's renewal of this node's certificates (see the module docs): when one is due (or
/// `force`), new keys, signed by a storage node, written where the old ones were, and the
/// daemon restarted. A failure is logged as an alert and changes no file.
pub fn renew_this_node(paths: &ConfigPaths, force: bool) -> anyhow::Result<Renewed> {
    crate::host::require_root("pki renew")?;
    let tls = PathBuf::from(TLS_DIR);
    let renewed = renew_if_due(paths, &tls, force);
    if let Err(e) = &renewed {
        let ends =
            validity(&tls.join("etcd.crt")).map_or_else(|_| "unknown".into(), |(_, to)| date(to));
        error!(
            message_id = CERT_RENEWAL_FAILED,
            "this node's certificates (valid until {ends}) could not be renewed: {e:#}"
        );
    }
    renewed
}

fn renew_if_due(paths: &ConfigPaths, tls: &Path, force: bool) -> anyhow::Result<Renewed> {
    let settings = Settings::load(paths)?;
    let (not_before, not_after) = validity(&tls.join("etcd.crt"))?;
    let milvus_cert = tls.join("milvus.crt");
    let milvus = milvus_cert.is_file();
    let milvus_due = milvus && validity(&milvus_cert).is_ok_and(|(from, to)| due(from, to, now()));
    if !force && !due(not_before, not_after, now()) && !milvus_due {
        let lifetime = not_after - not_before;
        return Ok(Renewed::NotDue {
            ends: date(not_after),
            from: date(not_after - lifetime / 3),
        });
    }
    let runtime = crate::host::runtime()?;
    let ends = runtime.block_on(renew_files(&settings, tls, milvus))?;
    info!(node = %settings.node_name, "certificates renewed: the node's is valid until {ends}");
    restart_daemon();
    Ok(Renewed::Renewed { ends, milvus })
}

fn now() -> i64 {
    crate::host::now_unix() as i64
}

/// Asks the storage nodes in turn for new certificates; writes them only once every
/// answer checked out.
async fn renew_files(settings: &Settings, tls: &Path, milvus: bool) -> anyhow::Result<String> {
    let node = &settings.node_name;
    let (csr, key) = crate::pki::node_csr(node)?;
    let milvus_request = if milvus {
        Some(crate::pki::node_csr(crate::cluster::auth::MILVUS_USER)?)
    } else {
        None
    };
    let request = RenewRequest {
        csr: csr.clone(),
        milvus_csr: milvus_request.as_ref().map(|(csr, _)| csr.clone()),
    };
    let client = mutual_tls_client(tls)?;
    let config = &settings.config;
    // This node first when it signs itself (a storage node), then the other storage nodes.
    let mut signers: Vec<_> = config
        .nodes
        .iter()
        .filter(|n| n.roles.contains(&Role::Storage))
        .collect();
    signers.sort_by_key(|n| n.name != *node);
    let mut refusals = Vec::new();
    let mut answer = None;
    for signer in signers {
        let host = if signer.address.contains(':') {
            format!("[{}]", signer.address)
        } else {
            signer.address.clone()
        };
        let url = format!("https://{host}:{}{ROUTE}", config.daemon.api_port);
        match client.post(&url).json(&request).send().await {
            Ok(response) if response.status().is_success() => {
                answer = Some(
                    response
                        .json::<RenewResponse>()
                        .await
                        .with_context(|| format!("{}: reading the answer", signer.name))?,
                );
                break;
            }
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                refusals.push(format!("{}: HTTP {status}: {}", signer.name, body.trim()));
            }
            Err(e) => refusals.push(format!(
                "{}: {}",
                signer.name,
                crate::logging::error_chain(&e)
            )),
        }
    }
    let Some(answer) = answer else {
        bail!("no storage node signed ({})", refusals.join("; "));
    };
    // The answer must be the cluster CA's and certify the keys made here.
    let ca_cert = std::fs::read_to_string(tls.join("ca.crt"))
        .with_context(|| format!("reading {}", tls.join("ca.crt").display()))?;
    check_signed_by(&ca_cert, &answer.node_cert).context("the signed node certificate")?;
    let pin = crate::pki::pin_of_csr(&csr)?;
    if crate::pki::pin_of_cert(&answer.node_cert)? != pin {
        bail!("the signed node certificate is not for the key this node made");
    }
    let milvus_pem = match (&milvus_request, &answer.milvus_cert) {
        (Some((csr, key)), Some(cert)) => {
            check_signed_by(&ca_cert, cert).context("the signed Milvus certificate")?;
            if crate::pki::pin_of_cert(cert)? != crate::pki::pin_of_csr(csr)? {
                bail!("the signed Milvus certificate is not for the key this node made");
            }
            Some((cert.clone(), key.clone()))
        }
        (Some(_), None) => bail!("the signer sent no Milvus certificate"),
        _ => None,
    };
    // The storage node made the new certificate the node's current one: write it
    // everywhere the old one was (the daemon's own, root's copies for etcd and Milvus),
    // as init and join write them.
    let node_pem = Pem {
        cert: answer.node_cert,
        key,
    };
    let milvus_pem = milvus_pem.map(|(cert, key)| Pem { cert, key });
    super::init::write_pki(&ca_cert, None, &node_pem)?;
    super::init::write_tls(&ca_cert, &node_pem, milvus_pem.as_ref())?;
    let (_, ends) = validity(&tls.join("etcd.crt"))?;
    Ok(date(ends))
}

/// Fails unless `cert_pem` is a client certificate the CA `ca_pem` signed, valid now:
/// the signer is a member, but the cluster file that named it is the daemon's.
fn check_signed_by(ca_pem: &str, cert_pem: &str) -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .build()?;
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
    verifier
        .verify_client_cert(&cert, &[], UnixTime::now())
        .map_err(|e| anyhow::anyhow!("not the cluster CA's: {e}"))?;
    Ok(())
}

/// An HTTPS client that trusts only the cluster CA and shows this node's certificate.
fn mutual_tls_client(tls: &Path) -> anyhow::Result<reqwest::Client> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(tls.join("ca.crt"))? {
        roots.add(cert?)?;
    }
    let chain =
        CertificateDer::pem_file_iter(tls.join("etcd.crt"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(tls.join("etcd.key"))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(std::time::Duration::from_secs(30))
        .no_proxy()
        .build()?)
}

/// The daemon reads its certificate at start: restart it if it runs (a leader hands over).
fn restart_daemon() {
    let restarted = std::process::Command::new("systemctl")
        .args(["try-restart", "milvus-fleet.service"])
        .status();
    if !restarted.is_ok_and(|s| s.success()) {
        tracing::warn!("could not restart milvus-fleet.service: it reads its new certificate when it next starts");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_accepted_only_from_the_cluster_ca() {
        let ca = Ca::create("c").unwrap();
        let other = Ca::create("c").unwrap();
        let (csr, _) = crate::pki::node_csr("n1").unwrap();
        let signed = ca.sign_csr(&csr, "n1", &["10.0.0.1".into()]).unwrap();
        let forged = other.sign_csr(&csr, "n1", &["10.0.0.1".into()]).unwrap();
        check_signed_by(&ca.pem().cert, &signed).unwrap();
        assert!(check_signed_by(&ca.pem().cert, &forged).is_err());
        let (milvus_csr, _) = crate::pki::node_csr("milvus").unwrap();
        let milvus = ca.sign_etcd_client_csr(&milvus_csr, "milvus").unwrap();
        check_signed_by(&ca.pem().cert, &milvus).unwrap();
    }

    #[test]
    fn a_certificate_is_due_in_the_last_third_of_its_lifetime() {
        let year = 365 * 24 * 3600;
        assert!(!due(0, year, 0));
        assert!(!due(0, year, year / 2));
        assert!(due(0, year, year - year / 3 + 1));
        assert!(due(0, year, year + 10), "an expired certificate is due");
    }
}
