//! Following one container through the engine's API socket: what a component unit runs
//! as its main process once `compose up --detach` has started the container.
//!
//! A foreground `docker compose up` costs ~90 MB per unit for the whole life of the
//! component. This costs a few MB: plain blocking I/O on the Docker-compatible API (Docker,
//! or Podman's socket), one thread copying the container's log to the unit's journal and
//! one waiting for the container to stop. The process exits with the container's status,
//! so `Restart=on-failure` still sees a dead container, and its log stays in the unit's
//! journal (`journalctl -u milvus-fleet-<component>`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("the container engine's API at {}: {error}", socket.display())]
    Socket {
        socket: PathBuf,
        error: std::io::Error,
    },
    #[error("the container engine answered {status} for {what}: {body}")]
    Refused {
        what: String,
        status: u16,
        body: String,
    },
    #[error("the container engine's answer to {what} is not understood: {detail}")]
    Garbled { what: String, detail: String },
}

/// A container name as compose files give it (`container_name:`): safe in a URL path.
pub fn is_container_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// One request on its own connection; HTTP/1.0, so the answer is not chunked and ends
/// when the engine closes the connection. Returns the status and the unread body.
fn request(
    socket: &Path,
    method: &str,
    path: &str,
) -> Result<(u16, BufReader<UnixStream>), ContainerError> {
    let io = |error| ContainerError::Socket {
        socket: socket.to_owned(),
        error,
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: engine\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).map_err(io)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ContainerError::Garbled {
            what: format!("{method} {path}"),
            detail: format!("status line {:?}", status_line.trim_end()),
        })?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).map_err(io)? == 0 || header.trim_end().is_empty() {
            break;
        }
    }
    Ok((status, reader))
}

fn expect_ok(
    socket: &Path,
    method: &str,
    path: &str,
) -> Result<BufReader<UnixStream>, ContainerError> {
    let (status, body) = request(socket, method, path)?;
    if status != 200 {
        let mut text = String::new();
        let _ = body.take(4096).read_to_string(&mut text);
        return Err(ContainerError::Refused {
            what: format!("{method} {path}"),
            status,
            body: text.trim().to_owned(),
        });
    }
    Ok(body)
}

/// One request whose answer is a JSON document.
fn json(socket: &Path, method: &str, path: &str) -> Result<serde_json::Value, ContainerError> {
    let mut body = String::new();
    expect_ok(socket, method, path)?
        .read_to_string(&mut body)
        .map_err(|error| ContainerError::Socket {
            socket: socket.to_owned(),
            error,
        })?;
    serde_json::from_str(&body).map_err(|e| ContainerError::Garbled {
        what: format!("{method} {path}"),
        detail: format!("{e}: {}", body.trim()),
    })
}

/// Blocks until the container is not running; its exit status.
pub fn wait(socket: &Path, container: &str) -> Result<i64, ContainerError> {
    let path = format!("/containers/{container}/wait?condition=not-running");
    let answer = json(socket, "POST", &path)?;
    answer["StatusCode"]
        .as_i64()
        .ok_or_else(|| ContainerError::Garbled {
            what: path,
            detail: answer.to_string(),
        })
}

/// Copies the container's log (from its start, following) to `out` and `err` until the
/// container stops. The engine multiplexes both streams on one connection, each frame
/// an 8-byte header (stream, 0, 0, 0, big-endian length) and its bytes.
pub fn copy_log(
    socket: &Path,
    container: &str,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<(), ContainerError> {
    let path = format!("/containers/{container}/logs?follow=1&stdout=1&stderr=1");
    let mut body = expect_ok(socket, "GET", &path)?;
    let mut header = [0u8; 8];
    let mut frame = Vec::new();
    loop {
        if body.read_exact(&mut header).is_err() {
            return Ok(());
        }
        let size = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if header[1..4] != [0, 0, 0] || header[0] > 2 {
            // A TTY container's log is not multiplexed: pass it on as it is.
            out.write_all(&header).ok();
            std::io::copy(&mut body, out).ok();
            return Ok(());
        }
        frame.resize(size, 0);
        if body.read_exact(&mut frame).is_err() {
            return Ok(());
        }
        let target: &mut dyn Write = if header[0] == 2 { err } else { out };
        // The journal may be gone for a moment (journald restarting): keep following.
        let _ = target.write_all(&frame).and_then(|()| target.flush());
    }
}

/// Resumes every process of `container` (SIGCONT). A frozen (SIGSTOPped) component is
/// what the daemon restarts as wedged, and a stop signal sits pending on a stopped
/// process until the engine's grace period runs out; the engine itself only signals the
/// container's main process. Returns how many processes were signalled.
pub fn thaw(socket: &Path, container: &str) -> Result<usize, ContainerError> {
    let answer = json(
        socket,
        "GET",
        &format!("/containers/{container}/top?ps_args=-eo%20pid"),
    )?;
    let pids: Vec<i32> = answer["Processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|row| row.get(0)?.as_str()?.trim().parse().ok())
        .collect();
    for pid in &pids {
        // SAFETY: kill(2) with a plain pid and signal touches no memory of ours.
        unsafe {
            libc::kill(*pid, libc::SIGCONT);
        }
    }
    Ok(pids.len())
}

/// Kills `container` at once (SIGKILL). A container that is gone or no longer runs is
/// what was asked for.
pub fn kill(socket: &Path, container: &str) -> Result<(), ContainerError> {
    let path = format!("/containers/{container}/kill?signal=SIGKILL");
    let (status, body) = request(socket, "POST", &path)?;
    if matches!(status, 204 | 200 | 404 | 409) {
        return Ok(());
    }
    let mut text = String::new();
    let _ = body.take(4096).read_to_string(&mut text);
    Err(ContainerError::Refused {
        what: format!("POST {path}"),
        status,
        body: text.trim().to_owned(),
    })
}

/// Follows `container` until it stops: its log to stdout/stderr, then its exit status
/// (what the caller exits with). With `lease_proof`, it also kills the container when the
/// daemon cannot prove its lease or asks for the kill (supervise/lease_proof.rs); once a
/// container the daemon asked to kill is gone it returns 0: the stop was asked for, so
/// `Restart=on-failure` must not undo it.
pub fn follow(
    socket: &Path,
    container: &str,
    lease_proof: Option<&Path>,
) -> Result<i64, ContainerError> {
    let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(path) = lease_proof {
        watch_lease_proof(socket, container, path, killed.clone());
    }
    let (log_socket, name) = (socket.to_owned(), container.to_owned());
    let logs = std::thread::spawn(move || {
        copy_log(
            &log_socket,
            &name,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        )
    });
    let status = wait(socket, container)?;
    if killed.load(std::sync::atomic::Ordering::SeqCst) {
        eprintln!("killed container {container} (fenced: its server may run elsewhere now)");
        return Ok(0);
    }
    // The log ends with the container; let the last lines reach the journal, briefly.
    for _ in 0..40 {
        if logs.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(status)
}

/// Starts a thread that kills `container` the moment the node daemon cannot prove its
/// lease, or asks for the kill (supervise/lease_proof.rs): kill(2) of the container's
/// init, which ends every process of its PID namespace, with no engine round trip; the
/// engine's kill after it in case the pid was not known.
fn watch_lease_proof(
    socket: &Path,
    container: &str,
    path: &Path,
    killed: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use super::lease_proof;
    let init_pid = json(socket, "GET", &format!("/containers/{container}/json"))
        .ok()
        .and_then(|c| c["State"]["Pid"].as_i64())
        .and_then(|pid| i32::try_from(pid).ok())
        .filter(|pid| *pid > 1);
    let (socket, container, path) = (socket.to_owned(), container.to_owned(), path.to_owned());
    let request = path.with_file_name(lease_proof::KILL_REQUEST_NAME);
    let me = std::process::id();
    std::thread::spawn(move || {
        // Ahead of the server's threads when the host thaws and all of them wake at once
        // (root may raise a thread's priority; failing that, it runs at the default).
        // SAFETY: setpriority(2) on this thread's own id touches no memory of ours.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, -10);
        }
        let mut woke = lease_proof::monotonic_ns();
        let why = loop {
            // A short sleep: after a freeze it has long passed, so the thread runs at
            // once when the host thaws, as the server does.
            std::thread::sleep(Duration::from_millis(100));
            let now = lease_proof::monotonic_ns();
            let stalled = now.saturating_sub(woke) >= lease_proof::STALL.as_nanos() as u64;
            woke = now;
            let proof = lease_proof::read(&path);
            let alive = proof.is_some_and(|p| lease_proof::daemon_alive(p.pid));
            if lease_proof::must_kill(proof, alive, stalled, now) {
                break "the node daemon cannot prove its etcd lease, so the server may run elsewhere now";
            }
            let asked = std::fs::read_to_string(&request)
                .is_ok_and(|text| lease_proof::kill_requested(&text, me));
            if asked {
                break "the node daemon asked for it (the server is fenced: it may run elsewhere now)";
            }
        };
        killed.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(pid) = init_pid {
            // SAFETY: kill(2) with a plain pid and signal touches no memory of ours.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        eprintln!("killing container {container}: {why}");
        if let Err(e) = kill(&socket, &container) {
            eprintln!("killing container {container}: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A one-connection engine on a socket of its own that answers `answer` to
    /// whatever it is asked.
    fn engine(answer: Vec<u8>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::TempDir::new().unwrap();
        let socket = dir.path().join("engine.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // The whole request head first: answering (and closing) after a partial read
            // fails the client's next write with a broken pipe.
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            stream.write_all(&answer).unwrap();
        });
        (dir, socket)
    }

    #[test]
    fn the_log_is_demultiplexed_into_stdout_and_stderr() {
        let mut answer =
            b"HTTP/1.0 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n".to_vec();
        for (stream, text) in [(1u8, "to out\n"), (2, "to err\n"), (1, "more out\n")] {
            answer.extend([stream, 0, 0, 0]);
            answer.extend((text.len() as u32).to_be_bytes());
            answer.extend(text.as_bytes());
        }
        let (_dir, socket) = engine(answer);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        copy_log(&socket, "mf-lb", &mut out, &mut err).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "to out\nmore out\n");
        assert_eq!(String::from_utf8(err).unwrap(), "to err\n");
    }

    #[test]
    fn thaw_reads_the_container_s_processes() {
        // Pids that cannot exist: signalling them is harmless (ESRCH).
        let (_dir, socket) = engine(
            b"HTTP/1.0 200 OK\r\n\r\n{\"Titles\":[\"PID\"],\"Processes\":[[\"999999991\"],[\"999999992\"]]}"
                .to_vec(),
        );
        assert_eq!(thaw(&socket, "mf-lb").unwrap(), 2);
    }

    #[test]
    fn wait_returns_the_exit_status_and_a_refusal_says_why() {
        let (_dir, socket) =
            engine(b"HTTP/1.0 200 OK\r\n\r\n{\"Error\":null,\"StatusCode\":137}\n".to_vec());
        assert_eq!(wait(&socket, "mf-lb").unwrap(), 137);
        let (_dir, socket) = engine(
            b"HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"No such container: mf-x\"}".to_vec(),
        );
        let error = wait(&socket, "mf-x").unwrap_err().to_string();
        assert!(
            error.contains("404") && error.contains("No such container"),
            "{error}"
        );
    }

    #[test]
    fn a_kill_is_done_when_the_container_is_killed_or_already_gone() {
        for answer in [
            &b"HTTP/1.0 204 No Content\r\n\r\n"[..],
            b"HTTP/1.0 409 Conflict\r\n\r\n{}",
        ] {
            let (_dir, socket) = engine(answer.to_vec());
            kill(&socket, "mf-standalone").unwrap();
        }
        let (_dir, socket) =
            engine(b"HTTP/1.0 500 Server Error\r\n\r\n{\"message\":\"boom\"}".to_vec());
        let error = kill(&socket, "mf-standalone").unwrap_err().to_string();
        assert!(error.contains("500") && error.contains("boom"), "{error}");
    }
}
