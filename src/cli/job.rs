//! `milvus-fleet job ...`: submit, list, show and cancel cluster jobs.
//!
//! Through the local daemon's API (its Unix socket); the leader's daemon runs them.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::local::request;
use crate::cluster::jobs::{Job, JobKind};

#[derive(Debug, Args)]
pub struct JobArgs {
    /// The daemon's local API socket.
    #[arg(long, global = true, value_name = "PATH", default_value = super::local::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    command: JobCommand,
}

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
    /// Print a job's progress as it happens, until it ends; exits non-zero unless it
    /// succeeded.
    Follow { id: String },
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

pub fn run(args: JobArgs) -> anyhow::Result<()> {
    let socket = &args.socket;
    match args.command {
        JobCommand::Submit(SubmitCommand::Drill {
            steps,
            sleep_ms,
            resource,
        }) => {
            let body = serde_json::to_string(&JobKind::Drill {
                steps,
                sleep_ms,
                resource,
            })?;
            let answer = request(socket, "POST", "/v1/jobs", Some(&body))?;
            let job: Job = serde_json::from_str(&answer).context("the daemon's answer")?;
            println!("{}", job.id);
        }
        JobCommand::List { json } => {
            let answer = request(socket, "GET", "/v1/jobs", None)?;
            if json {
                println!("{answer}");
            } else {
                let jobs: Vec<Job> =
                    serde_json::from_str(&answer).context("the daemon's answer")?;
                for job in &jobs {
                    println!("{}", summary(job));
                }
            }
        }
        JobCommand::Show { id } => {
            let answer = request(
                socket,
                "GET",
                &format!("/v1/jobs/{}", path_segment(&id)?),
                None,
            )?;
            let job: serde_json::Value =
                serde_json::from_str(&answer).context("the daemon's answer")?;
            println!("{}", serde_json::to_string_pretty(&job)?);
        }
        JobCommand::Follow { id } => follow(socket, path_segment(&id)?)?,
        JobCommand::Cancel { id } => {
            request(
                socket,
                "POST",
                &format!("/v1/jobs/{}/cancel", path_segment(&id)?),
                Some("{}"),
            )?;
            println!("cancel requested: {id} stops at its next step boundary");
        }
    }
    Ok(())
}

/// Polls the job and prints each new log line; the job's record is the progress.
pub(super) fn follow(socket: &std::path::Path, id: &str) -> anyhow::Result<()> {
    let mut printed = 0;
    let mut unavailable = 0;
    loop {
        // The job runs in the leader whatever happens to this view of it: an etcd member
        // going away under the daemon (a node removal stops one) is a passing 503, so
        // keep polling for a while.
        let answer = match request(socket, "GET", &format!("/v1/jobs/{id}"), None) {
            Ok(answer) => answer,
            Err(e) if e.to_string().ends_with("(HTTP 503)") && unavailable < 40 => {
                unavailable += 1;
                std::thread::sleep(std::time::Duration::from_millis(250));
                continue;
            }
            Err(e) => return Err(e),
        };
        unavailable = 0;
        let job: Job = serde_json::from_str(&answer).context("the daemon's answer")?;
        for line in job.log.iter().skip(printed) {
            println!("{line}");
        }
        printed = job.log.len();
        if job.state.is_final() {
            anyhow::ensure!(
                job.state == crate::cluster::jobs::JobState::Succeeded,
                "job {id} ended {} after {} of {} steps",
                job.state.as_str(),
                job.done_steps,
                job.steps
            );
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// Job ids go into the request path as they are: only plain characters.
fn path_segment(id: &str) -> anyhow::Result<&str> {
    anyhow::ensure!(crate::cluster::jobs::is_plain_name(id), "no job {id:?}");
    Ok(id)
}

fn summary(job: &Job) -> String {
    format!(
        "{}  {:<10} {}/{} steps  resource {}",
        job.id,
        job.state.as_str(),
        job.done_steps,
        job.steps,
        job.resource
    )
}
