//! `milvus-fleet apply`: the root side of a node. It renders this node's files from the
//! configuration (the cluster's, from etcd, plus local files) with the packaged
//! templates, installs the component units, and brings each to its wanted state in
//! dependency order, touching only what changed: a new component starts, a changed one
//! restarts (or reloads, when only the load balancer's upstreams changed), a dropped one
//! stops. A node removed from the cluster stops and uninstalls all of its components.
//!
//! `milvus-fleet-apply.path` runs it whenever the daemon writes a new cluster file, so
//! the unprivileged daemon never hands root anything but validated configuration.
//! It drives systemd with `systemctl` for now; the supervision loop moves to D-Bus.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::config::model::Role;
use crate::config::{ConfigPaths, FleetConfig, Settings};
use crate::render::plan::{Component, NodePlan, RENDERED_DIR};
use crate::render::{output::read_manifest, render_node, Templates, TEMPLATE_OVERRIDE_DIR};

pub const UNIT_DIR: &str = "/etc/systemd/system";

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

pub fn apply(paths: &ConfigPaths) -> anyhow::Result<ApplyReport> {
    let settings = Settings::load(paths)?;
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
    let previous = read_manifest(&rendered_dir);
    let Some(plan) = NodePlan::for_node(config, &node) else {
        // Removed from the cluster: stop and uninstall everything this node ran.
        report.removed = true;
        if let Some(previous) = previous {
            for name in previous.components.keys().rev() {
                let unit = format!("milvus-fleet-{name}.service");
                systemctl(&["disable", "--now", "--quiet", &unit])?;
                remove_unit(&unit)?;
                report.stopped.push(unit);
            }
            systemctl(&["daemon-reload"])?;
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

    let templates = Templates::load(Some(Path::new(TEMPLATE_OVERRIDE_DIR)))?;
    let rendered = render_node(config, &node, &templates)?;
    let manifest = rendered.manifest(&node);
    rendered.write_to(&rendered_dir, &node)?;

    // Units first, so one daemon-reload covers them all.
    let mut units_changed = false;
    for component in &plan.components {
        let source = rendered_dir.join(crate::render::plan::unit_path(*component));
        let target = Path::new(UNIT_DIR).join(component.unit_name());
        let bytes = std::fs::read(&source).with_context(|| format!("{}", source.display()))?;
        if std::fs::read(&target).ok().as_deref() != Some(bytes.as_slice()) {
            crate::membership::local::write_file(&target, &bytes, 0o644, None)?;
            units_changed = true;
        }
    }
    let dropped: Vec<String> = previous
        .as_ref()
        .map(|p| {
            p.components
                .keys()
                .filter(|name| !manifest.components.contains_key(*name))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for name in dropped.iter().rev() {
        let unit = format!("milvus-fleet-{name}.service");
        systemctl(&["disable", "--now", "--quiet", &unit])?;
        remove_unit(&unit)?;
        report.stopped.push(unit);
        units_changed = true;
    }
    if units_changed {
        systemctl(&["daemon-reload"])?;
    }
    systemctl(&["enable", "--quiet", "milvus-fleet.target"])?;

    let active_standalone = standalone_node(config);
    for component in &plan.components {
        let unit = component.unit_name();
        let view = plan.component_view(*component, config.milvus.metrics_port);
        if view.wanted_by_target {
            systemctl(&["enable", "--quiet", &unit])?;
        } else if *component == Component::Standalone
            && active_standalone.as_deref() != Some(node.as_str())
        {
            // Another node runs the one standalone server; this one stands by.
            systemctl(&["stop", &unit])?;
            report.unchanged.push(unit);
            continue;
        }
        let name = component.name();
        let old = previous.as_ref().and_then(|p| p.components.get(name));
        let running = is_active(&unit);
        if old.is_none() || !running {
            systemctl(&["start", &unit])?;
            report.started.push(unit);
        } else if old != manifest.components.get(name) {
            // Which of its files changed: only a reloadable config means a reload.
            let own = rendered.components.get(name).cloned().unwrap_or_default();
            let changed: Vec<&String> = own
                .iter()
                .filter(|f| {
                    previous.as_ref().and_then(|p| p.files.get(*f)) != manifest.files.get(*f)
                })
                .collect();
            if view.reloads && changed.iter().all(|f| f.starts_with("config/")) {
                systemctl(&["reload", &unit])?;
                report.reloaded.push(unit);
            } else {
                systemctl(&["restart", &unit])?;
                report.restarted.push(unit);
            }
        } else {
            report.unchanged.push(unit);
        }
    }
    Ok(report)
}

/// The node that runs the Milvus standalone server in the standalone-ha topology: the
/// first compute node in the cluster's node list, which only changes when that node
/// is removed (and its server stopped). Leader-driven failover replaces this rule.
pub fn standalone_node(config: &FleetConfig) -> Option<String> {
    config
        .nodes
        .iter()
        .find(|n| n.roles.contains(&Role::Compute))
        .map(|n| n.name.clone())
}

fn remove_unit(unit: &str) -> anyhow::Result<()> {
    match std::fs::remove_file(Path::new(UNIT_DIR).join(unit)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {unit}"))
        }
        _ => Ok(()),
    }
}

fn is_active(unit: &str) -> bool {
    Command::new("systemctl")
        .args(["is-active", "--quiet", unit])
        .status()
        .is_ok_and(|s| s.success())
}

pub fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .context("running systemctl")?;
    if !out.status.success() {
        bail!(
            "systemctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
