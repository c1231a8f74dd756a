//! `milvus-fleet status`: asks the local daemon over its Unix socket.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The daemon's local API socket.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/run/milvus-fleet/api.sock"
    )]
    socket: PathBuf,
    /// Print the daemon's JSON answer.
    #[arg(long)]
    json: bool,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let body = super::local::request(&args.socket, "GET", "/v1/status", None)?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let status: Value = serde_json::from_str(&body).context("the daemon's answer is not JSON")?;
    let text = |key: &str| status[key].as_str().unwrap_or("-").to_owned();
    let role = match text("role").as_str() {
        "leader" => format!("leader (term {})", status["term"]),
        "follower" => format!("follower of {}", text("leader")),
        "none" => {
            "not part of a cluster yet: run `milvus-fleet init` or `milvus-fleet join`".to_owned()
        }
        "unknown" => "connecting to etcd".to_owned(),
        other => other.to_owned(),
    };
    println!("node      {}", text("node"));
    println!("cluster   {}", text("cluster"));
    println!("role      {role}");
    println!("uptime    {} s", status["uptime_secs"]);
    if let Some(ttl) = status["lease_ttl_secs"].as_u64() {
        println!("lease     {ttl} s");
    }
    if let Some(nodes) = status["nodes"].as_array() {
        let list: Vec<String> = nodes
            .iter()
            .map(|n| {
                format!(
                    "{} ({})",
                    n["name"].as_str().unwrap_or("?"),
                    n["daemon"].as_str().unwrap_or("?")
                )
            })
            .collect();
        println!("nodes     {}", list.join(", "));
    }
    for error in ["nodes_error", "jobs_error"] {
        if let Some(e) = status[error].as_str() {
            println!("error     {e}");
        }
    }
    if let Some(jobs) = status["jobs"].as_object() {
        let list: Vec<String> = jobs
            .iter()
            .map(|(state, n)| format!("{n} {state}"))
            .collect();
        println!(
            "jobs      {}",
            if list.is_empty() {
                "none".to_owned()
            } else {
                list.join(", ")
            }
        );
    }
    Ok(())
}
