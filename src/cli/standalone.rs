//! `milvus-fleet clear-standalone-state`: empties this node's local state of the Milvus
//! standalone server (what milvus-fleet-standalone-clear.service runs, as root). The
//! daemon starts that unit before the server starts here under a new placement: another
//! node ran the server meanwhile, and a node-local message log (rocksmq) left from this
//! node's earlier run would be replayed over what the other node wrote. Segments and
//! indexes live in the object storage, so nothing here is needed by a fresh start. It
//! also resets the server unit's start limit (a move is no crash loop).

use std::path::Path;

use anyhow::Context;

use crate::config::{ConfigPaths, Settings};
use crate::render::plan::{Component, NodePlan};
use crate::supervise::systemd::Systemd;

pub fn run(paths: &ConfigPaths) -> anyhow::Result<()> {
    let settings = Settings::load(paths)?;
    // The data directory comes from root's own files, never from the daemon's.
    crate::membership::apply::guard_host_settings(&settings, paths)?;
    let Some(plan) = NodePlan::for_node(&settings.config, &settings.node_name) else {
        anyhow::bail!(
            "node {:?} is not in the cluster: no standalone state to clear",
            settings.node_name
        );
    };
    if !plan.components.contains(&Component::Standalone) {
        println!("this node runs no standalone server: nothing to clear");
        return Ok(());
    }
    let unit = Component::Standalone.unit_name();
    let runtime = crate::host::runtime()?;
    let state = runtime.block_on(async {
        let systemd = Systemd::system().await?;
        // A start under a new placement is a move, not a crash loop: the unit's start
        // limit (5 in 300 s, for a server that keeps failing) must not count the moves
        // before it, or a node refuses the server it was given. Root resets it here; the
        // daemon's polkit rule grants no reset-failed.
        if let Err(e) = systemd.reset_failed(&unit).await {
            eprintln!("resetting the start limit of {unit}: {e}");
        }
        systemd.state(&unit).await
    });
    match state {
        Ok(state) if !state.is_running() => {}
        Ok(state) => anyhow::bail!(
            "{unit} is {}: refusing to clear the state of a running server",
            state.active
        ),
        Err(e) => anyhow::bail!("cannot tell whether {unit} runs, so nothing is cleared: {e}"),
    }
    let dir = Path::new(&plan.data_dir)
        .join("milvus")
        .join(Component::Standalone.name());
    let cleared = clear_dir(&dir)?;
    println!(
        "cleared {cleared} entries from {}: the standalone server starts here with a clean local log",
        dir.display()
    );
    Ok(())
}

/// Removes everything inside `dir` (not `dir` itself: its owner and mode stay); a
/// missing `dir` has nothing to clear. Returns how many entries it removed.
fn clear_dir(dir: &Path) -> anyhow::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut cleared = 0;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let path = entry.path();
        // file_type does not follow symlinks: a link is removed, never what it names.
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
        cleared += 1;
    }
    Ok(cleared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearing_empties_the_directory_and_keeps_it_and_what_links_point_to() {
        let dir = tempfile::TempDir::new().unwrap();
        let outside = tempfile::TempDir::new().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let state = dir.path().join("standalone");
        std::fs::create_dir_all(state.join("rdb_data/000001")).unwrap();
        std::fs::write(state.join("rdb_data/000001/log"), "stale").unwrap();
        std::fs::write(state.join("marker"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), state.join("link")).unwrap();
        assert_eq!(clear_dir(&state).unwrap(), 3);
        assert!(state.is_dir());
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
        assert!(outside.path().join("keep").is_file());
        assert_eq!(clear_dir(&dir.path().join("missing")).unwrap(), 0);
    }
}
