//! `milvus-fleet job ...`: submit, list, show and cancel cluster jobs.
//!
//! For now the command line reads and writes job records in etcd itself, with the
//! node's etcd endpoints; the leader's daemon runs them.

use anyhow::Context;
use clap::Subcommand;

use crate::cluster::jobs::{Job, JobKind, JobStore};
use crate::config::{ConfigPaths, Settings};

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Queue a job; the leader runs it.
    #[command(subcommand)]
    Submit(SubmitCommand),
    /// List every job.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one job with its log.
    Show { id: String },
    /// Stop a job at its next step boundary.
    Cancel { id: String },
}

#[derive(Debug, Subcommand)]
pub enum SubmitCommand {
    /// A fire drill: steps that each wait, then record one side effect.
    Drill {
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
        steps: u32,
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
        sleep_ms: u64,
        /// The resource the job locks.
        #[arg(long, default_value = "drill")]
        resource: String,
    },
}

pub fn run(command: JobCommand, paths: &ConfigPaths) -> anyhow::Result<()> {
    let settings = Settings::load(paths)?;
    anyhow::ensure!(
        !settings.config.nodes.is_empty(),
        "this host is not part of a cluster yet: no nodes in the configuration"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let client = crate::cluster::connect(&settings.config)
            .await
            .context("connecting to etcd")?;
        let mut store = JobStore::new(client, crate::cluster::prefix(&settings.config));
        match command {
            JobCommand::Submit(SubmitCommand::Drill {
                steps,
                sleep_ms,
                resource,
            }) => {
                let job = store
                    .submit(JobKind::Drill { steps, sleep_ms }, &resource)
                    .await?;
                println!("{}", job.id);
            }
            JobCommand::List { json } => {
                let jobs = store.list().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&jobs)?);
                } else {
                    for job in &jobs {
                        println!("{}", summary(job));
                    }
                }
            }
            JobCommand::Show { id } => {
                let (job, _) = store.get(&id).await?;
                println!("{}", serde_json::to_string_pretty(&job)?);
            }
            JobCommand::Cancel { id } => {
                store.request_cancel(&id).await?;
                println!("cancel requested: {id} stops at its next step boundary");
            }
        }
        Ok(())
    })
}

fn summary(job: &Job) -> String {
    format!(
        "{}  {:<10} {}/{} steps  resource {}",
        job.id,
        format!("{:?}", job.state).to_lowercase(),
        job.done_steps,
        job.steps,
        job.resource
    )
}
