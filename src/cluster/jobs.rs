//! Durable jobs: records in etcd that the leader runs step by step.
//!
//! A job is `<prefix>jobs/<id>` (JSON) plus a lock `<prefix>locks/<resource>` holding its
//! id, both created in one transaction, so two jobs never work on one resource. The
//! leader runs a step, then commits its effects and the job's progress in one
//! transaction guarded by its term and by the job record's revision: a step's effects
//! are recorded exactly once, a deposed leader records nothing, and a new leader resumes
//! from the last committed step (steps are idempotent, so re-running an uncommitted one
//! is safe). Cancellation is a flag the runner honours at the next step boundary.

use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::kv::{Changes, Check, Cmp, Kv, Op, Txn};
use super::{keys, ClusterError};

/// What a job does: the one wire type of a job, in the body of `POST /v1/jobs` (which the
/// CLI sends), in the job's record and in the API's answers.
/// `{"type": "drill", "steps": N, "sleep_ms": N, "resource": "..."}`,
/// `{"type": "node-remove", "node": "NAME"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum JobKind {
    /// A fire drill: `steps` steps that each wait `sleep_ms` and record one side effect,
    /// holding the lock on `resource`.
    Drill {
        steps: u32,
        sleep_ms: u64,
        #[serde(default = "drill_resource")]
        resource: String,
    },
    /// Takes a node out of the cluster (membership/remove.rs).
    NodeRemove { node: String },
}

fn drill_resource() -> String {
    "drill".into()
}

/// What one step of a job changes: committed with the job's progress in one transaction
/// guarded by the leader's term, the job record's revision and `compares`.
#[derive(Debug, Default)]
pub struct StepEffects {
    pub compares: Vec<Check>,
    pub ops: Vec<Op>,
    /// What the step did, for the job's log.
    pub log: String,
}

/// One step of one job, as the engine hands it to its kind.
pub struct StepContext<'a> {
    pub prefix: &'a str,
    pub id: &'a str,
    pub kind: &'a JobKind,
    pub step: u32,
    pub term: i64,
}

/// How the kinds of jobs run: the engine knows no concrete job. The daemon gives it the
/// catalog of kinds (crate::job_kinds); a step must be idempotent (a step that ran but
/// did not commit runs again under the next leader).
pub trait JobSteps: Send + Sync {
    /// Runs one step: what it changes, or why the job fails.
    fn run<'a>(
        &'a self,
        step: StepContext<'a>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<StepEffects, String>> + Send + 'a>>;
}

impl JobKind {
    /// The resource a job of this kind locks: one membership change at a time.
    pub fn resource(&self) -> String {
        match self {
            JobKind::Drill { resource, .. } => resource.clone(),
            JobKind::NodeRemove { .. } => "membership".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// Its name, as on the wire (JSON) and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    pub resource: String,
    pub state: JobState,
    /// Steps committed so far (the next step to run).
    pub done_steps: u32,
    pub steps: u32,
    /// The leader term that last committed progress.
    pub owner_term: i64,
    pub created_unix_ms: u64,
    pub updated_unix_ms: u64,
    pub cancel_requested: bool,
    pub log: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("resource {resource:?} is locked by job {holder}; wait for it or cancel it")]
    Locked { resource: String, holder: String },
    #[error("no job {0:?}")]
    NotFound(String),
    #[error("resource {0:?}: use 1-64 of a-z, A-Z, 0-9, '-', '_', '.'")]
    InvalidResource(String),
    #[error("drill: steps must be 1..=1000 and sleep_ms at most 3600000")]
    InvalidDrill,
    #[error("job {0} has already ended")]
    Ended(String),
    #[error("job {id}: stored record is not valid: {error}")]
    Corrupt {
        id: String,
        error: serde_json::Error,
    },
    #[error("resource {0:?}: every job id drawn was taken; submit again")]
    NoFreeId(String),
    #[error("job {id}: cannot encode its record: {error}")]
    Encode {
        id: String,
        error: serde_json::Error,
    },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl From<etcd_client::Error> for JobError {
    fn from(e: etcd_client::Error) -> Self {
        JobError::Cluster(e.into())
    }
}

/// 1-64 of a-z, A-Z, 0-9, '-', '_', '.': what may go into an etcd key segment or a URL
/// path as it is (resource names, job ids).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The bytes of a job record (an error, not an empty record, if it cannot be encoded).
fn encode(job: &Job) -> Result<Vec<u8>, JobError> {
    serde_json::to_vec(job).map_err(|error| JobError::Encode {
        id: job.id.clone(),
        error,
    })
}

/// A new job id: the creation time in ms, then 32 random bits (ids sort by creation; the
/// creating transaction refuses an id that exists, and submit draws again).
fn new_job_id(created_ms: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    static DRAWN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // RandomState is seeded from the OS per process; the counter and time vary each draw.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(DRAWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    format!("{created_ms:013x}{:08x}", hasher.finish() as u32)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Job records and locks of one cluster.
#[derive(Clone)]
pub struct JobStore {
    kv: Arc<dyn Kv>,
    prefix: String,
}

impl JobStore {
    pub fn new(kv: Arc<dyn Kv>, prefix: String) -> Self {
        Self { kv, prefix }
    }

    fn job_key(&self, id: &str) -> String {
        keys::job(&self.prefix, id)
    }

    fn lock_key(&self, resource: &str) -> String {
        keys::lock(&self.prefix, resource)
    }

    /// Queues a job of `steps` steps, refused when its resource is locked by another.
    pub async fn submit(
        &mut self,
        kind: JobKind,
        steps: u32,
        resource: &str,
    ) -> Result<Job, JobError> {
        // Resource names become etcd key segments.
        if !is_plain_name(resource) {
            return Err(JobError::InvalidResource(resource.to_owned()));
        }
        if let JobKind::Drill {
            steps, sleep_ms, ..
        } = &kind
        {
            if !(1..=1000).contains(steps) || *sleep_ms > 3_600_000 {
                return Err(JobError::InvalidDrill);
            }
        }
        let created = now_ms();
        let lock = self.lock_key(resource);
        // A drawn id that exists already (a twin drawn in the same millisecond) fails the
        // transaction with the lock free: draw again.
        for _ in 0..5 {
            let id = new_job_id(created);
            let job = Job {
                id: id.clone(),
                steps,
                kind: kind.clone(),
                resource: resource.to_owned(),
                state: JobState::Queued,
                done_steps: 0,
                owner_term: 0,
                created_unix_ms: created,
                updated_unix_ms: created,
                cancel_requested: false,
                log: vec![],
            };
            let key = self.job_key(&id);
            let txn = Txn {
                when: vec![Check::absent(lock.clone()), Check::absent(key.clone())],
                then: vec![
                    Op::put(key, encode(&job)?),
                    Op::put(lock.clone(), id.clone()),
                ],
                otherwise: vec![Op::get(lock.clone())],
            };
            let response = self.kv.txn(txn).await?;
            if response.succeeded {
                return Ok(job);
            }
            if let Some(holder) = response.first_got() {
                return Err(JobError::Locked {
                    resource: resource.to_owned(),
                    holder: holder.value_str().to_owned(),
                });
            }
        }
        Err(JobError::NoFreeId(resource.to_owned()))
    }

    /// A job and its record's revision.
    pub async fn get(&mut self, id: &str) -> Result<(Job, i64), JobError> {
        let entry = self
            .kv
            .get(&self.job_key(id))
            .await?
            .ok_or_else(|| JobError::NotFound(id.to_owned()))?;
        let job = serde_json::from_slice(&entry.value).map_err(|error| JobError::Corrupt {
            id: id.to_owned(),
            error,
        })?;
        Ok((job, entry.mod_revision))
    }

    /// Every job, oldest first.
    pub async fn list(&mut self) -> Result<Vec<Job>, JobError> {
        let prefix = keys::jobs(&self.prefix);
        let mut jobs: Vec<Job> = self
            .kv
            .get_prefix(&prefix)
            .await?
            .iter()
            .filter_map(|entry| serde_json::from_slice(&entry.value).ok())
            .collect();
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(jobs)
    }

    /// A watch on the job records: the runner takes new jobs up when one is written.
    pub async fn watch_jobs(&mut self) -> Result<Changes, JobError> {
        Ok(self.kv.watch_puts(&keys::jobs(&self.prefix)).await?)
    }

    /// Every live daemon (its registration goes with its lease): node -> API URL.
    pub async fn members(
        &mut self,
    ) -> Result<std::collections::BTreeMap<String, String>, JobError> {
        let prefix = keys::members(&self.prefix);
        Ok(self
            .kv
            .get_prefix(&prefix)
            .await?
            .iter()
            .filter_map(|entry| {
                let node = entry.key.strip_prefix(&prefix)?;
                Some((node.to_owned(), entry.value_str().to_owned()))
            })
            .collect())
    }

    /// Asks the runner to stop the job at its next step boundary.
    pub async fn request_cancel(&mut self, id: &str) -> Result<Job, JobError> {
        loop {
            let (mut job, revision) = self.get(id).await?;
            if job.state.is_final() {
                return Err(JobError::Ended(id.to_owned()));
            }
            job.cancel_requested = true;
            let key = self.job_key(id);
            let txn = Txn {
                when: vec![Check::mod_revision(key.clone(), Cmp::Equal, revision)],
                then: vec![Op::put(key, encode(&job)?)],
                otherwise: vec![],
            };
            if self.kv.txn(txn).await?.succeeded {
                return Ok(job);
            }
            // The runner committed a step meanwhile: read again.
        }
    }
}

/// Why a runner stopped working on a job.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    Finished(JobState),
    /// This daemon is no longer the leader of `term`.
    Fenced,
}

/// Runs `id` to its end as the leader of `term`, its steps by `kinds`.
pub async fn run_job(
    store: &mut JobStore,
    kinds: &dyn JobSteps,
    leader_key: &str,
    term: i64,
    id: &str,
) -> Result<Stop, JobError> {
    loop {
        let (mut job, revision) = store.get(id).await?;
        if job.state.is_final() {
            return Ok(Stop::Finished(job.state));
        }
        let key = store.job_key(id);
        let guard = [
            Check::create_revision(leader_key, Cmp::Equal, term),
            Check::mod_revision(key.clone(), Cmp::Equal, revision),
        ];
        let mut effects: Vec<Op> = Vec::new();
        let mut compares: Vec<Check> = Vec::new();
        if job.cancel_requested {
            job.state = JobState::Cancelled;
            job.log.push(format!(
                "cancelled after step {} of {}",
                job.done_steps, job.steps
            ));
        } else if job.done_steps >= job.steps {
            job.state = JobState::Succeeded;
            job.log.push("succeeded".into());
        } else {
            let step = job.done_steps;
            let mut note = String::new();
            let mut failure = None;
            let ran = kinds
                .run(StepContext {
                    prefix: &store.prefix,
                    id,
                    kind: &job.kind,
                    step,
                    term,
                })
                .await;
            match ran {
                Ok(done) => {
                    compares = done.compares;
                    effects = done.ops;
                    if !done.log.is_empty() {
                        note = format!(": {}", done.log);
                    }
                }
                Err(reason) => failure = Some(reason),
            }
            if let Some(reason) = failure {
                job.state = JobState::Failed;
                job.log.push(format!(
                    "step {} of {} failed: {reason}",
                    step + 1,
                    job.steps
                ));
            } else {
                job.state = JobState::Running;
                job.done_steps = step + 1;
                job.log.push(format!(
                    "step {} of {} done (term {term}){note}",
                    step + 1,
                    job.steps
                ));
            }
        }
        job.owner_term = term;
        job.updated_unix_ms = now_ms();
        let mut ops = vec![Op::put(key.clone(), encode(&job)?)];
        ops.extend(effects);
        if job.state.is_final() {
            ops.push(Op::delete(store.lock_key(&job.resource)));
        }
        let txn = Txn {
            when: guard.into_iter().chain(compares).collect(),
            then: ops,
            otherwise: vec![Op::get(leader_key)],
        };
        let response = store.kv.txn(txn).await?;
        if !response.succeeded {
            // Either another term holds the leader key (stop at once) or the record
            // changed under us (a cancel request): read it again.
            let still_ours = response
                .first_got()
                .is_some_and(|leader| leader.create_revision == term);
            if !still_ours {
                return Ok(Stop::Fenced);
            }
            continue;
        }
        if job.state.is_final() {
            return Ok(Stop::Finished(job.state));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::kv::MemoryKv;
    use std::sync::Mutex;

    const PREFIX: &str = "/t/";
    const LEADER: &str = "/t/leader";

    /// Makes `node` the leader under a new lease, as a won campaign does: its term.
    async fn elect(kv: &MemoryKv, node: &str) -> (i64, i64) {
        let lease = kv.grant_lease();
        let won = crate::cluster::election::campaign(kv, LEADER, node, lease, false)
            .await
            .unwrap();
        assert!(won.won, "{node} leads");
        (lease, won.revision)
    }

    /// Steps that each record `effects/<step>` = the term that ran it, count how often
    /// each step ran, and can lose the leader in the middle of one step: the leader's
    /// lease runs out and `next` leads before the step's effects are committed.
    #[derive(Default)]
    struct Recorder {
        runs: Mutex<Vec<u32>>,
        lose_leader: Mutex<Option<(u32, MemoryKv, i64)>>,
        next_term: Mutex<Option<i64>>,
        fail_at: Option<u32>,
    }

    impl JobSteps for Recorder {
        fn run<'a>(
            &'a self,
            step: StepContext<'a>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<StepEffects, String>> + Send + 'a>,
        > {
            Box::pin(async move {
                self.runs.lock().unwrap().push(step.step);
                if self.fail_at == Some(step.step) {
                    return Err("the step failed".into());
                }
                let lose = self.lose_leader.lock().unwrap().take();
                match lose {
                    Some((at, kv, lease)) if at == step.step => {
                        kv.expire_lease(lease);
                        let (_, term) = elect(&kv, "b").await;
                        *self.next_term.lock().unwrap() = Some(term);
                    }
                    other => *self.lose_leader.lock().unwrap() = other,
                }
                Ok(StepEffects {
                    ops: vec![Op::put(
                        format!("{PREFIX}effects/{}", step.step),
                        step.term.to_string(),
                    )],
                    log: String::new(),
                    ..Default::default()
                })
            })
        }
    }

    fn drill(resource: &str) -> JobKind {
        JobKind::Drill {
            steps: 4,
            sleep_ms: 0,
            resource: resource.into(),
        }
    }

    fn store(kv: &MemoryKv) -> JobStore {
        JobStore::new(Arc::new(kv.clone()), PREFIX.into())
    }

    async fn effects(kv: &MemoryKv) -> Vec<String> {
        kv.get_prefix(&format!("{PREFIX}effects/"))
            .await
            .unwrap()
            .iter()
            .map(|e| e.value_str().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_locked_resource_refuses_a_second_job_until_the_first_ends() {
        let kv = MemoryKv::new();
        let mut jobs = store(&kv);
        let first = jobs.submit(drill("r"), 4, "r").await.unwrap();
        match jobs.submit(drill("r"), 4, "r").await {
            Err(JobError::Locked { resource, holder }) => {
                assert_eq!(
                    (resource.as_str(), holder.as_str()),
                    ("r", first.id.as_str())
                );
            }
            other => panic!("refused while locked: {other:?}"),
        }
        jobs.submit(drill("s"), 4, "s")
            .await
            .expect("another resource is free");
        assert_eq!(
            jobs.list().await.unwrap().len(),
            2,
            "the refusal wrote nothing"
        );

        let (_, term) = elect(&kv, "a").await;
        let stop = run_job(&mut jobs, &Recorder::default(), LEADER, term, &first.id)
            .await
            .unwrap();
        assert_eq!(stop, Stop::Finished(JobState::Succeeded));
        assert!(
            kv.get(&keys::lock(PREFIX, "r")).await.unwrap().is_none(),
            "lock released"
        );
        jobs.submit(drill("r"), 4, "r").await.expect("free again");
    }

    #[tokio::test]
    async fn a_job_resumes_under_the_next_leader_from_its_last_committed_step() {
        let kv = MemoryKv::new();
        let mut jobs = store(&kv);
        let job = jobs.submit(drill("r"), 4, "r").await.unwrap();
        let (lease_a, term_a) = elect(&kv, "a").await;
        let steps = Recorder::default();
        // a loses leadership while running step 2 (the third): its commit must be refused.
        *steps.lose_leader.lock().unwrap() = Some((2, kv.clone(), lease_a));

        let stop = run_job(&mut jobs, &steps, LEADER, term_a, &job.id)
            .await
            .unwrap();
        assert_eq!(stop, Stop::Fenced);
        let (record, _) = jobs.get(&job.id).await.unwrap();
        assert_eq!((record.done_steps, record.owner_term), (2, term_a));
        assert_eq!(effects(&kv).await, [term_a.to_string(), term_a.to_string()]);

        let term_b = steps.next_term.lock().unwrap().expect("b leads");
        let stop = run_job(&mut jobs, &steps, LEADER, term_b, &job.id)
            .await
            .unwrap();
        assert_eq!(stop, Stop::Finished(JobState::Succeeded));
        // Steps 0 and 1 are a's, 2 and 3 b's; each recorded once. Step 2 ran twice (a's
        // run was never committed), the others once.
        let (a, b) = (term_a.to_string(), term_b.to_string());
        assert_eq!(effects(&kv).await, [a.clone(), a.clone(), b.clone(), b]);
        assert_eq!(*steps.runs.lock().unwrap(), [0, 1, 2, 2, 3]);
        let (record, _) = jobs.get(&job.id).await.unwrap();
        assert_eq!((record.done_steps, record.owner_term), (4, term_b));
        assert!(
            kv.get(&keys::lock(PREFIX, "r")).await.unwrap().is_none(),
            "lock released"
        );
    }

    #[tokio::test]
    async fn a_deposed_leader_records_nothing_of_a_job() {
        let kv = MemoryKv::new();
        let mut jobs = store(&kv);
        let job = jobs.submit(drill("r"), 4, "r").await.unwrap();
        let (lease_a, term_a) = elect(&kv, "a").await;
        kv.expire_lease(lease_a);
        let (_, _term_b) = elect(&kv, "b").await;
        let steps = Recorder::default();
        let stop = run_job(&mut jobs, &steps, LEADER, term_a, &job.id)
            .await
            .unwrap();
        assert_eq!(stop, Stop::Fenced);
        assert!(effects(&kv).await.is_empty());
        let (record, _) = jobs.get(&job.id).await.unwrap();
        assert_eq!((record.state, record.done_steps), (JobState::Queued, 0));
    }

    #[tokio::test]
    async fn a_cancelled_job_stops_at_the_next_step_and_a_failed_one_releases_its_lock() {
        let kv = MemoryKv::new();
        let mut jobs = store(&kv);
        let (_, term) = elect(&kv, "a").await;
        let job = jobs.submit(drill("r"), 4, "r").await.unwrap();
        jobs.request_cancel(&job.id).await.unwrap();
        let steps = Recorder::default();
        let stop = run_job(&mut jobs, &steps, LEADER, term, &job.id)
            .await
            .unwrap();
        assert_eq!(stop, Stop::Finished(JobState::Cancelled));
        assert!(steps.runs.lock().unwrap().is_empty());
        assert!(matches!(
            jobs.request_cancel(&job.id).await,
            Err(JobError::Ended(_))
        ));

        let failing = Recorder {
            fail_at: Some(1),
            ..Default::default()
        };
        let job = jobs.submit(drill("r"), 4, "r").await.unwrap();
        let stop = run_job(&mut jobs, &failing, LEADER, term, &job.id)
            .await
            .unwrap();
        assert_eq!(stop, Stop::Finished(JobState::Failed));
        let (record, _) = jobs.get(&job.id).await.unwrap();
        assert_eq!(record.done_steps, 1);
        assert!(record
            .log
            .last()
            .unwrap()
            .contains("step 2 of 4 failed: the step failed"));
        assert!(
            kv.get(&keys::lock(PREFIX, "r")).await.unwrap().is_none(),
            "lock released"
        );
    }

    #[tokio::test]
    async fn the_runner_is_woken_by_a_job_written() {
        let kv = MemoryKv::new();
        let mut jobs = store(&kv);
        let mut changes = jobs.watch_jobs().await.unwrap();
        jobs.submit(drill("r"), 4, "r").await.unwrap();
        assert!(changes.next().await);
    }

    #[test]
    fn a_job_state_s_name_is_its_wire_name() {
        for state in JobState::ALL {
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{}\"", state.as_str())
            );
        }
    }
}
