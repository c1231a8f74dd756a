//! The key-value store the cluster logic runs on: etcd in production ([`Kv`] for
//! `etcd_client::Client`), an in-memory store ([`MemoryKv`]) in unit tests. Small on
//! purpose: reads, guarded transactions and a watch for writes are all that the job
//! engine and the election's campaign and fenced writes need. Leases, keepalive streams
//! and membership changes stay on the etcd client.

#[cfg(test)]
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
#[cfg(test)]
use std::sync::{Arc, Mutex};

use super::ClusterError;

/// A boxed future of a store call (the trait is used as `dyn Kv`).
pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ClusterError>> + Send + 'a>>;

/// One stored key with etcd's revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    /// The store revision that created the key (etcd's fencing token for the leader key).
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The lease the key is bound to; 0 for none.
    pub lease: i64,
}

impl Entry {
    /// The value as text (empty when it is not UTF-8).
    pub fn value_str(&self) -> &str {
        std::str::from_utf8(&self.value).unwrap_or("")
    }
}

/// Which revision of a key a [`Check`] compares; a missing key has 0 for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revision {
    Create,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Equal,
}

#[cfg(test)]
impl Cmp {
    fn holds(self, actual: i64, target: i64) -> bool {
        match self {
            Cmp::Equal => actual == target,
        }
    }
}

/// One condition of a transaction: `key`'s `revision` `cmp` `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub key: String,
    pub revision: Revision,
    pub cmp: Cmp,
    pub target: i64,
}

impl Check {
    pub fn create_revision(key: impl Into<String>, cmp: Cmp, target: i64) -> Self {
        Self {
            key: key.into(),
            revision: Revision::Create,
            cmp,
            target,
        }
    }

    pub fn mod_revision(key: impl Into<String>, cmp: Cmp, target: i64) -> Self {
        Self {
            key: key.into(),
            revision: Revision::Mod,
            cmp,
            target,
        }
    }

    /// The key does not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Self::create_revision(key, Cmp::Equal, 0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Writes `value`, bound to `lease` (0: none).
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: String,
    },
    /// Reads `key` (its answer is in [`TxnAnswer::got`], in order).
    Get {
        key: String,
    },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    pub fn put_with_lease(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: i64) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease,
        }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }

    pub fn get(key: impl Into<String>) -> Self {
        Op::Get { key: key.into() }
    }
}

/// If every check in `when` holds, `then`; otherwise `otherwise`: atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub when: Vec<Check>,
    pub then: Vec<Op>,
    pub otherwise: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnAnswer {
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
    /// The answers of the branch's `Get`s, in order (None: no such key).
    pub got: Vec<Option<Entry>>,
}

impl TxnAnswer {
    /// The first `Get`'s entry, if it found one.
    pub fn first_got(&self) -> Option<&Entry> {
        self.got.iter().flatten().next()
    }
}

/// Writes under a prefix, as a watch reports them: `next` is true for each write (one
/// or more puts), false once the watch has ended (read again and watch anew).
pub struct Changes(tokio::sync::mpsc::Receiver<()>);

impl Changes {
    pub async fn next(&mut self) -> bool {
        self.0.recv().await.is_some()
    }
}

/// The store the cluster logic uses.
pub trait Kv: Send + Sync {
    fn get<'a>(&'a self, key: &'a str) -> KvFuture<'a, Option<Entry>>;
    /// Every key under `prefix`, in key order.
    fn get_prefix<'a>(&'a self, prefix: &'a str) -> KvFuture<'a, Vec<Entry>>;
    fn txn(&self, txn: Txn) -> KvFuture<'_, TxnAnswer>;
    /// Reports puts under `prefix` from now on (deletes are not reported).
    fn watch_puts<'a>(&'a self, prefix: &'a str) -> KvFuture<'a, Changes>;
}

// --- etcd -------------------------------------------------------------------------

fn from_etcd(kv: &etcd_client::KeyValue) -> Entry {
    Entry {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

fn to_etcd_compare(check: &Check) -> etcd_client::Compare {
    use etcd_client::{Compare, CompareOp};
    let op = match check.cmp {
        Cmp::Equal => CompareOp::Equal,
    };
    match check.revision {
        Revision::Create => Compare::create_revision(check.key.clone(), op, check.target),
        Revision::Mod => Compare::mod_revision(check.key.clone(), op, check.target),
    }
}

fn to_etcd_op(op: &Op) -> etcd_client::TxnOp {
    use etcd_client::{PutOptions, TxnOp};
    match op {
        Op::Put { key, value, lease } => {
            let options = (*lease != 0).then(|| PutOptions::new().with_lease(*lease));
            TxnOp::put(key.clone(), value.clone(), options)
        }
        Op::Delete { key } => TxnOp::delete(key.clone(), None),
        Op::Get { key } => TxnOp::get(key.clone(), None),
    }
}

impl Kv for etcd_client::Client {
    fn get<'a>(&'a self, key: &'a str) -> KvFuture<'a, Option<Entry>> {
        let mut client = self.clone();
        Box::pin(async move {
            let answer = etcd_client::Client::get(&mut client, key, None).await?;
            Ok(answer.kvs().first().map(from_etcd))
        })
    }

    fn get_prefix<'a>(&'a self, prefix: &'a str) -> KvFuture<'a, Vec<Entry>> {
        let mut client = self.clone();
        Box::pin(async move {
            let options = etcd_client::GetOptions::new().with_prefix();
            let answer = etcd_client::Client::get(&mut client, prefix, Some(options)).await?;
            Ok(answer.kvs().iter().map(from_etcd).collect())
        })
    }

    fn txn(&self, txn: Txn) -> KvFuture<'_, TxnAnswer> {
        let mut client = self.clone();
        Box::pin(async move {
            let request = etcd_client::Txn::new()
                .when(txn.when.iter().map(to_etcd_compare).collect::<Vec<_>>())
                .and_then(txn.then.iter().map(to_etcd_op).collect::<Vec<_>>())
                .or_else(txn.otherwise.iter().map(to_etcd_op).collect::<Vec<_>>());
            let answer = etcd_client::Client::txn(&mut client, request).await?;
            let got = answer
                .op_responses()
                .iter()
                .filter_map(|op| match op {
                    etcd_client::TxnOpResponse::Get(get) => Some(get.kvs().first().map(from_etcd)),
                    _ => None,
                })
                .collect();
            Ok(TxnAnswer {
                succeeded: answer.succeeded(),
                revision: answer.header().map_or(0, |h| h.revision()),
                got,
            })
        })
    }

    fn watch_puts<'a>(&'a self, prefix: &'a str) -> KvFuture<'a, Changes> {
        let mut client = self.clone();
        Box::pin(async move {
            let options = etcd_client::WatchOptions::new()
                .with_prefix()
                .with_filters([etcd_client::WatchFilterType::NoDelete]);
            let mut stream = client.watch(prefix, Some(options)).await?;
            let (tell, changes) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        message = stream.message() => match message {
                            Ok(Some(m)) if !m.canceled() => {
                                // A full channel already says "something changed".
                                let _ = tell.try_send(());
                            }
                            _ => return,
                        },
                        _ = tell.closed() => return,
                    }
                }
            });
            Ok(Changes(changes))
        })
    }
}

// --- in memory (unit tests) --------------------------------------------------------------------

#[cfg(test)]
/// An in-memory store with etcd's revision and lease rules, for unit tests of the
/// cluster logic: one revision per write transaction, create and mod revisions, keys
/// bound to leases that a test expires by hand.
#[derive(Clone, Default)]
pub struct MemoryKv(Arc<Mutex<Memory>>);

#[cfg(test)]
#[derive(Default)]
struct Memory {
    revision: i64,
    keys: BTreeMap<String, Entry>,
    next_lease: i64,
    leases: std::collections::BTreeSet<i64>,
    watchers: Vec<(String, tokio::sync::mpsc::Sender<()>)>,
}

#[cfg(test)]
impl Memory {
    fn revision_of(&self, check: &Check) -> i64 {
        self.keys
            .get(&check.key)
            .map_or(0, |e| match check.revision {
                Revision::Create => e.create_revision,
                Revision::Mod => e.mod_revision,
            })
    }

    /// Applies `ops` at revision `self.revision + 1` (taken only if one writes).
    fn apply(&mut self, ops: &[Op]) -> Result<Vec<Option<Entry>>, ClusterError> {
        for op in ops {
            if let Op::Put { lease, .. } = op {
                if *lease != 0 && !self.leases.contains(lease) {
                    return Err(ClusterError::Store(format!("lease {lease} not found")));
                }
            }
        }
        let next = self.revision + 1;
        let mut wrote = false;
        let mut got = Vec::new();
        let mut put_keys = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let create_revision = self.keys.get(key).map_or(next, |e| e.create_revision);
                    self.keys.insert(
                        key.clone(),
                        Entry {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision,
                            mod_revision: next,
                            lease: *lease,
                        },
                    );
                    put_keys.push(key.clone());
                    wrote = true;
                }
                Op::Delete { key } => wrote |= self.keys.remove(key).is_some(),
                Op::Get { key } => got.push(self.keys.get(key).cloned()),
            }
        }
        if wrote {
            self.revision = next;
        }
        self.watchers.retain(|(_, tell)| !tell.is_closed());
        for (prefix, tell) in &self.watchers {
            if put_keys.iter().any(|k| k.starts_with(prefix.as_str())) {
                let _ = tell.try_send(());
            }
        }
        Ok(got)
    }
}

#[cfg(test)]
impl MemoryKv {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new lease (it lives until [`MemoryKv::expire_lease`]).
    pub fn grant_lease(&self) -> i64 {
        let mut memory = self.0.lock().unwrap();
        memory.next_lease += 1;
        let id = memory.next_lease;
        memory.leases.insert(id);
        id
    }

    /// Ends `lease` as etcd does when its TTL runs out: its keys go, in one revision.
    pub fn expire_lease(&self, lease: i64) {
        let mut memory = self.0.lock().unwrap();
        memory.leases.remove(&lease);
        let bound: Vec<Op> = memory
            .keys
            .values()
            .filter(|e| e.lease == lease)
            .map(|e| Op::delete(e.key.clone()))
            .collect();
        memory.apply(&bound).expect("deletes need no lease");
    }

    /// Writes `value` outside any transaction (a test's setup).
    pub fn put(&self, key: &str, value: &str) -> i64 {
        let mut memory = self.0.lock().unwrap();
        memory.apply(&[Op::put(key, value)]).expect("no lease");
        memory.revision
    }
}

#[cfg(test)]
impl Kv for MemoryKv {
    fn get<'a>(&'a self, key: &'a str) -> KvFuture<'a, Option<Entry>> {
        let entry = self.0.lock().unwrap().keys.get(key).cloned();
        Box::pin(async move { Ok(entry) })
    }

    fn get_prefix<'a>(&'a self, prefix: &'a str) -> KvFuture<'a, Vec<Entry>> {
        let entries = self
            .0
            .lock()
            .unwrap()
            .keys
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect();
        Box::pin(async move { Ok(entries) })
    }

    fn txn(&self, txn: Txn) -> KvFuture<'_, TxnAnswer> {
        let answer = (|| {
            let mut memory = self.0.lock().unwrap();
            let succeeded = txn
                .when
                .iter()
                .all(|c| c.cmp.holds(memory.revision_of(c), c.target));
            let branch = if succeeded { &txn.then } else { &txn.otherwise };
            let got = memory.apply(branch)?;
            Ok(TxnAnswer {
                succeeded,
                revision: memory.revision,
                got,
            })
        })();
        Box::pin(async move { answer })
    }

    fn watch_puts<'a>(&'a self, prefix: &'a str) -> KvFuture<'a, Changes> {
        let (tell, changes) = tokio::sync::mpsc::channel(1);
        self.0
            .lock()
            .unwrap()
            .watchers
            .push((prefix.to_owned(), tell));
        Box::pin(async move { Ok(Changes(changes)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_transaction_is_one_revision_and_keeps_the_create_revision() {
        let kv = MemoryKv::new();
        let first = kv.put("/a", "1");
        let answer = kv
            .txn(Txn {
                when: vec![Check::mod_revision("/a", Cmp::Equal, first)],
                then: vec![Op::put("/a", "2"), Op::put("/b", "x"), Op::get("/a")],
                otherwise: vec![],
            })
            .await
            .unwrap();
        assert!(answer.succeeded);
        assert_eq!(answer.revision, first + 1);
        let a = answer.first_got().unwrap();
        assert_eq!((a.create_revision, a.mod_revision), (first, first + 1));
        assert_eq!(
            kv.get("/b").await.unwrap().unwrap().create_revision,
            first + 1
        );
        // A stale guard takes the other branch and writes nothing.
        let stale = kv
            .txn(Txn {
                when: vec![Check::mod_revision("/a", Cmp::Equal, first)],
                then: vec![Op::delete("/a")],
                otherwise: vec![Op::get("/a")],
            })
            .await
            .unwrap();
        assert!(!stale.succeeded);
        assert_eq!(stale.revision, first + 1);
        assert_eq!(stale.first_got().unwrap().value_str(), "2");
    }

    #[tokio::test]
    async fn an_expired_lease_takes_its_keys_and_refuses_new_ones() {
        let kv = MemoryKv::new();
        let lease = kv.grant_lease();
        kv.txn(Txn {
            then: vec![Op::put_with_lease("/l", "x", lease)],
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(kv.get("/l").await.unwrap().unwrap().lease, lease);
        kv.expire_lease(lease);
        assert!(kv.get("/l").await.unwrap().is_none());
        let refused = kv
            .txn(Txn {
                then: vec![Op::put_with_lease("/l", "y", lease)],
                ..Default::default()
            })
            .await;
        assert!(refused.is_err());
        assert!(kv.get("/l").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_watch_reports_puts_under_its_prefix_only() {
        let kv = MemoryKv::new();
        let mut changes = kv.watch_puts("/jobs/").await.unwrap();
        kv.put("/other", "1");
        kv.put("/jobs/1", "1");
        assert!(changes.next().await);
        assert_eq!(kv.get_prefix("/jobs/").await.unwrap().len(), 1);
    }
}
