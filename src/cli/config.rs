//! `milvus-fleet config ...`

use clap::Subcommand;
use serde_json::json;

use crate::config::{ConfigPaths, Settings};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the merged result.
    Check {
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: ConfigCommand, paths: &ConfigPaths) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Check { json } => check(paths, json),
    }
}

fn check(paths: &ConfigPaths, as_json: bool) -> anyhow::Result<()> {
    let settings = Settings::load(paths)?;
    if !settings.config.nodes.is_empty() && settings.local_node().is_none() {
        eprintln!(
            "note: this host ({}) is not one of the configured nodes; set local.node_name on a cluster node",
            settings.node_name
        );
    }
    if as_json {
        let out = json!({
            "valid": true,
            "sources": settings.sources,
            "fingerprint": settings.fingerprint(),
            "node_name": settings.node_name,
            "settings": settings.config,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("# valid; merged from, in order:");
        for source in &settings.sources {
            println!("#   {}", source.display());
        }
        println!("# fingerprint: sha256:{}", settings.fingerprint());
        println!("# this host's node name: {}", settings.node_name);
        print!("{}", settings.to_toml());
    }
    Ok(())
}
