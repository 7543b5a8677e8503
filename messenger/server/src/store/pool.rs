//! A small pool of SQLite connections driven from async code on tokio's blocking threads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use super::StoreError;

/// Opens connections lazily up to `size` and hands them to blocking closures.
pub(crate) struct Pool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::backend(e)
}

/// Settings every pooled connection gets.
pub(crate) fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
    // WAL: readers never block the writer. synchronous=NORMAL keeps every committed transaction
    // across a process crash (SIGKILL); only a power loss can lose the last commits.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

impl Pool {
    pub(crate) fn open(path: &Path, size: usize) -> Result<Arc<Self>, StoreError> {
        let first = Connection::open(path).map_err(backend)?;
        configure(&first).map_err(backend)?;
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            idle: Mutex::new(vec![first]),
            permits: Semaphore::new(size.max(1)),
        }))
    }

    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => {
                let conn = Connection::open(&self.path).map_err(backend)?;
                configure(&conn).map_err(backend)?;
                Ok(conn)
            }
        }
    }

    fn give_back(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
    }

    /// Runs `f` with a connection on a blocking thread.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self.permits.acquire().await.map_err(backend)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.take()?;
            let result = f(&mut conn);
            // A connection left inside a failed transaction is rolled back before reuse.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            pool.give_back(conn);
            result
        })
        .await
        .map_err(backend)?
    }
}
