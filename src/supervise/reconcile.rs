//! Bringing this node's component units to the rendered state, over D-Bus: in dependency
//! order (the plan's component order), one job at a time, each waited for through its
//! `JobRemoved` (a component unit's start ends with its health probe, so the next one
//! starts on a healthy dependency). Only what changed is touched: a stopped unit starts,
//! a unit whose files changed restarts (or reloads when only a reloadable config
//! changed), everything else is left alone. The manifest last brought up is kept in
//! /run, so a daemon restart does not restart anything and a reboot starts afresh.
//!
//! The root side (`milvus-fleet apply`) and the unprivileged daemon share this code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::systemd::{Systemd, SystemdError, UnitAction};
use crate::render::plan::{Component, NodePlan};
use crate::render::Manifest;

/// How long one unit job may take: a start includes the component's health probe.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// What the standalone server (standalone-ha topology) should do on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandaloneWanted {
    /// The placement names this node (and the old server is provably gone).
    Run,
    Stop,
    /// Not this caller's decision (the root side's `apply`), or not known yet (a daemon
    /// that just started and has not read the placement: it adopts what runs).
    Leave,
}

/// The line of the load balancer's placement file (see templates/config/lb/nginx.conf)
/// that sends clients to the node the standalone server is placed on; `None` (leave the
/// file as it is) when nothing is placed or the node is not one of the plan's compute
/// nodes (a group nginx does not know would fail every connection).
pub fn lb_placement_entry(plan: &NodePlan, placed_on: Option<&str>) -> Option<String> {
    let group = crate::render::plan::placed_upstream_group(placed_on?);
    plan.lb
        .placed_upstreams
        .iter()
        .any(|p| p.group == group)
        .then(|| format!("standalone {group};\n"))
}

/// The root unit that empties this node's local standalone state (packaged; runs
/// `milvus-fleet clear-standalone-state`).
pub const CLEAR_STANDALONE_UNIT: &str = "milvus-fleet-standalone-clear.service";

/// A placement record as the node-local state knows it: a record naming this node that
/// differs from the one its server last ran under here means the server ran elsewhere
/// (or nowhere) in between.
pub fn placement_id(placement: &crate::cluster::placement::Placement) -> String {
    format!(
        "{} {} {}",
        placement.node, placement.term, placement.since_unix
    )
}

/// Whether the standalone server must start here with a clean local state (its
/// node-local message log among it): it starts under another placement than the one it
/// last ran under on this node, so any log left here is older than what the node that
/// ran it meanwhile wrote. Under the same placement (a restart here) the log is this
/// server's own and must be replayed.
pub fn needs_clean_state(last_ran_under: Option<&str>, placement_id: &str) -> bool {
    last_ran_under.map(str::trim) != Some(placement_id)
}

/// What this node does with the standalone server, from the node the placement record
/// names and whether this daemon has lost etcd for long (then it cannot learn that the
/// server moved: it starts none, and leaves a running one to its own session, which
/// fences it; the supervisor keeps a restarting one from coming back).
pub fn standalone_wanted(
    placed_on: Option<&str>,
    me: &str,
    out_of_touch: bool,
) -> StandaloneWanted {
    match placed_on {
        _ if out_of_touch => StandaloneWanted::Leave,
        Some(node) if node == me => StandaloneWanted::Run,
        Some(_) => StandaloneWanted::Stop,
        None => StandaloneWanted::Leave,
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ConvergeReport {
    pub started: Vec<String>,
    pub restarted: Vec<String>,
    pub reloaded: Vec<String>,
    pub stopped: Vec<String>,
    pub unchanged: Vec<String>,
    /// Units systemd gave up on (start limit hit); left for the operator.
    pub failed: Vec<String>,
}

/// The manifest last brought up on this node, in /run (gone at reboot, as it should be:
/// after a boot every running unit started from the files on disk).
pub fn applied_file() -> PathBuf {
    crate::host::runtime_dir().join("applied.json")
}

fn read_applied(path: &Path) -> Manifest {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// Records what was brought up; a failure is logged, not fatal: without the record the
/// next round compares against an empty state and restarts what it cannot vouch for.
fn write_applied(path: &Path, applied: &Manifest) {
    let written = serde_json::to_string_pretty(applied)
        .map_err(anyhow::Error::from)
        .and_then(|text| crate::host::write_file(path, text.as_bytes(), 0o644, None));
    if let Err(e) = written {
        tracing::warn!("recording the applied state in {}: {e:#}", path.display());
    }
}

/// Converges the node's units to `manifest` (the root side's latest render of `plan`).
/// `progress` hears each step (the daemon puts it in its STATUS= line).
pub async fn converge(
    systemd: &Systemd,
    plan: &NodePlan,
    manifest: &Manifest,
    standalone: StandaloneWanted,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<ConvergeReport, SystemdError> {
    let path = applied_file();
    let mut applied = read_applied(&path);
    applied.node = manifest.node.clone();
    let mut report = ConvergeReport::default();
    for component in &plan.components {
        let unit = component.unit_name();
        let name = component.name();
        let state = systemd.state(&unit).await?;
        if *component == Component::Standalone && standalone != StandaloneWanted::Run {
            if standalone == StandaloneWanted::Stop && state.is_running() {
                progress(&format!(
                    "stopping {unit}: another node runs the standalone server"
                ));
                systemd.run(UnitAction::Stop, &unit, JOB_TIMEOUT).await?;
                report.stopped.push(unit);
            } else {
                report.unchanged.push(unit);
            }
            continue;
        }
        let action = if state.is_running() {
            match changed_files(&applied, manifest, name) {
                None => None,
                Some(changed) => {
                    let reloads = component.spec().reloads;
                    Some(
                        if reloads && changed.iter().all(|f| f.starts_with("config/")) {
                            UnitAction::Reload
                        } else {
                            UnitAction::Restart
                        },
                    )
                }
            }
        } else if state.gave_up() {
            // systemd gave up on it; starting it again here would make the flapping
            // this limit exists to stop. `systemctl reset-failed` arms it again.
            report.failed.push(unit);
            continue;
        } else {
            Some(UnitAction::Start)
        };
        if let Some(action) = action {
            progress(&format!("{action} {unit}"));
            systemd.run(action, &unit, JOB_TIMEOUT).await?;
            match action {
                UnitAction::Start => report.started.push(unit),
                UnitAction::Restart | UnitAction::RestartAlone => report.restarted.push(unit),
                UnitAction::Reload => report.reloaded.push(unit),
                UnitAction::Stop => report.stopped.push(unit),
            }
        } else {
            report.unchanged.push(unit);
        }
        record(&mut applied, manifest, name);
        write_applied(&path, &applied);
    }
    // Components this node no longer runs (their units are gone) leave the record.
    applied
        .components
        .retain(|name, _| manifest.components.contains_key(name));
    write_applied(&path, &applied);
    Ok(report)
}

/// The component's files whose hashes differ between what runs and the new render;
/// None when the component is unchanged, or when nothing is recorded for it (a unit
/// found running after a boot started from the files on disk).
fn changed_files(applied: &Manifest, manifest: &Manifest, name: &str) -> Option<Vec<String>> {
    let old = applied.components.get(name)?;
    if manifest.components.get(name) == Some(old) {
        return None;
    }
    let files = manifest
        .component_files
        .get(name)
        .cloned()
        .unwrap_or_default();
    Some(
        files
            .into_iter()
            .filter(|f| applied.files.get(f) != manifest.files.get(f))
            .collect(),
    )
}

fn record(applied: &mut Manifest, manifest: &Manifest, name: &str) {
    if let Some(hash) = manifest.components.get(name) {
        applied.components.insert(name.to_owned(), hash.clone());
    }
    let files = manifest
        .component_files
        .get(name)
        .cloned()
        .unwrap_or_default();
    for file in &files {
        if let Some(hash) = manifest.files.get(file) {
            applied.files.insert(file.clone(), hash.clone());
        }
    }
    applied.component_files.insert(name.to_owned(), files);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The units the daemon may manage through polkit: every component's, the root
    /// render and the standalone state clear.
    fn managed_units() -> std::collections::BTreeSet<String> {
        crate::render::components::COMPONENTS
            .iter()
            .map(|spec| spec.component.unit_name())
            .chain([
                super::super::node::RENDER_UNIT.to_owned(),
                CLEAR_STANDALONE_UNIT.to_owned(),
            ])
            .collect()
    }

    #[test]
    fn the_polkit_rule_names_exactly_the_units_the_daemon_manages() {
        let rule = include_str!("../../systemd/milvus-fleet.rules");
        let list = rule
            .split_once("var MILVUS_FLEET_UNITS = [")
            .and_then(|(_, rest)| rest.split_once("];"))
            .expect("the rule's unit list")
            .0;
        let listed: std::collections::BTreeSet<String> = list
            .split(',')
            .map(|item| item.trim().trim_matches('"').to_owned())
            .filter(|item| !item.is_empty())
            .collect();
        assert_eq!(listed, managed_units());
        assert!(
            rule.contains(r#"var MILVUS_FLEET_VERBS = ["start", "stop", "restart", "reload"];"#)
        );
    }

    #[test]
    fn the_load_balancer_is_pointed_only_at_a_compute_node_it_knows() {
        use crate::config::model::{NodeConfig, Role, Topology};
        let node = |name: &str, address: &str, roles: &[Role]| NodeConfig {
            name: name.into(),
            address: address.into(),
            roles: roles.to_vec(),
        };
        let mut config = crate::config::FleetConfig {
            nodes: vec![
                node("a", "10.0.0.1", &[Role::Storage, Role::Compute]),
                node("b", "10.0.0.2", &[Role::Storage, Role::Compute]),
                node("c", "10.0.0.3", &[Role::Witness]),
            ],
            ..Default::default()
        };
        config.cluster.topology = Topology::StandaloneHa;
        let plan = NodePlan::for_node(&config, "a").unwrap();
        assert_eq!(
            lb_placement_entry(&plan, Some("b")).as_deref(),
            Some("standalone milvus_on_b;\n")
        );
        // That group leads to b's server only.
        let group = &plan.lb.placed_upstreams[1];
        assert_eq!(
            (group.group.as_str(), group.server.as_str()),
            ("milvus_on_b", "10.0.0.2:19530")
        );
        // Nothing placed, or placed on a node without the compute role: no entry.
        assert_eq!(lb_placement_entry(&plan, None), None);
        assert_eq!(lb_placement_entry(&plan, Some("c")), None);
        // The distributed topology has proxies everywhere: no placement.
        config.cluster.topology = Topology::Distributed;
        let plan = NodePlan::for_node(&config, "a").unwrap();
        assert_eq!(lb_placement_entry(&plan, Some("b")), None);
    }

    #[test]
    fn a_server_starts_with_a_clean_local_state_only_under_a_new_placement() {
        let placement = |node: &str, term, since_unix| crate::cluster::placement::Placement {
            node: node.into(),
            term,
            reason: String::new(),
            since_unix,
        };
        let here = placement_id(&placement("h1", 7, 100));
        // Never ran here, or ran under an older record (h2 ran it in between).
        assert!(needs_clean_state(None, &here));
        assert!(needs_clean_state(Some("h1 3 40"), &here));
        // A restart under the record it ran under: its own log is replayed.
        assert!(!needs_clean_state(Some(&format!("{here}\n")), &here));
        // The same node, placed again by a later term: someone else ran it between.
        assert!(needs_clean_state(
            Some(&here),
            &placement_id(&placement("h1", 9, 300))
        ));
    }

    #[test]
    fn the_standalone_server_runs_where_it_is_placed_and_nowhere_else() {
        assert_eq!(
            standalone_wanted(Some("h1"), "h1", false),
            StandaloneWanted::Run
        );
        assert_eq!(
            standalone_wanted(Some("h2"), "h1", false),
            StandaloneWanted::Stop
        );
        // A daemon that has not read the record yet leaves a running server alone.
        assert_eq!(
            standalone_wanted(None, "h1", false),
            StandaloneWanted::Leave
        );
        // Out of touch with etcd: it cannot know the server stays here, so it starts none
        // and leaves a running one to its session.
        assert_eq!(
            standalone_wanted(Some("h1"), "h1", true),
            StandaloneWanted::Leave
        );
    }
}
