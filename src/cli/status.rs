//! `milvus-fleet status`: asks the local daemon over its Unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    let body = local_get(&args.socket, "/v1/status")?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let status: Value = serde_json::from_str(&body).context("the daemon's answer is not JSON")?;
    let text = |key: &str| status[key].as_str().unwrap_or("-").to_owned();
    let role = match text("role").as_str() {
        "leader" => format!("leader (term {})", status["term"]),
        "follower" => format!("follower of {}", text("leader")),
        other => other.to_owned(),
    };
    println!("node      {}", text("node"));
    println!("cluster   {}", text("cluster"));
    println!("role      {role}");
    println!("uptime    {} s", status["uptime_secs"]);
    Ok(())
}

/// A GET over the local socket (HTTP/1.1, one request per connection); the body of a 2xx.
fn local_get(socket: &Path, path: &str) -> anyhow::Result<String> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the daemon at {}: is milvus-fleet.service running?",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .context("reading the daemon's answer")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("the daemon's answer is not HTTP")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    anyhow::ensure!(
        status.starts_with('2'),
        "the daemon answered {status}: {}",
        body.trim()
    );
    // Connection: close answers are not chunked by hyper when the length is known.
    Ok(body.trim().to_owned())
}
