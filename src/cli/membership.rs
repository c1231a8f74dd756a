//! `init`, `join`, `token`, `cloud-init`, `node` and `apply`: how hosts become members
//! of the cluster and leave it.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::local::{request, DEFAULT_SOCKET};
use crate::config::model::Role;
use crate::config::ConfigPaths;
use crate::host::JOIN_FILE;
use crate::membership::init::Identity;
use crate::membership::join::BadJoinFile;
use crate::membership::token::JoinToken;

/// Who this host is in the cluster.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// This node's name (default: the host name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The address the other nodes reach this one at (default: the address this host
    /// reaches the cluster from).
    #[arg(long, value_name = "IP")]
    address: Option<String>,
    /// What this node runs: storage (etcd, MinIO), compute (Milvus, the load balancer),
    /// witness (an etcd vote only). Comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "storage,compute")]
    roles: Vec<RoleArg>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Storage,
    Compute,
    Witness,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Storage => Role::Storage,
            RoleArg::Compute => Role::Compute,
            RoleArg::Witness => Role::Witness,
        }
    }
}

impl IdentityArgs {
    fn identity(&self) -> Identity {
        Identity {
            name: self.name.clone(),
            address: self.address.clone(),
            roles: self.roles.iter().map(|r| (*r).into()).collect(),
        }
    }
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    identity: IdentityArgs,
    /// How long the printed join token is valid (e.g. 30m, 1h, 2d).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    token_ttl: u64,
    /// How many nodes may join with the printed token.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    token_uses: u32,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// A member's API address, host[:port] (default port 19500). Without it, and
    /// without a token option, the join file cloud-init writes is read.
    server: Option<String>,
    /// Read the token from this file (keep it 0600).
    #[arg(long, value_name = "PATH", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The token itself. It shows in the process list and shell history: prefer
    /// --token-file or standard input.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// The join file (server, roles, token), as cloud-init writes it; deleted after
    /// a successful join.
    #[arg(long, value_name = "PATH")]
    join_file: Option<PathBuf>,
    #[command(flatten)]
    identity: IdentityArgs,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The daemon's local API socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Args)]
pub struct TokenSpec {
    /// How long the token is valid (e.g. 30m, 1h, 2d; at most 7d).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: u64,
    /// How many nodes may join with it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    uses: u32,
    /// The roles a node may join as with it (default: any). Comma-separated.
    #[arg(long, value_delimiter = ',')]
    role: Vec<RoleArg>,
    /// A removed node this token lets back in (repeat it); without it a removed node's
    /// name stays refused.
    #[arg(long, value_name = "NODE")]
    readmit: Vec<String>,
}

impl TokenSpec {
    fn body(&self) -> String {
        let mut body = serde_json::json!({
            "ttl_secs": self.ttl,
            "uses": self.uses,
            "readmit": self.readmit,
        });
        if !self.role.is_empty() {
            let roles: Vec<Role> = self.role.iter().map(|r| (*r).into()).collect();
            body["roles"] = serde_json::to_value(roles).unwrap_or_default();
        }
        body.to_string()
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a join token and print it (the only time its secret is shown).
    Create(TokenSpec),
    /// List the tokens: id, roles, expiry, uses, state. Secrets are never stored.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke one token.
    Revoke { id: String },
    /// Revoke every outstanding token at once (a token leaked) and make a fresh one.
    Rotate(TokenSpec),
}

#[derive(Debug, Args)]
pub struct CloudInitArgs {
    /// The member a new VM joins through, host[:port].
    #[arg(long, value_name = "ADDR")]
    server: String,
    /// The roles the new VM joins as. Comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "storage,compute")]
    role: Vec<RoleArg>,
    /// How long the embedded token is valid.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: u64,
    /// How many VMs may join with it (one user-data for a group of VMs).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    uses: u32,
    /// Install the package from this apt source line (`deb [signed-by=...] URL SUITE COMPONENT`).
    #[arg(long, value_name = "LINE")]
    apt_source: Option<String>,
    /// The apt repository's ASCII-armoured key file.
    #[arg(long, value_name = "PATH", requires = "apt_source")]
    apt_key: Option<PathBuf>,
    /// Install the package from this dnf repository URL.
    #[arg(long, value_name = "URL", conflicts_with = "apt_source")]
    dnf_baseurl: Option<String>,
    /// The dnf repository's GPG key URL.
    #[arg(long, value_name = "URL", requires = "dnf_baseurl")]
    dnf_gpgkey: Option<String>,
    /// Install the package from a .deb or .rpm already on the VM (an image, a mounted medium).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["apt_source", "dnf_baseurl"])]
    package_file: Option<String>,
    /// The daemon's local API socket (the token is made through it).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The daemon's local API socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Take a node out of the cluster (a job): its etcd member, its place in the
    /// configuration and the load balancers, its certificate. Refused when it would
    /// break etcd's quorum or the storage pool.
    Remove {
        name: String,
        /// Return once the job is queued instead of following it to its end.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
    /// Only render, install the unit files and stop what this node no longer runs;
    /// starting and restarting is left to the daemon (what milvus-fleet-apply.service runs).
    #[arg(long)]
    render_only: bool,
}

pub fn init(args: InitArgs, paths: &ConfigPaths) -> anyhow::Result<()> {
    let identity = args.identity.identity();
    let outcome = crate::membership::init::init(paths, &identity, args.token_ttl, args.token_uses)?;
    let node = &outcome.node;
    println!(
        "Cluster {} initialized: node {} ({}) as {}.",
        outcome.cluster,
        node.name,
        node.address,
        crate::membership::token::role_list(&node.roles)
    );
    println!(
        "\nJoin token (valid {}, {} use(s); keep it secret):\n{}\n",
        human_duration(outcome.token_ttl_secs),
        args.token_uses,
        outcome.token.reveal()
    );
    println!("On the next VM, as root, put the token in a 0600 file and run:");
    println!(
        "  milvus-fleet join {}:{} --token-file /root/join-token --roles storage,compute",
        node.address, outcome.api_port
    );
    println!(
        "Or let cloud-init do it: milvus-fleet cloud-init --server {}:{} --role storage,compute",
        node.address, outcome.api_port
    );
    Ok(())
}

/// The join file cloud-init writes.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinFile {
    server: String,
    /// Optional here so that a file without it gets its own message (below).
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    roles: Vec<Role>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    address: Option<String>,
}

pub fn join(args: JoinArgs, paths: &ConfigPaths) -> anyhow::Result<()> {
    let mut identity = args.identity.identity();
    let use_join_file = args.join_file.is_some()
        || (args.server.is_none() && args.token.is_none() && args.token_file.is_none());
    let (server, token_text, join_file) = if use_join_file {
        let path = args.join_file.clone().unwrap_or_else(|| JOIN_FILE.into());
        let file = read_join_file(&path)?;
        if !file.roles.is_empty() {
            identity.roles = file.roles;
        }
        identity.name = identity.name.or(file.name);
        identity.address = identity.address.or(file.address);
        let server = args.server.clone().unwrap_or(file.server);
        let token = match file.token {
            Some(token) if !token.trim().is_empty() => token,
            _ => {
                return Err(BadJoinFile(format!(
                    "{} has no join token (`token = \"MFT1-...\"`): the user-data must come from `milvus-fleet cloud-init` on a member, or add a token from `milvus-fleet token create`; nothing was sent",
                    path.display()
                ))
                .into())
            }
        };
        (server, token, Some(path))
    } else {
        let server = args
            .server
            .clone()
            .context("name the server to join through: milvus-fleet join ADDR")?;
        let token = match (&args.token, &args.token_file) {
            (Some(token), _) => {
                eprintln!("milvus-fleet: warning: --token shows the secret in the process list; use --token-file or standard input");
                token.clone()
            }
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the token from {}", path.display()))?,
            (None, None) => {
                let mut token = String::new();
                std::io::stdin()
                    .read_to_string(&mut token)
                    .context("reading the token from standard input")?;
                token
            }
        };
        (server, token, None)
    };
    let token = JoinToken::parse(&token_text)?;
    let name = crate::membership::init::join(paths, &server, &token, &identity)?;
    if let Some(path) = join_file {
        // The secret is spent; do not keep it on disk.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                eprintln!(
                    "milvus-fleet: warning: cannot remove {}: {e}",
                    path.display()
                )
            }
            _ => {}
        }
    }
    println!("{name} joined the cluster through {server}; `milvus-fleet status` shows it.");
    Ok(())
}

/// Reads the join file; every problem with it is a [`BadJoinFile`] (retrying cannot help).
fn read_join_file(path: &Path) -> anyhow::Result<JoinFile> {
    use std::os::unix::fs::MetadataExt;
    let bad = |what: String| BadJoinFile(format!("{}: {what}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(bad(format!(
            "mode {:o} lets others read the join token; it must be 0600",
            meta.mode() & 0o777
        ))
        .into());
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    Ok(toml::from_str(&text).map_err(|e| bad(e.message().to_owned()))?)
}

pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    let socket = &args.socket;
    match args.command {
        TokenCommand::Create(spec) => {
            let answer = request(socket, "POST", "/v1/tokens", Some(&spec.body()))?;
            print_new_token(&answer)?;
        }
        TokenCommand::Rotate(spec) => {
            let answer = request(socket, "POST", "/v1/tokens/rotate", Some(&spec.body()))?;
            let value: serde_json::Value = serde_json::from_str(&answer)?;
            let revoked: Vec<&str> = value["revoked"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            eprintln!(
                "revoked {} outstanding token(s){}",
                revoked.len(),
                if revoked.is_empty() {
                    String::new()
                } else {
                    format!(": {}", revoked.join(", "))
                }
            );
            print_new_token(&answer)?;
        }
        TokenCommand::List { json } => {
            let answer = request(socket, "GET", "/v1/tokens", None)?;
            if json {
                println!("{answer}");
                return Ok(());
            }
            let tokens: Vec<serde_json::Value> = serde_json::from_str(&answer)?;
            println!(
                "{:<8} {:<10} {:<24} {:<6} {:<20} USED BY",
                "ID", "STATE", "ROLES", "USES", "EXPIRES (UTC)"
            );
            let joined = |value: &serde_json::Value| {
                value
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default()
            };
            for t in &tokens {
                println!(
                    "{:<8} {:<10} {:<24} {:<6} {:<20} {}",
                    t["id"].as_str().unwrap_or(""),
                    t["state"].as_str().unwrap_or(""),
                    joined(&t["roles"]),
                    format!(
                        "{}/{}",
                        t["used_by"].as_array().map_or(0, |a| a.len()),
                        t["uses"]
                    ),
                    utc(t["expires_unix"].as_u64().unwrap_or(0)),
                    joined(&t["used_by"]),
                );
            }
        }
        TokenCommand::Revoke { id } => {
            anyhow::ensure!(
                crate::cluster::jobs::is_plain_name(&id),
                "no join token {id:?}"
            );
            request(
                socket,
                "POST",
                &format!("/v1/tokens/{id}/revoke"),
                Some("{}"),
            )?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

fn print_new_token(answer: &str) -> anyhow::Result<()> {
    let value: serde_json::Value = serde_json::from_str(answer).context("the daemon's answer")?;
    eprintln!(
        "token {} valid until {} UTC for {} join(s)",
        value["id"].as_str().unwrap_or(""),
        utc(value["expires_unix"].as_u64().unwrap_or(0)),
        value["uses"]
    );
    println!(
        "{}",
        value["token"]
            .as_str()
            .context("the daemon's answer has no token")?
    );
    Ok(())
}

pub fn cloud_init(args: CloudInitArgs) -> anyhow::Result<()> {
    let roles: Vec<Role> = args.role.iter().map(|r| (*r).into()).collect();
    let apt_key = match &args.apt_key {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the apt key {}", path.display()))?,
        None => String::new(),
    };
    let body = serde_json::json!({ "ttl_secs": args.ttl, "uses": args.uses, "roles": roles });
    let answer = request(&args.socket, "POST", "/v1/tokens", Some(&body.to_string()))?;
    let value: serde_json::Value = serde_json::from_str(&answer).context("the daemon's answer")?;
    let status: serde_json::Value =
        serde_json::from_str(&request(&args.socket, "GET", "/v1/status", None)?)?;
    let data = crate::membership::cloud_init::UserData {
        cluster: status["cluster"].as_str().unwrap_or("").to_owned(),
        server: crate::membership::join::with_default_port(&args.server),
        roles: roles
            .iter()
            .map(|r| format!("{r:?}").to_lowercase())
            .collect(),
        token: value["token"]
            .as_str()
            .context("the daemon's answer has no token")?
            .to_owned(),
        expires: format!("{} UTC", utc(value["expires_unix"].as_u64().unwrap_or(0))),
        uses: args.uses,
        apt_source: args.apt_source.unwrap_or_default(),
        apt_key,
        dnf_baseurl: args.dnf_baseurl.unwrap_or_default(),
        dnf_gpgkey: args.dnf_gpgkey.unwrap_or_default(),
        package_file: args.package_file.unwrap_or_default(),
    };
    print!("{}", crate::membership::cloud_init::render(&data)?);
    Ok(())
}

pub fn node(args: NodeArgs) -> anyhow::Result<()> {
    match args.command {
        NodeCommand::Remove { name, no_wait } => {
            let body = crate::cluster::jobs::JobKind::NodeRemove { node: name.clone() };
            let answer = request(
                &args.socket,
                "POST",
                "/v1/jobs",
                Some(&serde_json::to_string(&body)?),
            )?;
            let job: crate::cluster::jobs::Job =
                serde_json::from_str(&answer).context("the daemon's answer")?;
            eprintln!("removing {name}: job {}", job.id);
            if no_wait {
                println!("{}", job.id);
                return Ok(());
            }
            super::job::follow(&args.socket, &job.id)
        }
    }
}

pub fn apply(args: ApplyArgs, paths: &ConfigPaths) -> anyhow::Result<()> {
    crate::host::require_root("apply")?;
    let mode = if args.render_only {
        crate::membership::apply::Mode::RenderOnly
    } else {
        crate::membership::apply::Mode::Converge
    };
    let report = crate::membership::apply::apply(paths, mode)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if report.removed {
        println!(
            "{} is not in the cluster: stopped {}",
            report.node,
            report.stopped.join(", ")
        );
        return Ok(());
    }
    for (what, units) in [
        ("started", &report.started),
        ("restarted", &report.restarted),
        ("reloaded", &report.reloaded),
        ("stopped", &report.stopped),
        ("unchanged", &report.unchanged),
    ] {
        if !units.is_empty() {
            println!("{what}: {}", units.join(" "));
        }
    }
    Ok(())
}

/// `90s`, `30m`, `1h`, `2d` (or plain seconds) -> seconds.
fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 1h or 2d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use s, m, h or d")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long"))
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS`.
fn utc(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).unwrap_or(0))
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_default()
}
