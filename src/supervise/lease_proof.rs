//! The lease proof: until when the node daemon can prove its etcd lease lives, in a
//! file the standalone server's follower (root, the unit's main process) watches, so the
//! server dies the moment its node may count as lost, without a round trip through the
//! daemon, D-Bus and the container engine. On a frozen host that thaws, every process
//! resumes at once: the follower's timer is long past and its kill(2) lands within a
//! millisecond, where the daemon's kill took 0.25-0.75 s.
//!
//! The file is one line, `<daemon pid> <deadline>`: the deadline on CLOCK_MONOTONIC in
//! nanoseconds (the same clock for every process of the host), or `none` while the
//! daemon holds no lease (starting, stopping, out of the cluster). The follower kills
//! only while that daemon process lives: a daemon killed or restarting proves nothing
//! either way, and its server must run on (the leader keeps a server that answers).
//!
//! One exception: a follower that was itself stalled (its 0.1 s sleep took a second or
//! more: the whole host was stopped or frozen) kills on a stale proof even when the
//! daemon is gone by now. On such a thaw systemd's watchdog kills the daemon that was
//! frozen past its limit within milliseconds, before the follower's thread is scheduled
//! among the server's thawed threads, and the server would otherwise run on beside the
//! one the leader started elsewhere until the restarted daemon kills it.
//!
//! Beside it, the kill request ([`KILL_REQUEST_NAME`], in the same directory): the pid of
//! the follower the daemon asks to kill its server at once (a server it must fence, with
//! no graceful stop's seconds). A pid names one run of the unit, so a request left behind
//! kills no later server. It replaces a signal through systemd's KillUnit, which the
//! daemon's polkit rule does not grant.
//!
//! The daemon writes both (its runtime directory); root reads a number from each. The
//! worst a compromised daemon user can write is a kill of the server, which it could
//! already do by stopping the unit.

use std::path::Path;
use std::time::Duration;

pub use crate::host::LEASE_PROOF_FILE;

/// How far past the proven end the follower kills: the daemon's own self-fence grace
/// (supervise::node::SELF_FENCE_GRACE), so both fire together and the leader's wait
/// (placement::GONE_AFTER) covers either.
pub const GRACE: Duration = super::node::SELF_FENCE_GRACE;

/// Now on CLOCK_MONOTONIC, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The file's text for daemon `pid` whose lease is proven for `left` more (None: no lease).
pub fn encode(pid: u32, left: Option<Duration>) -> String {
    match left {
        Some(left) => format!("{pid} {}\n", monotonic_ns() + left.as_nanos() as u64),
        None => format!("{pid} none\n"),
    }
}

/// What the file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    pub pid: u32,
    /// The proven end on CLOCK_MONOTONIC (ns); None: the daemon holds no lease.
    pub until_ns: Option<u64>,
}

pub fn decode(text: &str) -> Option<Proof> {
    let mut words = text.split_whitespace();
    let pid = words.next()?.parse().ok()?;
    let until_ns = match words.next()? {
        "none" => None,
        n => Some(n.parse().ok()?),
    };
    words.next().is_none().then_some(Proof { pid, until_ns })
}

/// A follower whose wake-ups are this far apart was stalled with its host.
pub const STALL: Duration = Duration::from_secs(1);

/// Whether the server must die now: its lease may have ended more than [`GRACE`] before
/// `now_ns`, and the daemon that wrote `proof` still runs (`alive`) or the follower was
/// `stalled` with its host (see the module's note).
pub fn must_kill(proof: Option<Proof>, alive: bool, stalled: bool, now_ns: u64) -> bool {
    match proof {
        Some(Proof {
            until_ns: Some(until),
            ..
        }) => (alive || stalled) && now_ns > until + GRACE.as_nanos() as u64,
        _ => false,
    }
}

/// Keeps the proof in step with `lease_until`, in a task of its own: nothing else may
/// hold it up (a late write reads as a lapsed lease). A failed write is logged; the
/// follower then acts on the older proof, which only ends sooner. Written three times a
/// second with a 1 s lease: into a directory opened once, with no fsync (a runtime file).
pub async fn publish(mut lease_until: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>) {
    let mut dir = None;
    loop {
        let left = lease_until
            .borrow_and_update()
            .map(|until| until.saturating_duration_since(tokio::time::Instant::now()));
        let written = match &dir {
            Some(dir) => write_proof(dir, left),
            None => proof_dir().and_then(|opened| write_proof(dir.insert(opened), left)),
        };
        if let Err(e) = written {
            tracing::warn!("writing the lease proof {LEASE_PROOF_FILE}: {e:#}");
            // The directory may have been replaced (a restart of systemd's runtime
            // directory): open it again next time.
            dir = None;
        }
        if lease_until.changed().await.is_err() {
            return;
        }
    }
}

/// Writes the proof of daemon `pid` (this process) whose lease is proven for `left` more,
/// once (at the daemon's stop: no lease).
pub fn write(left: Option<Duration>) -> anyhow::Result<()> {
    write_proof(&proof_dir()?, left)
}

/// The directory the lease proof and the kill request live in, opened.
fn proof_dir() -> anyhow::Result<crate::host::OpenDir> {
    crate::host::OpenDir::open(
        Path::new(LEASE_PROOF_FILE)
            .parent()
            .unwrap_or(Path::new("/")),
    )
}

fn write_proof(dir: &crate::host::OpenDir, left: Option<Duration>) -> anyhow::Result<()> {
    let name = Path::new(LEASE_PROOF_FILE).file_name().unwrap_or_default();
    dir.write(
        name,
        encode(std::process::id(), left).as_bytes(),
        0o644,
        None,
        false,
    )
}

/// The kill request's file name, beside the lease proof.
pub const KILL_REQUEST_NAME: &str = "kill-request";

/// Asks the follower whose pid is `follower` to kill its server now.
pub fn request_kill(follower: u32) -> anyhow::Result<()> {
    proof_dir()?.write(
        KILL_REQUEST_NAME.as_ref(),
        format!("{follower}\n").as_bytes(),
        0o644,
        None,
        false,
    )
}

/// Whether the kill request `text` asks follower `me` to kill (pure).
pub fn kill_requested(text: &str, me: u32) -> bool {
    text.trim().parse::<u32>().is_ok_and(|pid| pid == me)
}

/// Reads the proof; a missing or garbled file proves nothing (and kills nothing).
pub fn read(path: &Path) -> Option<Proof> {
    decode(&std::fs::read_to_string(path).ok()?)
}

/// Whether the process `pid` is a milvus-fleet daemon that still runs: not gone, not a
/// zombie, not stopped by a signal (an operator's SIGSTOP, a debugger) — such a daemon
/// proves nothing either way, like a killed one.
pub fn daemon_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ...": comm may hold spaces and parentheses; the last ')' ends it.
    let Some((head, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let comm = head.split_once('(').map_or("", |(_, c)| c);
    let state = rest.split_whitespace().next().unwrap_or("");
    comm == "milvus-fleet" && !matches!(state, "T" | "t" | "Z" | "X")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proof_round_trips_and_garbage_proves_nothing() {
        let text = encode(42, Some(Duration::from_secs(1)));
        let proof = decode(&text).unwrap();
        assert_eq!(proof.pid, 42);
        assert!(proof.until_ns.unwrap() > monotonic_ns());
        assert_eq!(
            decode("42 none\n"),
            Some(Proof {
                pid: 42,
                until_ns: None
            })
        );
        for garbage in ["", "42", "x 5", "42 5 6", "42 -1"] {
            assert_eq!(decode(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn a_kill_request_names_one_follower() {
        assert!(kill_requested("4242\n", 4242));
        assert!(!kill_requested("4242\n", 4243));
        for garbage in ["", "x", "4242 1", "-4242"] {
            assert!(!kill_requested(garbage, 4242), "{garbage:?}");
        }
    }

    #[test]
    fn only_a_running_daemon_process_counts() {
        // This test process is no milvus-fleet daemon; pid 0 has no /proc entry.
        assert!(!daemon_alive(std::process::id()));
        assert!(!daemon_alive(0));
    }

    #[test]
    fn the_server_dies_only_when_a_live_daemon_cannot_prove_its_lease() {
        let until = 10_000_000_000;
        let proof = Some(Proof {
            pid: 7,
            until_ns: Some(until),
        });
        let past_grace = until + GRACE.as_nanos() as u64 + 1;
        assert!(must_kill(proof, true, false, past_grace));
        // Within the grace, or the daemon itself gone (restarting): it runs on.
        assert!(!must_kill(proof, true, false, until + 1));
        assert!(!must_kill(proof, false, false, past_grace));
        // Unless the follower was stalled with its host (a thaw after a freeze): then a
        // stale proof kills whether or not the daemon survived the thaw; a fresh one never.
        assert!(must_kill(proof, false, true, past_grace));
        assert!(!must_kill(proof, false, true, until + 1));
        // No lease held, or no file.
        let none = Some(Proof {
            pid: 7,
            until_ns: None,
        });
        assert!(!must_kill(none, true, true, past_grace));
        assert!(!must_kill(None, true, true, past_grace));
    }
}
