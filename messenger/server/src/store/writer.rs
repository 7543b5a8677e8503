//! Group commit: one thread owns the write connection and commits concurrent writes together.
//!
//! Every write is a job. The writer takes the first job waiting, then every other job already
//! queued (up to [`MAX_GROUP`]), runs each inside its own savepoint of one `BEGIN IMMEDIATE`
//! transaction — a job that fails (or panics) rolls back only its own writes — and commits once.
//! Each caller is answered only after that commit, with its own result: an acknowledged write is
//! as durable as before (WAL, `synchronous=NORMAL`: it survives SIGKILL), and a commit that fails
//! fails every job of its group. Readers use the pool's other connections and never wait for
//! the writer (WAL).

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::{StoreError, StoreResult};

/// Jobs committed together at most.
pub(crate) const MAX_GROUP: usize = 512;

/// Jobs waiting for the writer at most before callers wait to hand theirs over.
const QUEUE: usize = 4096;

/// What a job leaves to do once its group's commit is known: answer its caller.
type Finish = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// A write: runs inside the group's transaction; says whether it succeeded (its savepoint is
/// kept) and how to answer.
type Job = Box<dyn FnOnce(&Transaction<'_>) -> (bool, Finish) + Send>;

/// Counters of the writer (for benchmarks and tests).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Commits made.
    pub commits: AtomicU64,
    /// Jobs run.
    pub jobs: AtomicU64,
}

/// The handle callers use; the thread ends when the last handle is dropped.
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
    stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts the writer thread on its own connection to `path`, configured by `configure`.
    pub(crate) fn start(
        path: &Path,
        configure: fn(&Connection) -> Result<(), rusqlite::Error>,
    ) -> StoreResult<Self> {
        let mut conn = Connection::open(path).map_err(StoreError::backend)?;
        configure(&conn).map_err(StoreError::backend)?;
        let (jobs, mut queue) = mpsc::channel::<Job>(QUEUE);
        let stats = Arc::new(WriterStats::default());
        let counters = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("qpq-store-writer".into())
            .spawn(move || {
                let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP);
                while let Some(first) = queue.blocking_recv() {
                    group.push(first);
                    while group.len() < MAX_GROUP {
                        match queue.try_recv() {
                            Ok(job) => group.push(job),
                            Err(_) => break,
                        }
                    }
                    counters
                        .jobs
                        .fetch_add(group.len() as u64, Ordering::Relaxed);
                    counters.commits.fetch_add(1, Ordering::Relaxed);
                    commit_group(&mut conn, group.drain(..));
                }
            })
            .map_err(|e| StoreError::backend(format!("starting the writer: {e}")))?;
        Ok(Self { jobs, stats })
    }

    /// The writer's counters.
    pub(crate) fn stats(&self) -> Arc<WriterStats> {
        Arc::clone(&self.stats)
    }

    /// Runs `f` in the next group and answers once the group is committed.
    pub(crate) async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel::<StoreResult<T>>();
        let job: Job = Box::new(move |tx| {
            let result = f(tx);
            let ok = result.is_ok();
            let finish: Finish = Box::new(move |commit_error| {
                let _ = answer.send(match commit_error {
                    None => result,
                    Some(e) => Err(e.clone()),
                });
            });
            (ok, finish)
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::backend("the store writer has stopped"))?;
        answered
            .await
            .map_err(|_| StoreError::backend("a write failed inside the store writer"))?
    }
}

/// Runs a group of jobs in one transaction and answers them after the commit.
fn commit_group(conn: &mut Connection, jobs: impl Iterator<Item = Job>) {
    let backend = |e: rusqlite::Error| StoreError::backend(e);
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            // Without a transaction no job can run: dropping them answers their callers with
            // an error.
            tracing::error!(error = %e, "store writer cannot begin a transaction");
            drop(jobs.collect::<Vec<_>>());
            return;
        }
    };
    let mut finishes: Vec<Finish> = Vec::new();
    for job in jobs {
        // Cached statements: this runs for every write.
        if let Err(e) = tx
            .prepare_cached("SAVEPOINT job")
            .and_then(|mut st| st.execute([]))
        {
            tracing::error!(error = %e, "store writer cannot open a savepoint");
            drop(job);
            continue;
        }
        // A panicking job loses its answer (its caller gets an error), not the group.
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| job(&tx)));
        let keep = matches!(&ran, Ok((true, _)));
        let end = if keep {
            tx.prepare_cached("RELEASE job")
                .and_then(|mut st| st.execute([]))
                .map(|_| ())
        } else {
            tx.execute_batch("ROLLBACK TO job; RELEASE job")
        };
        if let Err(e) = end {
            tracing::error!(error = %e, "store writer cannot close a savepoint");
        }
        if let Ok((_, finish)) = ran {
            finishes.push(finish);
        }
    }
    let committed = tx.commit().map_err(backend);
    let error = committed.err();
    for finish in finishes {
        finish(error.as_ref());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn writer() -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);",
        )
        .unwrap();
        let w = Writer::start(&path, super::super::pool::configure).unwrap();
        (dir, w)
    }

    fn count(dir: &tempfile::TempDir) -> i64 {
        Connection::open(dir.path().join("w.db"))
            .unwrap()
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_a_failing_or_panicking_one_hurts_only_itself() {
        let (dir, w) = writer();
        let w = Arc::new(w);
        let mut tasks = Vec::new();
        for k in 0..200i64 {
            let w = Arc::clone(&w);
            tasks.push(tokio::spawn(async move {
                w.write(move |tx| {
                    tx.execute("INSERT INTO t (k, v) VALUES (?1, 'x')", [k])
                        .map_err(StoreError::backend)?;
                    match k % 50 {
                        // Writes, then fails: its row must not survive.
                        7 => Err(StoreError::QuotaExceeded),
                        // Writes, then panics inside the writer thread.
                        9 => panic!("job {k} panics"),
                        _ => Ok(k),
                    }
                })
                .await
            }));
        }
        let mut ok = 0;
        for (k, t) in tasks.into_iter().enumerate() {
            match (k % 50, t.await.unwrap()) {
                (7, Err(StoreError::QuotaExceeded)) => {}
                (9, Err(StoreError::Backend(e))) => {
                    assert!(e.to_string().contains("inside the store writer"), "{e}")
                }
                (_, Ok(v)) => {
                    assert_eq!(v, k as i64);
                    ok += 1;
                }
                (_, other) => panic!("job {k}: {other:?}"),
            }
        }
        assert_eq!(ok, 192);
        assert_eq!(count(&dir), 192, "failed and panicked jobs left nothing");
        let stats = w.stats();
        let (jobs, commits) = (
            stats.jobs.load(Ordering::Relaxed),
            stats.commits.load(Ordering::Relaxed),
        );
        assert_eq!(jobs, 200);
        assert!(
            commits < jobs,
            "{commits} commits for {jobs} jobs: nothing was grouped"
        );
        // The writer goes on after all that.
        assert_eq!(w.write(|_| Ok(1)).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn an_answer_means_the_write_is_committed() {
        let (dir, w) = writer();
        w.write(|tx| {
            tx.execute("INSERT INTO t (k, v) VALUES (1, 'durable')", [])
                .map_err(StoreError::backend)
        })
        .await
        .unwrap();
        // Another connection sees it at once: the commit happened before the answer.
        assert_eq!(count(&dir), 1);
    }
}
