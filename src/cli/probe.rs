//! `milvus-fleet probe URL`: one component health probe, what the component units'
//! ExecStartPost runs (so "active" means "answers").

use std::time::Duration;

use clap::Args;

use crate::supervise::health::{client, Health, Probe};

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// http://host:port/path (must answer 200) or tcp://host:port (must accept).
    probe: String,
    /// Keep probing up to this many seconds until healthy.
    #[arg(long, value_name = "SECONDS")]
    wait: Option<u64>,
    /// With --wait: stop waiting when this process is gone (a unit's ExecStartPost passes
    /// ${MAINPID}).
    #[arg(long, value_name = "PID", requires = "wait")]
    main_pid: Option<u32>,
}

pub fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let probe: Probe = args.probe.parse()?;
    let runtime = crate::host::runtime()?;
    runtime.block_on(async {
        match args.wait {
            Some(seconds) => probe
                .wait_healthy(Duration::from_secs(seconds), args.main_pid)
                .await
                .map_err(|why| anyhow::anyhow!("not healthy: {why}")),
            None => match probe.check(&client()?).await {
                Health::Healthy => Ok(()),
                Health::Unhealthy(why) => anyhow::bail!("{probe} answers unhealthy: {why}"),
                Health::NoAnswer(why) => anyhow::bail!("{probe} does not answer: {why}"),
            },
        }
    })?;
    println!("{probe}: healthy");
    Ok(())
}
