//! The kinds of cluster jobs and how each runs its steps: the catalog the daemon gives
//! the job engine (cluster/jobs.rs, which knows no concrete job). A new kind is a
//! variant of `JobKind` (the wire type) and its arms here.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::cluster::jobs::{JobKind, JobSteps, StepContext, StepEffects};
use crate::cluster::keys;
use crate::cluster::kv::Op;
use crate::membership::store::MembershipStore;

/// How many steps a job of `kind` has.
pub fn step_count(kind: &JobKind) -> u32 {
    match kind {
        JobKind::Drill { steps, .. } => *steps,
        JobKind::NodeRemove { .. } => crate::membership::remove::STEPS,
    }
}

/// Every kind milvus-fleet runs. Node removal changes etcd's membership too, which is
/// beyond the engine's key-value store: it has the etcd client of its own.
pub struct Catalog {
    pub etcd: etcd_client::Client,
}

impl JobSteps for Catalog {
    fn run<'a>(
        &'a self,
        step: StepContext<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<StepEffects, String>> + Send + 'a>> {
        Box::pin(async move {
            match step.kind {
                // A fire drill: each step waits, then records one side effect.
                JobKind::Drill { sleep_ms, .. } => {
                    tokio::time::sleep(Duration::from_millis(*sleep_ms)).await;
                    let effect = keys::drill_effect(step.prefix, step.id, step.step);
                    Ok(StepEffects {
                        ops: vec![Op::put(effect, format!("term {}", step.term))],
                        ..Default::default()
                    })
                }
                JobKind::NodeRemove { node } => {
                    let mut members =
                        MembershipStore::new(self.etcd.clone(), step.prefix.to_owned());
                    crate::membership::remove::step(&mut members, node, step.step).await
                }
            }
        })
    }
}
