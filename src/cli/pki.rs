//! `milvus-fleet pki ...`: the cluster CA and node certificates by hand. `init` and
//! `join` do the same automatically; these are for operators who manage keys themselves.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use crate::pki::{self, Ca, Pem};

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Renew this node's certificates when a third of their lifetime is left (as root;
    /// what milvus-fleet-renew.timer runs daily): new keys, signed by a storage node
    /// that checks the current certificate; then the daemon restarts.
    Renew {
        /// Renew now, due or not.
        #[arg(long)]
        force: bool,
    },
    /// Make a new cluster CA: DIR/ca.crt and DIR/ca.key (0600). Prints its pin.
    CreateCa {
        #[arg(long)]
        cluster: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Issue a node certificate with a new key: DIR/node.crt and DIR/node.key (0600); or,
    /// with --operator NAME, an operator's client certificate: DIR/operator.crt and
    /// DIR/operator.key (0600), which the API lets mint tokens, remove nodes and run jobs.
    Issue {
        /// Directory with ca.crt and ca.key.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        #[arg(
            long,
            required_unless_present = "operator",
            conflicts_with = "operator"
        )]
        node: Option<String>,
        /// Issue an operator's certificate for NAME instead of a node's.
        #[arg(long, value_name = "NAME", conflicts_with = "addresses")]
        operator: Option<String>,
        /// An address the node is reached at (repeat it).
        #[arg(long = "address", value_name = "ADDR")]
        addresses: Vec<String>,
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=3650))]
        days: u64,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Make a key and a certificate request for this node: DIR/node.csr, DIR/node.key (0600).
    Csr {
        #[arg(long)]
        node: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Sign a node's certificate request with the CA; writes the certificate to --out.
    Sign {
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        #[arg(long, value_name = "FILE")]
        csr: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long = "address", value_name = "ADDR")]
        addresses: Vec<String>,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the pin (sha256 of the public key) of a CA certificate.
    Pin {
        #[arg(value_name = "CA_CERT")]
        cert: PathBuf,
    },
}

pub fn run(command: PkiCommand, paths: &crate::config::ConfigPaths) -> anyhow::Result<()> {
    match command {
        PkiCommand::Renew { force } => {
            use crate::membership::renew::{renew_this_node, Renewed};
            // The timer's unit logs to the journal: the alert needs its MESSAGE_ID.
            crate::logging::init("info");
            match renew_this_node(paths, force)? {
                Renewed::NotDue { ends, from } => println!(
                    "Not due: this node's certificate is valid until {ends}; renewal from {from}."
                ),
                Renewed::Renewed { ends, milvus } => println!(
                    "Renewed this node's certificate{} (valid until {ends}) and restarted the daemon.",
                    if milvus { " and the Milvus roles' etcd certificate" } else { "" }
                ),
            }
        }
        PkiCommand::CreateCa { cluster, out } => {
            let ca = Ca::create(&cluster)?;
            write(&out.join("ca.crt"), &ca.pem().cert, 0o644)?;
            write(&out.join("ca.key"), &ca.pem().key, 0o600)?;
            println!("{}", ca.pin());
        }
        PkiCommand::Issue {
            ca,
            node,
            operator,
            addresses,
            days,
            out,
        } => {
            let ca = load_ca(&ca)?;
            let valid_for = std::time::Duration::from_secs(days * 24 * 3600);
            let (issued, file) = match (node, operator) {
                (_, Some(operator)) => (ca.issue_operator(&operator, valid_for)?, "operator"),
                (Some(node), None) => (ca.issue_node(&node, &addresses, valid_for)?, "node"),
                (None, None) => anyhow::bail!("name a --node or an --operator"),
            };
            write(&out.join(format!("{file}.crt")), &issued.cert, 0o644)?;
            write(&out.join(format!("{file}.key")), &issued.key, 0o600)?;
        }
        PkiCommand::Csr { node, out } => {
            let (csr, key) = pki::node_csr(&node)?;
            write(&out.join("node.csr"), &csr, 0o644)?;
            write(&out.join("node.key"), &key, 0o600)?;
        }
        PkiCommand::Sign {
            ca,
            csr,
            node,
            addresses,
            out,
        } => {
            let ca = load_ca(&ca)?;
            let request = read(&csr)?;
            write(&out, &ca.sign_csr(&request, &node, &addresses)?, 0o644)?;
        }
        PkiCommand::Pin { cert } => println!("{}", pki::pin_of_cert(&read(&cert)?)?),
    }
    Ok(())
}

fn load_ca(dir: &Path) -> anyhow::Result<Ca> {
    let pem = Pem {
        cert: read(&dir.join("ca.crt"))?,
        key: read(&dir.join("ca.key"))?,
    };
    Ca::load(&pem).with_context(|| format!("{}: the CA", dir.display()))
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))
}

/// Writes a file with `mode` from the start (a key is never readable by others, even briefly).
fn write(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| {
            format!(
                "{}: cannot create (an existing file is never overwritten)",
                path.display()
            )
        })?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))
}
