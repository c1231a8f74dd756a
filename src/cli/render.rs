//! `milvus-fleet render`: the renderer the daemon uses, exposed on the command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::config::{ConfigPaths, Settings};
use crate::render::{render_node, Templates, TEMPLATE_OVERRIDE_DIR};

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The node to render for (default: this host's node name).
    #[arg(long)]
    node: Option<String>,
    /// Directory to write the rendered tree into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Directory whose templates override the built-in ones, by file name.
    #[arg(long, value_name = "DIR", default_value = TEMPLATE_OVERRIDE_DIR)]
    templates: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: RenderArgs, paths: &ConfigPaths) -> anyhow::Result<()> {
    let settings = Settings::load(paths)?;
    let node = args.node.unwrap_or_else(|| settings.node_name.clone());
    let templates = Templates::load(Some(&args.templates))?;
    // Everything is rendered in memory first: a bad template or node writes nothing.
    let rendered = render_node(&settings.config, &node, &templates)?;
    let report = rendered
        .write_to(&args.out, &node)
        .with_context(|| format!("writing the rendered tree to {}", args.out.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for path in &report.changed {
            println!("changed   {path}");
        }
        for path in &report.removed {
            println!("removed   {path}");
        }
        println!(
            "{}: {} changed, {} unchanged, {} removed",
            args.out.display(),
            report.changed.len(),
            report.unchanged.len(),
            report.removed.len()
        );
    }
    Ok(())
}
