//! The CLI's client of the local daemon: HTTP/1.1 over its Unix socket, one request
//! per connection.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

pub const DEFAULT_SOCKET: &str = "/run/milvus-fleet/api.sock";

/// Sends a request and returns the body of a 2xx answer; any other answer is an error
/// with the daemon's message.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    json_body: Option<&str>,
) -> anyhow::Result<String> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the daemon at {}: is milvus-fleet.service running?",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = json_body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .context("reading the daemon's answer")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("the daemon's answer is not HTTP")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with('2') {
        let message = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.trim().to_owned());
        anyhow::bail!("{message} (HTTP {status})");
    }
    Ok(body.trim().to_owned())
}
