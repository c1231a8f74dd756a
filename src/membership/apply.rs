//! `milvus-fleet apply`: the root side of a node. It renders this node's files from the
//! configuration (the cluster's, from etcd, plus local files) with the packaged
//! templates into a root-owned tree, installs the component units, and stops and
//! uninstalls what the node no longer runs. With `--render-only` (what
//! milvus-fleet-apply.service runs when the daemon asks) that is all: the daemon brings
//! the units up over D-Bus. Without it (init, join, by hand) it also converges the
//! units itself, in dependency order, touching only what changed.
//!
//! The unprivileged daemon writes the cluster file; the settings that decide what root
//! runs on this host (images, data directory, credentials file, engine) are never taken
//! from that file: only root-owned files set them, and a cluster file that disagrees
//! is refused whole (see `guard_host_settings`). Every other value passed the typed schema and the
//! validation, and the compose files come only from the packaged templates.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::config::{ConfigPaths, FleetConfig, Settings};
use crate::render::plan::{NodePlan, RENDERED_DIR};
use crate::render::{output::read_manifest, render_node, Templates, TEMPLATE_OVERRIDE_DIR};
use crate::supervise::reconcile::{converge, StandaloneWanted, JOB_TIMEOUT};
use crate::supervise::systemd::{Systemd, UnitAction};

pub const UNIT_DIR: &str = "/etc/systemd/system";

/// Settings that decide what root runs on this host: a value for one of them in the
/// daemon-written cluster file is refused unless root's files agree.
pub const HOST_SETTINGS: &[&str] = &[
    "cluster.data_dir",
    "object_storage.credentials_file",
    "runtime.engine",
    "images.etcd",
    "images.minio",
    "images.milvus",
    "images.nginx",
    "images.pulsar",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Render, install units, stop what is no longer run; the daemon does the rest.
    RenderOnly,
    /// Also start, restart and reload units (init, join, by hand).
    Converge,
}

/// What an apply did, unit by unit.
#[derive(Debug, Default, Serialize)]
pub struct ApplyReport {
    pub node: String,
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub reloaded: Vec<String>,
    pub stopped: Vec<String>,
    pub unchanged: Vec<String>,
    /// Set when this node is no longer in the cluster.
    pub removed: bool,
}

pub fn apply(paths: &ConfigPaths, mode: Mode) -> anyhow::Result<ApplyReport> {
    let settings = Settings::load(paths)?;
    guard_host_settings(&settings, paths)?;
    let runtime = crate::host::runtime()?;
    runtime.block_on(apply_settings(&settings, mode))
}

/// Refuses a cluster file (written by the unprivileged daemon) that sets a host setting
/// to anything but what this host's root-owned files say (or, where they say nothing,
/// the packaged default): a crafted image, data directory or credentials path must never
/// reach a rendered file that root runs. Root's files win the merge anyway; refusing
/// the whole render also makes tampering loud instead of silently overridden.
pub fn guard_host_settings(settings: &Settings, paths: &ConfigPaths) -> anyhow::Result<()> {
    let Some(cluster_file) = paths.cluster.as_deref() else {
        return Ok(());
    };
    let cluster: toml::Table = match std::fs::read_to_string(cluster_file) {
        // Settings::load read and checked it a moment ago; gone now means nothing to guard.
        Err(_) => return Ok(()),
        Ok(text) => toml::from_str(&text)
            .with_context(|| format!("{}: not valid TOML", cluster_file.display()))?,
    };
    let effective = toml::Table::try_from(&settings.config).unwrap_or_default();
    let defaults = toml::Table::try_from(FleetConfig::default()).unwrap_or_default();
    for key in HOST_SETTINGS {
        let Some(crafted) = lookup(&cluster, key) else {
            continue;
        };
        let set_by_root = settings.provenance.file_of(key) != Some(cluster_file);
        let allowed = if set_by_root {
            lookup(&effective, key)
        } else {
            lookup(&defaults, key)
        };
        if Some(crafted) != allowed {
            bail!(
                "{}: {key} = {crafted} is refused (this host's root-owned files say {}): what \
                 root runs on this host (images, data directory, credentials file, engine) is \
                 set only in /etc/milvus-fleet/fleet.toml and fleet.d/, never by the cluster \
                 file the daemon writes; nothing was rendered",
                cluster_file.display(),
                allowed.map_or("nothing".to_owned(), |v| v.to_string())
            );
        }
    }
    Ok(())
}

/// Where releases before the data directory left the daemon's state directory kept data.
const OLD_DEFAULT_DATA_DIR: &str = "/var/lib/milvus-fleet/data";

/// Refuses to start on an empty default data directory while the old default holds data:
/// the components would start afresh beside the node's real data.
fn refuse_data_left_in_the_old_default(data_dir: &str) -> anyhow::Result<()> {
    let default = FleetConfig::default().cluster.data_dir;
    let old = Path::new(OLD_DEFAULT_DATA_DIR);
    let has_entries = |dir: &Path| std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if data_dir == default && has_entries(old) && !has_entries(Path::new(&default)) {
        bail!(
            "{OLD_DEFAULT_DATA_DIR} holds this node's data, and its data directory is now \
             {default} (outside the daemon's state directory): stop the node's units \
             (`systemctl stop milvus-fleet.target`), `mv {OLD_DEFAULT_DATA_DIR} {default}`, \
             and apply again; nothing was rendered"
        );
    }
    Ok(())
}

fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let (section, name) = key.split_once('.')?;
    table.get(section)?.as_table()?.get(name)
}

async fn apply_settings(settings: &Settings, mode: Mode) -> anyhow::Result<ApplyReport> {
    let config = &settings.config;
    let node = settings.node_name.clone();
    let rendered_dir = PathBuf::from(RENDERED_DIR);
    let mut report = ApplyReport {
        node: node.clone(),
        ..Default::default()
    };
    if config.nodes.is_empty() {
        return Ok(report);
    }
    let systemd = Systemd::system().await?;
    let previous = read_manifest(&rendered_dir);
    let Some(plan) = NodePlan::for_node(config, &node) else {
        // Removed from the cluster: stop and uninstall everything this node ran.
        report.removed = true;
        if let Some(previous) = previous {
            let units: Vec<String> = previous
                .components
                .keys()
                .rev()
                .map(|name| format!("milvus-fleet-{name}.service"))
                .collect();
            uninstall(&systemd, &units).await?;
            report.stopped = units;
            std::fs::remove_dir_all(&rendered_dir)
                .with_context(|| format!("removing {}", rendered_dir.display()))?;
            // The removed etcd member's data would stop it from joining again; set it
            // aside (not deleted) so a rejoin starts clean.
            let etcd_data = Path::new(&config.cluster.data_dir).join("etcd");
            if etcd_data.is_dir() {
                let aside = etcd_data
                    .with_file_name(format!("etcd.removed-{}", crate::membership::now_unix()));
                std::fs::rename(&etcd_data, &aside)
                    .with_context(|| format!("moving {} aside", etcd_data.display()))?;
            }
        }
        return Ok(report);
    };

    // Before anything is rendered: the data directory is bind-mounted into containers.
    refuse_data_left_in_the_old_default(&config.cluster.data_dir)?;
    crate::host::root_only_dir(Path::new(&config.cluster.data_dir))?;
    let templates = Templates::load(Some(Path::new(TEMPLATE_OVERRIDE_DIR)))?;
    let rendered = render_node(config, &node, &templates)?;
    let manifest = rendered.manifest(&node);
    rendered.write_to(&rendered_dir, &node)?;

    // Units this node no longer runs stop before their files go.
    let dropped: Vec<String> = previous
        .as_ref()
        .map(|p| {
            p.components
                .keys()
                .rev()
                .filter(|name| !manifest.components.contains_key(*name))
                .map(|name| format!("milvus-fleet-{name}.service"))
                .collect()
        })
        .unwrap_or_default();
    uninstall(&systemd, &dropped).await?;
    report.stopped.extend(dropped);

    // Then the unit files, so one daemon reload covers them all.
    let mut units_changed = false;
    for component in &plan.components {
        let source = rendered_dir.join(crate::render::plan::unit_path(*component));
        let target = Path::new(UNIT_DIR).join(component.unit_name());
        let bytes = std::fs::read(&source).with_context(|| format!("{}", source.display()))?;
        if std::fs::read(&target).ok().as_deref() != Some(bytes.as_slice()) {
            crate::host::write_file(&target, &bytes, 0o644, None)?;
            units_changed = true;
        }
    }
    if units_changed {
        systemd.reload_daemon().await?;
    }
    let mut enabled = vec!["milvus-fleet.target".to_owned()];
    enabled.extend(
        plan.components
            .iter()
            .filter(|c| plan.component_view(**c, 0).wanted_by_target)
            .map(|c| c.unit_name()),
    );
    systemd.enable(&enabled).await?;

    if mode == Mode::Converge {
        let converged = converge(
            &systemd,
            &plan,
            &manifest,
            StandaloneWanted::Leave,
            &|step| tracing::info!("{step}"),
        )
        .await?;
        report.started = converged.started;
        report.restarted = converged.restarted;
        report.reloaded = converged.reloaded;
        report.unchanged = converged.unchanged;
    }
    Ok(report)
}

/// `systemctl enable --now UNIT`, over D-Bus.
pub fn enable_now(unit: &str) -> anyhow::Result<()> {
    let runtime = crate::host::runtime()?;
    runtime.block_on(async {
        let systemd = Systemd::system().await?;
        systemd.enable(&[unit.to_owned()]).await?;
        systemd.run(UnitAction::Start, unit, JOB_TIMEOUT).await?;
        anyhow::Ok(())
    })
}

/// Stops, disables and removes the units (in the order given).
async fn uninstall(systemd: &Systemd, units: &[String]) -> anyhow::Result<()> {
    if units.is_empty() {
        return Ok(());
    }
    for unit in units {
        systemd.run(UnitAction::Stop, unit, JOB_TIMEOUT).await?;
    }
    systemd.disable(units).await?;
    for unit in units {
        match std::fs::remove_file(Path::new(UNIT_DIR).join(unit)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {unit}"))
            }
            _ => {}
        }
    }
    systemd.reload_daemon().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root fleet.toml that sets the Milvus image, and a cluster file with `cluster_extra`.
    fn guard(cluster_extra: &str) -> anyhow::Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("fleet.toml");
        let cluster = dir.path().join("cluster.toml");
        std::fs::write(
            &main,
            "[cluster]\nname = \"c\"\n[images]\nmilvus = \"local/milvus:test\"\n",
        )
        .unwrap();
        std::fs::write(
            &cluster,
            format!("[cluster]\nname = \"c\"\n{cluster_extra}"),
        )
        .unwrap();
        let paths = ConfigPaths {
            cluster: Some(cluster),
            main,
            dropin_dirs: vec![],
        };
        let settings = Settings::load(&paths).unwrap();
        guard_host_settings(&settings, &paths)
    }

    #[test]
    fn the_cluster_file_cannot_set_what_root_runs() {
        guard("").unwrap();
        guard("[images]\nmilvus = \"local/milvus:test\"\n").unwrap();
        let default_dir = FleetConfig::default().cluster.data_dir;
        guard(&format!("data_dir = {default_dir:?}\n")).unwrap();

        let evil = guard("[images]\nmilvus = \"evil/milvus:latest\"\n").unwrap_err();
        let message = evil.to_string();
        assert!(
            message.contains("images.milvus") && message.contains("local/milvus:test"),
            "{message}"
        );
        let mount = guard("data_dir = \"/etc\"\n").unwrap_err().to_string();
        assert!(mount.contains("cluster.data_dir"), "{mount}");
        let engine = guard("[runtime]\nengine = \"podman\"\n")
            .unwrap_err()
            .to_string();
        assert!(engine.contains("runtime.engine"), "{engine}");
    }
}
