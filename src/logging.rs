//! Log output: structured fields to the journal when systemd connected our stderr to
//! it, plain lines on stderr otherwise.

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// `default_level` applies unless `MILVUS_FLEET_LOG` (an EnvFilter directive) says otherwise.
pub fn init(default_level: &str) {
    let filter = EnvFilter::try_from_env("MILVUS_FLEET_LOG")
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            // No prefix: a field `message_id` must become journald's own MESSAGE_ID (so
            // `journalctl MESSAGE_ID=...` finds it), `node` becomes NODE, and so on.
            let journald = journald
                .with_syslog_identifier("milvus-fleet".into())
                .with_field_prefix(None);
            let _ = registry.with(journald).try_init();
            return;
        }
    }
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into files or pipes.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time();
    let _ = registry.with(fmt).try_init();
}

/// systemd sets JOURNAL_STREAM to the device and inode of the journal stream it gave us;
/// it only counts if stderr is still that stream (not redirected by a wrapper).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// An error and its causes on one line ("a: b: c"), for errors that keep the useful part
/// in their sources (reqwest, hyper).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
