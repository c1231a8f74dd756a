//! The node daemon: what `milvus-fleet.service` runs.
//!
//! For now it loads and watches its configuration, tells systemd when it is ready,
//! proves its main loop is alive with watchdog pings, reloads on SIGHUP (keeping the
//! running configuration when the new one is invalid) and stops cleanly on SIGTERM.
//! Later the cluster loops (election, jobs, API, supervision) hang off this loop.

use std::time::Duration;

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::config::{ConfigPaths, Settings};

pub fn run(paths: ConfigPaths) -> anyhow::Result<()> {
    // One thread is plenty for a control loop and keeps the daemon's footprint small.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(main_loop(paths))
}

async fn main_loop(paths: ConfigPaths) -> anyhow::Result<()> {
    let mut settings = Settings::load(&paths)?;
    crate::logging::init(settings.config.daemon.log_level.as_str());
    info!(
        fingerprint = %settings.fingerprint(),
        files = settings.sources.len(),
        "configuration loaded"
    );

    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    // Ping at half the interval systemd expects; pings come from this loop only, so a
    // wedged loop stops them and systemd restarts us.
    let watchdog = sd_notify::watchdog_enabled();
    let mut watchdog_tick =
        tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |d| d / 2));

    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(&settings)),
    ]);
    info!(node = %settings.node_name, "ready");

    loop {
        tokio::select! {
            _ = watchdog_tick.tick(), if watchdog.is_some() => notify(&[NotifyState::Watchdog]),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => reload(&paths, &mut settings),
        }
    }
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    info!("stopped");
    Ok(())
}

/// Replaces the settings only when the new configuration is valid as a whole.
fn reload(paths: &ConfigPaths, settings: &mut Settings) {
    match Settings::load(paths) {
        Ok(new) if new == *settings => info!("configuration reloaded: unchanged"),
        Ok(new) => {
            info!(fingerprint = %new.fingerprint(), "configuration reloaded: changed");
            *settings = new;
            notify(&[NotifyState::Status(&status_line(settings))]);
        }
        Err(e) => error!("configuration reload rejected, keeping the running configuration: {e}"),
    }
}

fn status_line(settings: &Settings) -> String {
    let config = &settings.config;
    if config.nodes.is_empty() {
        "not part of a cluster yet: run `milvus-fleet init` or `milvus-fleet join`".to_owned()
    } else {
        format!(
            "node {} of cluster {} ({} nodes configured)",
            settings.node_name,
            config.cluster.name,
            config.nodes.len()
        )
    }
}

fn notify(state: &[NotifyState]) {
    // Outside systemd there is no NOTIFY_SOCKET and this is a no-op.
    if let Err(e) = sd_notify::notify(state) {
        warn!("cannot notify systemd: {e}");
    }
}
