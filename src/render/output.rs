//! Writing a rendered tree: only files whose bytes changed are rewritten (each through a
//! temporary file and a rename, so a reader never sees half a file), files the new
//! render no longer has are removed, and `manifest.json` is written last.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use super::{Manifest, RenderError, Rendered};

pub const MANIFEST: &str = "manifest.json";

/// What a write changed, by path relative to the tree's root.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WriteReport {
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
}

impl Rendered {
    pub fn write_to(&self, dir: &Path, node: &str) -> Result<WriteReport, RenderError> {
        let previous = read_manifest(dir);
        let mut report = WriteReport::default();
        for (path, contents) in &self.files {
            let target = dir.join(path);
            if std::fs::read(&target).is_ok_and(|old| old == contents.as_bytes()) {
                report.unchanged.push(path.clone());
            } else {
                write_atomically(&target, contents.as_bytes())?;
                report.changed.push(path.clone());
            }
        }
        if let Some(previous) = previous {
            let kept: BTreeSet<&String> = self.files.keys().collect();
            for path in previous.files.keys().filter(|p| !kept.contains(p)) {
                // Only names from our own manifest, and never outside the tree.
                if path.split('/').any(|part| part == ".." || part.is_empty()) {
                    continue;
                }
                let target = dir.join(path);
                match std::fs::remove_file(&target) {
                    Ok(()) => report.removed.push(path.clone()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => {
                        return Err(RenderError::Write {
                            path: target,
                            error,
                        })
                    }
                }
            }
        }
        let manifest = serde_json::to_string_pretty(&self.manifest(node)).map_err(|error| {
            RenderError::EncodeManifest {
                path: dir.join(MANIFEST),
                error,
            }
        })? + "\n";
        write_atomically(&dir.join(MANIFEST), manifest.as_bytes())?;
        Ok(report)
    }
}

pub fn read_manifest(dir: &Path) -> Option<Manifest> {
    let text = std::fs::read_to_string(dir.join(MANIFEST)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_atomically(target: &Path, bytes: &[u8]) -> Result<(), RenderError> {
    let error = |error| RenderError::Write {
        path: target.to_owned(),
        error,
    };
    let parent = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(error)?;
    let tmp = parent.join(format!(
        ".{}.tmp",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("file")
    ));
    let mut file = std::fs::File::create(&tmp).map_err(error)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(error)?;
    std::fs::rename(&tmp, target).map_err(error)
}
