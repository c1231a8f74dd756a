//! The leader's job runner: while this daemon leads term T, every unfinished job runs
//! under T (one task per job); when the term ends the tasks are dropped, and the guard
//! on every commit makes sure a late one records nothing.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::election::Role;
use std::sync::Arc;

use super::jobs::{run_job, JobSteps, JobStore, Stop};
use super::messages::JOB_STATE;

/// Runs jobs whenever `role` says this daemon leads; returns when `role` closes.
pub async fn run(
    store: JobStore,
    kinds: Arc<dyn JobSteps>,
    leader_key: String,
    mut role: watch::Receiver<Role>,
) {
    loop {
        let current = role.borrow_and_update().clone();
        if let Role::Leader { term } = current {
            tokio::select! {
                _ = lead(store.clone(), kinds.clone(), &leader_key, term) => {}
                changed = role.changed() => if changed.is_err() { return },
            }
        } else if role.changed().await.is_err() {
            return;
        }
    }
}

async fn lead(mut store: JobStore, kinds: Arc<dyn JobSteps>, leader_key: &str, term: i64) {
    let mut running: HashSet<String> = HashSet::new();
    let mut tasks = JoinSet::new();
    // Jobs are taken up when a job record is written (the watch), and on a slow timer
    // that also reopens a broken watch. The watch exists before the first listing, so
    // no job submitted in between is missed.
    let mut events = None;
    let mut poll = tokio::time::interval(Duration::from_secs(10));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let take_up = tokio::select! {
            _ = poll.tick() => {
                if events.is_none() {
                    events = store.watch_jobs().await.map_err(|e| warn!("watching jobs: {e}")).ok();
                }
                true
            }
            event = next_event(&mut events) => {
                if !event {
                    events = None;
                }
                event
            }
            Some(Ok((id, result))) = tasks.join_next() => {
                running.remove(&id);
                match result {
                    Ok(Stop::Finished(state)) => {
                        info!(message_id = JOB_STATE, job = %id, state = ?state, term, "job ended");
                        false
                    }
                    Ok(Stop::Fenced) => {
                        warn!(job = %id, term, "job stopped: this daemon no longer leads");
                        return;
                    }
                    // Taken up again by the listing below, after a pause.
                    Err(e) => {
                        warn!(job = %id, "job runner: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        true
                    }
                }
            }
        };
        if !take_up {
            continue;
        }
        let jobs = match store.list().await {
            Ok(jobs) => jobs,
            Err(e) => {
                warn!("listing jobs: {e}");
                continue;
            }
        };
        for job in jobs.into_iter().filter(|j| !j.state.is_final()) {
            if running.insert(job.id.clone()) {
                info!(message_id = JOB_STATE, job = %job.id, state = "running", term, step = job.done_steps, "job taken up");
                let (mut store, key, id) = (store.clone(), leader_key.to_owned(), job.id.clone());
                let kinds = kinds.clone();
                tasks.spawn(async move {
                    let result = run_job(&mut store, kinds.as_ref(), &key, term, &id).await;
                    (id, result)
                });
            }
        }
    }
}

/// True when a job record was written; false when the watch ended (or there is none,
/// after waiting forever).
async fn next_event(events: &mut Option<super::kv::Changes>) -> bool {
    match events {
        Some(changes) => changes.next().await,
        None => std::future::pending().await,
    }
}
