//! Rendering: from the validated configuration and one node's name to every file that
//! node runs (compose files, systemd units, nginx, the milvus.yaml overlay, etcd's and
//! MinIO's settings), with a content hash per file and per component.
//!
//! Templates are minijinja files under `templates/`, embedded in the binary; a file of
//! the same name under `/etc/milvus-fleet/templates/` overrides one. Rendering is pure
//! (same input, same bytes) and happens wholly in memory before anything is written.

pub mod components;
pub mod output;
pub mod plan;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::value::Serde;
use minijinja::{context, Environment, UndefinedBehavior};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{hex, FleetConfig};
use plan::{unit_path, NodePlan};

pub const TEMPLATE_OVERRIDE_DIR: &str = "/etc/milvus-fleet/templates";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("node {0:?} is not one of the configured nodes")]
    UnknownNode(String),
    #[error("{}: cannot read template override: {error}", path.display())]
    ReadOverride {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("template {name}: {error}")]
    Template {
        name: String,
        error: minijinja::Error,
    },
    #[error("{}: {error}", path.display())]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: cannot encode the manifest: {error}", path.display())]
    EncodeManifest {
        path: PathBuf,
        error: serde_json::Error,
    },
}

/// The rendered tree of one node, in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Path relative to the tree's root -> contents.
    pub files: BTreeMap<String, String>,
    /// Component -> the files whose change means it must restart.
    pub components: BTreeMap<&'static str, Vec<String>>,
}

/// `manifest.json`: what the daemon compares to decide what to restart.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Manifest {
    pub node: String,
    /// File -> sha256 of its contents.
    pub files: BTreeMap<String, String>,
    /// Component -> sha256 over its files' hashes: a component restarts when this changes.
    pub components: BTreeMap<String, String>,
    /// Component -> the files in its hash (which of them changed decides reload or restart).
    #[serde(default)]
    pub component_files: BTreeMap<String, Vec<String>>,
}

impl Rendered {
    pub fn manifest(&self, node: &str) -> Manifest {
        let files: BTreeMap<String, String> = self
            .files
            .iter()
            .map(|(path, contents)| (path.clone(), sha256(contents.as_bytes())))
            .collect();
        let components = self
            .components
            .iter()
            .map(|(name, paths)| {
                let joined: String = paths
                    .iter()
                    .map(|p| format!("{p} {}\n", files[p]))
                    .collect();
                (name.to_string(), sha256(joined.as_bytes()))
            })
            .collect();
        Manifest {
            node: node.to_owned(),
            files,
            components,
            component_files: self
                .components
                .iter()
                .map(|(name, paths)| (name.to_string(), paths.clone()))
                .collect(),
        }
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The template set: embedded templates, each replaceable by a file in an override dir.
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Embedded templates overridden by any file of the same name under `override_dir`.
    pub fn load(override_dir: Option<&Path>) -> Result<Self, RenderError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Templates say how each value is quoted; no escaping by file extension (with
        // minijinja's json feature, .yaml files would otherwise be JSON-escaped).
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        // Config files end with a newline; block tags leave no blank lines behind.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|error| RenderError::Template {
                name: "(syntax)".into(),
                error,
            })?;
        env.set_syntax(syntax);
        for template in components::templates() {
            let name = template.path;
            let source = match override_dir.map(|dir| dir.join(name)) {
                Some(path) if path.is_file() => std::fs::read_to_string(&path)
                    .map_err(|error| RenderError::ReadOverride { path, error })?,
                _ => template.source.to_owned(),
            };
            env.add_template_owned(name, source)
                .map_err(|error| RenderError::Template {
                    name: name.to_string(),
                    error,
                })?;
        }
        Ok(Self { env })
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Result<String, RenderError> {
        let error = |error| RenderError::Template {
            name: name.to_owned(),
            error,
        };
        self.env
            .get_template(name)
            .map_err(error)?
            .render(ctx)
            .map_err(error)
    }
}

/// Renders everything node `node` runs.
pub fn render_node(
    config: &FleetConfig,
    node: &str,
    templates: &Templates,
) -> Result<Rendered, RenderError> {
    let plan = NodePlan::for_node(config, node)
        .ok_or_else(|| RenderError::UnknownNode(node.to_owned()))?;
    let mut files = BTreeMap::new();
    let mut components = BTreeMap::new();
    for &component in &plan.components {
        let view = plan.component_view(component, config.milvus.metrics_port);
        let ctx = context! { plan => Serde(&plan), component => Serde(&view) };
        let spec = component.spec();
        let mut own = vec![plan::compose_path(component), unit_path(component)];
        files.insert(
            own[0].clone(),
            templates.render(spec.compose.path, ctx.clone())?,
        );
        files.insert(
            own[1].clone(),
            templates.render(components::UNIT_TEMPLATE.path, ctx.clone())?,
        );
        for config_file in spec.configs {
            let path = config_file.template.path;
            // Shared files (the milvus.yaml overlay) render the same for every role.
            if !files.contains_key(path) {
                let contents = templates.render(path, ctx.clone())?;
                files.insert(path.to_owned(), contents);
            }
            if !config_file.bootstrap_only {
                own.push(path.to_owned());
            }
        }
        own.sort();
        components.insert(component.name(), own);
    }
    Ok(Rendered { files, components })
}
