//! Man page and shell completions, generated from the clap definitions so they
//! never drift from the real command line.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

pub fn generate(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut command = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .context("rendering the man page")?;
    let man = dir.join("milvus-fleet.1");
    std::fs::write(&man, page).with_context(|| format!("{}: cannot write", man.display()))?;
    for shell in [Shell::Bash, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command, "milvus-fleet", dir)
            .with_context(|| format!("writing {shell} completions to {}", dir.display()))?;
    }
    Ok(())
}
