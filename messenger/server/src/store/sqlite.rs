//! The SQLite store: numbered migrations, WAL, a connection pool.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::pool::Pool;
use super::writer::{Writer, WriterStats};
use super::*;

/// Numbered migrations; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/V1__initial.sql"),
    include_str!("../../migrations/V2__abuse_controls.sql"),
    include_str!("../../migrations/V3__sender_totals.sql"),
    include_str!("../../migrations/V4__quota_per_user.sql"),
    include_str!("../../migrations/V5__binding_key_package_hash.sql"),
    include_str!("../../migrations/V6__channel_consent.sql"),
    include_str!("../../migrations/V7__blob_chunks.sql"),
    include_str!("../../migrations/V8__kt_heads.sql"),
    include_str!("../../migrations/V9__federation.sql"),
];

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

/// Maps a constraint violation (duplicate key, missing parent row) to `on_violation` and any
/// other error to a backend failure.
fn constraint_or(on_violation: StoreError) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| {
        if is_constraint(&e) {
            on_violation
        } else {
            backend(e)
        }
    }
}

fn user_exists_in(c: &Connection, user: &str) -> StoreResult<bool> {
    c.query_row(
        "SELECT EXISTS(SELECT 1 FROM users WHERE name = ?1)",
        [user],
        |r| r.get(0),
    )
    .map_err(backend)
}

/// One-time (not last-resort) key packages stored for a device.
fn one_time_key_packages(c: &Connection, device: &DeviceId) -> StoreResult<u64> {
    c.query_row(
        "SELECT COUNT(*) FROM key_packages WHERE user = ?1 AND device = ?2 AND last_resort = 0",
        params![device.user, device.device],
        |r| r.get::<_, i64>(0),
    )
    .map(u)
    .map_err(backend)
}

/// The embedded SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    pool: Arc<Pool>,
    writer: Arc<Writer>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    pub async fn open(path: &Path, pool_size: usize) -> StoreResult<Self> {
        let pool = Pool::open(path, pool_size)?;
        pool.run(migrate).await?;
        let writer = Arc::new(Writer::start(path, super::pool::configure)?);
        Ok(Self { pool, writer })
    }

    /// The group-commit writer's counters: how many writes went into how many commits.
    pub fn writer_stats(&self) -> Arc<WriterStats> {
        self.writer.stats()
    }

    /// The schema version after migrations.
    pub async fn schema_version(&self) -> StoreResult<u32> {
        self.pool
            .run(|c| {
                c.pragma_query_value(None, "user_version", |r| r.get(0))
                    .map_err(backend)
            })
            .await
    }

    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        // Group commit: committed with whatever other writes are waiting.
        self.writer.write(f).await
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.pool.run(move |conn| f(conn)).await
    }
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(backend)?
        .try_into()
        .unwrap_or(0);
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        tx.pragma_update(None, "user_version", n + 1)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        tracing::info!(version = n + 1, "applied storage migration");
    }
    Ok(())
}

fn enqueue_one(
    tx: &Transaction<'_>,
    m: &NewMessage,
    limits: QueueLimits,
    now_ms: u64,
) -> StoreResult<Enqueued> {
    let existing: Option<i64> = tx
        .prepare_cached(
            "SELECT seq FROM queue WHERE user = ?1 AND device = ?2 AND sender = ?3 AND message_id = ?4",
        )
        .and_then(|mut st| {
            st.query_row(
                params![m.recipient.user, m.recipient.device, m.sender, m.message_id],
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(backend)?;
    if let Some(seq) = existing {
        return Ok(Enqueued {
            seq: u(seq),
            duplicate: true,
        });
    }
    let queue: Option<(i64, i64, i64)> = tx
        .prepare_cached(
            "SELECT next_seq, queue_messages, queue_bytes FROM devices WHERE user = ?1 AND device = ?2",
        )
        .and_then(|mut st| {
            st.query_row(params![m.recipient.user, m.recipient.device], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })
        .map_err(backend)?;
    let (seq, messages, bytes) = queue.ok_or(StoreError::NotFound)?;
    let size = m.payload.len() as u64;
    if u(messages) >= limits.max_messages || u(bytes).saturating_add(size) > limits.max_bytes {
        return Err(StoreError::QueueFull);
    }
    let quota_key = m.quota_key();
    let (sender_messages, sender_bytes): (i64, i64) = tx
        .prepare_cached(
            "SELECT messages, bytes FROM queue_senders
             WHERE user = ?1 AND device = ?2 AND sender = ?3",
        )
        .and_then(|mut st| {
            st.query_row(
                params![m.recipient.user, m.recipient.device, quota_key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
        .map_err(backend)?
        .unwrap_or((0, 0));
    let (max_messages, max_bytes) = if m.stranger {
        (limits.stranger_messages, limits.stranger_bytes)
    } else {
        (limits.sender_messages, limits.sender_bytes)
    };
    if u(sender_messages) >= max_messages || u(sender_bytes).saturating_add(size) > max_bytes {
        return Err(StoreError::SenderQuota {
            stranger: m.stranger,
        });
    }
    tx.prepare_cached(
        "INSERT INTO queue (user, device, seq, sender, message_id, payload, received_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut st| {
        st.execute(params![
            m.recipient.user,
            m.recipient.device,
            seq,
            m.sender,
            m.message_id,
            m.payload,
            i(now_ms)
        ])
    })
    .map_err(backend)?;
    tx.prepare_cached(
        "UPDATE devices SET next_seq = ?3, queue_messages = queue_messages + 1,
             queue_bytes = queue_bytes + ?4 WHERE user = ?1 AND device = ?2",
    )
    .and_then(|mut st| {
        st.execute(params![
            m.recipient.user,
            m.recipient.device,
            seq + 1,
            i(size)
        ])
    })
    .map_err(backend)?;
    tx.prepare_cached(
        "INSERT INTO queue_senders (user, device, sender, messages, bytes) VALUES (?1, ?2, ?3, 1, ?4)
         ON CONFLICT (user, device, sender) DO UPDATE SET
             messages = messages + 1, bytes = bytes + excluded.bytes",
    )
    .and_then(|mut st| st.execute(params![m.recipient.user, m.recipient.device, quota_key, i(size)]))
    .map_err(backend)?;
    if let Some(sender) = &m.sender_user
        && *sender != m.recipient.user
    {
        tx.prepare_cached("INSERT OR IGNORE INTO contacts (user, peer) VALUES (?1, ?2)")
            .and_then(|mut st| st.execute(params![sender, m.recipient.user]))
            .map_err(backend)?;
    }
    Ok(Enqueued {
        seq: u(seq),
        duplicate: false,
    })
}

/// Runs `f` for each item in one transaction, one savepoint per item: a refused item rolls
/// back only its own writes, and every accepted one commits together. A backend failure
/// fails the whole transaction.
fn each_on_its_own<T, R>(
    tx: &Transaction<'_>,
    items: &[T],
    mut f: impl FnMut(&T) -> StoreResult<R>,
) -> StoreResult<Vec<StoreResult<R>>> {
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        tx.execute_batch("SAVEPOINT one").map_err(backend)?;
        let result = f(item);
        let end = match result {
            Ok(_) => "RELEASE one",
            Err(_) => "ROLLBACK TO one; RELEASE one",
        };
        tx.execute_batch(end).map_err(backend)?;
        match result {
            Err(StoreError::Backend(e)) => return Err(StoreError::Backend(e)),
            other => results.push(other),
        }
    }
    Ok(results)
}

/// One relayed message: remembered (a repeat is a duplicate) and queued, or neither.
fn accept_one(
    tx: &Transaction<'_>,
    m: &NewMessage,
    limits: QueueLimits,
    now_ms: u64,
    seen_until_ms: u64,
) -> StoreResult<Enqueued> {
    let fresh = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO relay_seen (sender, recipient_user, recipient_device,
                 message_id, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut st| {
            st.execute(params![
                m.sender,
                m.recipient.user,
                m.recipient.device,
                m.message_id,
                i(seen_until_ms)
            ])
        })
        .map_err(backend)?;
    if fresh == 0 {
        return Ok(Enqueued::SEEN);
    }
    enqueue_one(tx, m, limits, now_ms)
}

/// Whether `user` is an accepted member of channel `id`.
fn is_member(c: &Connection, id: &[u8], user: &str) -> StoreResult<bool> {
    c.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM channel_members
                       WHERE channel_id = ?1 AND user = ?2 AND state = 'accepted')",
    )
    .and_then(|mut st| st.query_row(params![id, user], |r| r.get(0)))
    .map_err(backend)
}

fn members_of(c: &Connection, id: &[u8]) -> StoreResult<Vec<String>> {
    let mut st = c
        .prepare_cached(
            "SELECT user FROM channel_members WHERE channel_id = ?1 AND state = 'accepted'
             ORDER BY user",
        )
        .map_err(backend)?;
    let rows = st.query_map([id], |r| r.get(0)).map_err(backend)?;
    rows.collect::<Result<Vec<String>, _>>().map_err(backend)
}

fn share_channel_in(c: &Connection, a: &str, b: &str) -> StoreResult<bool> {
    if a == b {
        return Ok(true);
    }
    c.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM channel_members x JOIN channel_members y
             ON x.channel_id = y.channel_id
             WHERE x.user = ?1 AND y.user = ?2 AND x.state = 'accepted' AND y.state = 'accepted')",
    )
    .and_then(|mut st| st.query_row(params![a, b], |r| r.get(0)))
    .map_err(backend)
}

impl Store for SqliteStore {
    async fn create_user(
        &self,
        user: String,
        password_file: Vec<u8>,
        now_ms: u64,
    ) -> StoreResult<()> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO users (name, password_file, created_at_ms) VALUES (?1, ?2, ?3)",
                params![user, password_file, i(now_ms)],
            )
            .map_err(constraint_or(StoreError::AlreadyExists))?;
            Ok(())
        })
        .await
    }

    async fn password_file(&self, user: String) -> StoreResult<Option<Vec<u8>>> {
        self.read(move |c| {
            c.query_row(
                "SELECT password_file FROM users WHERE name = ?1",
                [user],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn register_device(
        &self,
        device: DeviceId,
        label: String,
        now_ms: u64,
        first_only: bool,
        max_devices: u32,
    ) -> StoreResult<()> {
        self.write(move |tx| {
            if !user_exists_in(tx, &device.user)? {
                return Err(StoreError::NotFound);
            }
            let revoked: bool = tx
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM revoked_devices WHERE user = ?1 AND device = ?2)",
                    params![device.user, device.device],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if revoked {
                return Err(StoreError::Revoked);
            }
            let count: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM devices WHERE user = ?1",
                    [&device.user],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if first_only && count > 0 {
                return Err(StoreError::NotFound);
            }
            if u(count) >= u64::from(max_devices) {
                return Err(StoreError::QuotaExceeded);
            }
            tx.execute(
                "INSERT INTO devices (user, device, label, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![device.user, device.device, label, i(now_ms)],
            )
            .map_err(constraint_or(StoreError::AlreadyExists))?;
            Ok(())
        })
        .await
    }

    async fn device_exists(&self, device: DeviceId) -> StoreResult<bool> {
        self.read(move |c| {
            c.query_row(
                "SELECT EXISTS(SELECT 1 FROM devices WHERE user = ?1 AND device = ?2)",
                params![device.user, device.device],
                |r| r.get(0),
            )
            .map_err(backend)
        })
        .await
    }

    async fn list_devices(&self, user: String) -> StoreResult<Vec<DeviceRow>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT d.device, d.label, d.created_at_ms,
                            EXISTS(SELECT 1 FROM key_bundles k WHERE k.user = d.user AND k.device = d.device)
                     FROM devices d WHERE d.user = ?1 ORDER BY d.created_at_ms, d.device",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([user], |r| {
                    Ok(DeviceRow {
                        device: r.get(0)?,
                        label: r.get(1)?,
                        created_at_ms: u(r.get(2)?),
                        has_keys: r.get(3)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn revoke_device(&self, device: DeviceId, now_ms: u64) -> StoreResult<()> {
        self.write(move |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO revoked_devices (user, device, revoked_at_ms) VALUES (?1, ?2, ?3)",
                params![device.user, device.device, i(now_ms)],
            )
            .map_err(backend)?;
            // Cascades to sessions, queue, key packages, bundle and endpoint.
            let n = tx
                .execute(
                    "DELETE FROM devices WHERE user = ?1 AND device = ?2",
                    params![device.user, device.device],
                )
                .map_err(backend)?;
            if n == 0 {
                Err(StoreError::NotFound)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn create_session(&self, token_hash: Vec<u8>, session: Session) -> StoreResult<()> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO sessions (token_hash, user, device, expires_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![token_hash, session.device.user, session.device.device, i(session.expires_at_ms)],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn session(&self, token_hash: Vec<u8>) -> StoreResult<Option<Session>> {
        self.read(move |c| {
            c.query_row(
                "SELECT user, device, expires_at_ms FROM sessions WHERE token_hash = ?1",
                [token_hash],
                |r| {
                    Ok(Session {
                        device: DeviceId::new(r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                        expires_at_ms: u(r.get(2)?),
                    })
                },
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn delete_session(&self, token_hash: Vec<u8>) -> StoreResult<()> {
        self.write(move |tx| {
            tx.execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn delete_expired(&self, now_ms: u64) -> StoreResult<u64> {
        self.write(move |tx| {
            let sessions = tx
                .execute(
                    "DELETE FROM sessions WHERE expires_at_ms <= ?1",
                    [i(now_ms)],
                )
                .map_err(backend)?;
            let endpoints = tx
                .execute(
                    "DELETE FROM endpoints WHERE expires_at_ms <= ?1",
                    [i(now_ms)],
                )
                .map_err(backend)?;
            let seen = tx
                .execute(
                    "DELETE FROM relay_seen WHERE expires_at_ms <= ?1",
                    [i(now_ms)],
                )
                .map_err(backend)?;
            let failures = tx
                .execute(
                    "DELETE FROM relay_failures WHERE failed_at_ms < ?1",
                    [i(now_ms.saturating_sub(RELAY_FAILURES_KEPT_MS))],
                )
                .map_err(backend)?;
            Ok((sessions + endpoints + seen + failures) as u64)
        })
        .await
    }

    async fn enqueue(
        &self,
        message: NewMessage,
        limits: QueueLimits,
        now_ms: u64,
    ) -> StoreResult<Enqueued> {
        self.write(move |tx| enqueue_one(tx, &message, limits, now_ms))
            .await
    }

    async fn batch_enqueue(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
        now_ms: u64,
    ) -> StoreResult<Vec<StoreResult<Enqueued>>> {
        self.write(move |tx| each_on_its_own(tx, &messages, |m| enqueue_one(tx, m, limits, now_ms)))
            .await
    }

    async fn known_to(&self, sender: String, recipients: Vec<String>) -> StoreResult<Vec<bool>> {
        self.read(move |c| {
            recipients
                .iter()
                .map(|recipient| {
                    if *recipient == sender {
                        return Ok(true);
                    }
                    let wrote: bool = c
                        .prepare_cached(
                            "SELECT EXISTS(SELECT 1 FROM contacts WHERE user = ?1 AND peer = ?2)",
                        )
                        .and_then(|mut st| st.query_row(params![recipient, sender], |r| r.get(0)))
                        .map_err(backend)?;
                    Ok(wrote || share_channel_in(c, recipient, &sender)?)
                })
                .collect()
        })
        .await
    }

    async fn share_channel(&self, a: String, b: String) -> StoreResult<bool> {
        self.read(move |c| share_channel_in(c, &a, &b)).await
    }

    async fn fetch(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT seq, message_id, payload, received_at_ms FROM queue
                     WHERE user = ?1 AND device = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![device.user, device.device, i(after_seq), limit],
                    |r| {
                        Ok(StoredMessage {
                            seq: u(r.get(0)?),
                            message_id: r.get(1)?,
                            payload: r.get(2)?,
                            received_at_ms: u(r.get(3)?),
                        })
                    },
                )
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn peek(&self, device: DeviceId) -> StoreResult<QueueDepth> {
        self.read(move |c| {
            c.query_row(
                "SELECT COUNT(*), COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM queue WHERE user = ?1 AND device = ?2",
                params![device.user, device.device],
                |r| {
                    Ok(QueueDepth {
                        depth: u(r.get(0)?),
                        first_seq: u(r.get(1)?),
                        last_seq: u(r.get(2)?),
                    })
                },
            )
            .map_err(backend)
        })
        .await
    }

    async fn ack(&self, device: DeviceId, up_to_seq: u64) -> StoreResult<u64> {
        self.write(move |tx| {
            let per_sender: Vec<(String, i64, i64)> = {
                let mut st = tx
                    .prepare_cached(
                        "SELECT CASE WHEN instr(sender, '/') > 0
                                     THEN substr(sender, 1, instr(sender, '/') - 1)
                                     ELSE sender END AS quota_key,
                                COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM queue
                         WHERE user = ?1 AND device = ?2 AND seq <= ?3 GROUP BY quota_key",
                    )
                    .map_err(backend)?;
                let rows = st
                    .query_map(params![device.user, device.device, i(up_to_seq)], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .map_err(backend)?;
                rows.collect::<Result<_, _>>().map_err(backend)?
            };
            if per_sender.is_empty() {
                return Ok(0);
            }
            tx.prepare_cached("DELETE FROM queue WHERE user = ?1 AND device = ?2 AND seq <= ?3")
                .and_then(|mut st| st.execute(params![device.user, device.device, i(up_to_seq)]))
                .map_err(backend)?;
            let (mut count, mut bytes) = (0i64, 0i64);
            for (sender, n, b) in &per_sender {
                count += n;
                bytes += b;
                tx.prepare_cached(
                    "UPDATE queue_senders SET messages = messages - ?4, bytes = bytes - ?5
                     WHERE user = ?1 AND device = ?2 AND sender = ?3",
                )
                .and_then(|mut st| st.execute(params![device.user, device.device, sender, n, b]))
                .map_err(backend)?;
            }
            tx.prepare_cached(
                "DELETE FROM queue_senders WHERE user = ?1 AND device = ?2 AND messages <= 0",
            )
            .and_then(|mut st| st.execute(params![device.user, device.device]))
            .map_err(backend)?;
            tx.prepare_cached(
                "UPDATE devices SET queue_messages = MAX(queue_messages - ?3, 0),
                     queue_bytes = MAX(queue_bytes - ?4, 0) WHERE user = ?1 AND device = ?2",
            )
            .and_then(|mut st| st.execute(params![device.user, device.device, count, bytes]))
            .map_err(backend)?;
            Ok(u(count))
        })
        .await
    }

    async fn add_key_packages(
        &self,
        device: DeviceId,
        packages: Vec<Vec<u8>>,
        max: u32,
    ) -> StoreResult<u32> {
        self.write(move |tx| {
            let count = one_time_key_packages(tx, &device)?;
            if count + packages.len() as u64 > u64::from(max) {
                return Err(StoreError::QuotaExceeded);
            }
            for kp in &packages {
                tx.execute(
                    "INSERT INTO key_packages (user, device, key_package, last_resort) VALUES (?1, ?2, ?3, 0)",
                    params![device.user, device.device, kp],
                )
                .map_err(constraint_or(StoreError::NotFound))?;
            }
            Ok(u32::try_from(count + packages.len() as u64).unwrap_or(u32::MAX))
        })
        .await
    }

    async fn set_last_resort_key_package(
        &self,
        device: DeviceId,
        package: Vec<u8>,
    ) -> StoreResult<()> {
        self.write(move |tx| {
            tx.execute(
                "DELETE FROM key_packages WHERE user = ?1 AND device = ?2 AND last_resort = 1",
                params![device.user, device.device],
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO key_packages (user, device, key_package, last_resort) VALUES (?1, ?2, ?3, 1)",
                params![device.user, device.device, package],
            )
            .map_err(constraint_or(StoreError::NotFound))?;
            Ok(())
        })
        .await
    }

    async fn take_key_package(&self, device: DeviceId) -> StoreResult<Option<(Vec<u8>, bool)>> {
        self.write(move |tx| {
            let one_time: Option<(i64, Vec<u8>)> = tx
                .query_row(
                    "SELECT id, key_package FROM key_packages WHERE user = ?1 AND device = ?2 AND last_resort = 0
                     ORDER BY id LIMIT 1",
                    params![device.user, device.device],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            if let Some((id, kp)) = one_time {
                tx.execute("DELETE FROM key_packages WHERE id = ?1", [id]).map_err(backend)?;
                return Ok(Some((kp, false)));
            }
            let last: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT key_package FROM key_packages WHERE user = ?1 AND device = ?2 AND last_resort = 1",
                    params![device.user, device.device],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            Ok(last.map(|kp| (kp, true)))
        })
        .await
    }

    async fn key_package_count(&self, device: DeviceId) -> StoreResult<u32> {
        self.read(move |c| {
            one_time_key_packages(c, &device).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
        })
        .await
    }

    async fn last_resort_key_package(&self, device: DeviceId) -> StoreResult<Option<Vec<u8>>> {
        self.read(move |c| {
            c.query_row(
                "SELECT key_package FROM key_packages WHERE user = ?1 AND device = ?2 AND last_resort = 1",
                params![device.user, device.device],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn publish_bundle(
        &self,
        device: DeviceId,
        bundle: Vec<u8>,
        identity_key: Vec<u8>,
        delivery_token_hash: Option<Vec<u8>>,
        leaf_hash: [u8; 32],
        key_package_hash: [u8; 32],
    ) -> StoreResult<u64> {
        self.write(move |tx| {
            let index: i64 = tx
                .query_row("SELECT COALESCE(MAX(idx) + 1, 0) FROM kt_leaves", [], |r| r.get(0))
                .map_err(backend)?;
            tx.execute("INSERT INTO kt_leaves (idx, leaf_hash) VALUES (?1, ?2)", params![index, leaf_hash.to_vec()])
                .map_err(backend)?;
            tx.execute(
                "INSERT INTO key_bundles (user, device, bundle, identity_key, delivery_token_hash, kt_index,
                     kt_key_package_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (user, device) DO UPDATE SET bundle = ?3, identity_key = ?4,
                     delivery_token_hash = ?5, kt_index = ?6, kt_key_package_hash = ?7",
                params![
                    device.user,
                    device.device,
                    bundle,
                    identity_key,
                    delivery_token_hash,
                    index,
                    key_package_hash.to_vec()
                ],
            )
            .map_err(|e| {
                // The identity key is unique: it belongs to the device that published it first.
                if is_unique_violation(&e) {
                    StoreError::AlreadyExists
                } else {
                    constraint_or(StoreError::NotFound)(e)
                }
            })?;
            Ok(u(index))
        })
        .await
    }

    async fn bundle(&self, device: DeviceId) -> StoreResult<Option<BundleRow>> {
        self.read(move |c| {
            c.query_row(
                "SELECT bundle, identity_key, delivery_token_hash, kt_index, kt_key_package_hash
                 FROM key_bundles WHERE user = ?1 AND device = ?2",
                params![device.user, device.device],
                |r| {
                    Ok(BundleRow {
                        bundle: r.get(0)?,
                        identity_key: r.get(1)?,
                        delivery_token_hash: r.get(2)?,
                        kt_index: u(r.get(3)?),
                        kt_key_package_hash: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn user_identities(&self, user: String) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT device, identity_key FROM key_bundles WHERE user = ?1 ORDER BY device",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map([user], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn resolve_identity(&self, identity_key: Vec<u8>) -> StoreResult<Option<DeviceId>> {
        self.read(move |c| {
            c.query_row(
                "SELECT user, device FROM key_bundles WHERE identity_key = ?1",
                [identity_key],
                |r| {
                    Ok(DeviceId::new(
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                    ))
                },
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn kt_leaves(&self) -> StoreResult<Vec<[u8; 32]>> {
        self.read(|c| {
            let mut stmt = c
                .prepare("SELECT leaf_hash FROM kt_leaves ORDER BY idx")
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| r.get::<_, Vec<u8>>(0))
                .map_err(backend)?;
            rows.map(|row| {
                let bytes = row.map_err(backend)?;
                bytes
                    .try_into()
                    .map_err(|_| StoreError::backend("corrupt key-transparency leaf"))
            })
            .collect()
        })
        .await
    }

    async fn kt_leaves_from(&self, start: u64) -> StoreResult<Vec<[u8; 32]>> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT leaf_hash FROM kt_leaves WHERE idx >= ?1 ORDER BY idx")
                .map_err(backend)?;
            let rows = stmt
                .query_map([i(start)], |r| r.get::<_, Vec<u8>>(0))
                .map_err(backend)?;
            rows.map(|row| {
                row.map_err(backend)?
                    .try_into()
                    .map_err(|_| StoreError::backend("corrupt key-transparency leaf"))
            })
            .collect()
        })
        .await
    }

    async fn kt_head(&self, tree_size: u64) -> StoreResult<Option<Vec<u8>>> {
        self.read(move |c| {
            c.prepare_cached("SELECT head FROM kt_heads WHERE tree_size = ?1")
                .and_then(|mut st| st.query_row([i(tree_size)], |r| r.get(0)).optional())
                .map_err(backend)
        })
        .await
    }

    async fn init_kt_head(&self, tree_size: u64, head: Vec<u8>) -> StoreResult<Vec<u8>> {
        self.write(move |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO kt_heads (tree_size, head) VALUES (?1, ?2)",
                params![i(tree_size), head],
            )
            .map_err(backend)?;
            tx.query_row(
                "SELECT head FROM kt_heads WHERE tree_size = ?1",
                [i(tree_size)],
                |r| r.get(0),
            )
            .map_err(backend)
        })
        .await
    }

    async fn create_channel(
        &self,
        id: Vec<u8>,
        name: String,
        owner: String,
        members: Vec<String>,
        mls_group_id: Vec<u8>,
        now_ms: u64,
    ) -> StoreResult<()> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO channels (id, name, owner, mls_group_id, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, name, owner, mls_group_id, i(now_ms)],
            )
            .map_err(constraint_or(StoreError::AlreadyExists))?;
            tx.execute(
                "INSERT INTO channel_members (channel_id, user, state) VALUES (?1, ?2, 'accepted')",
                params![id, owner],
            )
            .map_err(backend)?;
            for member in &members {
                if !user_exists_in(tx, member)? {
                    return Err(StoreError::NotFound);
                }
                tx.execute(
                    "INSERT OR IGNORE INTO channel_members (channel_id, user, state)
                     VALUES (?1, ?2, 'invited')",
                    params![id, member],
                )
                .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn update_channel(
        &self,
        id: Vec<u8>,
        caller: String,
        add: Vec<String>,
        remove: Vec<String>,
        max_members: usize,
    ) -> StoreResult<Vec<String>> {
        self.write(move |tx| {
            if !is_member(tx, &id, &caller)? {
                return Err(StoreError::NotFound);
            }
            let owner: String = tx
                .query_row("SELECT owner FROM channels WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .map_err(backend)?;
            // Only the owner invites: nobody else can bring users into a channel whose
            // members see each other's endpoints and count as known to each other.
            if !add.is_empty() && caller != owner {
                return Err(StoreError::Forbidden);
            }
            for user in &add {
                if !user_exists_in(tx, user)? {
                    return Err(StoreError::NotFound);
                }
                tx.execute(
                    "INSERT OR IGNORE INTO channel_members (channel_id, user, state)
                     VALUES (?1, ?2, 'invited')",
                    params![id, user],
                )
                .map_err(backend)?;
            }
            for user in &remove {
                // The owner removes anyone; a member only itself (leaving).
                if *user != caller && caller != owner {
                    return Err(StoreError::Forbidden);
                }
                tx.execute(
                    "DELETE FROM channel_members WHERE channel_id = ?1 AND user = ?2",
                    params![id, user],
                )
                .map_err(backend)?;
            }
            let all: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM channel_members WHERE channel_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if u(all) > max_members as u64 {
                return Err(StoreError::QuotaExceeded);
            }
            members_of(tx, &id)
        })
        .await
    }

    async fn answer_channel(
        &self,
        id: Vec<u8>,
        user: String,
        mls_group_id: Vec<u8>,
        accept: bool,
    ) -> StoreResult<Vec<String>> {
        self.write(move |tx| {
            let group: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT mls_group_id FROM channels WHERE id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            if group.as_deref() != Some(mls_group_id.as_slice()) {
                return Err(StoreError::NotFound);
            }
            let changed = if accept {
                tx.execute(
                    "UPDATE channel_members SET state = 'accepted'
                     WHERE channel_id = ?1 AND user = ?2 AND state = 'invited'",
                    params![id, user],
                )
            } else {
                tx.execute(
                    "DELETE FROM channel_members
                     WHERE channel_id = ?1 AND user = ?2 AND state = 'invited'",
                    params![id, user],
                )
            }
            .map_err(backend)?;
            if changed == 0 {
                return Err(StoreError::NotFound);
            }
            if accept {
                members_of(tx, &id)
            } else {
                Ok(Vec::new())
            }
        })
        .await
    }

    async fn channels_owned(&self, user: String) -> StoreResult<u64> {
        self.read(move |c| {
            c.prepare_cached("SELECT COUNT(*) FROM channels WHERE owner = ?1")
                .and_then(|mut st| st.query_row([user], |r| r.get::<_, i64>(0)))
                .map(u)
                .map_err(backend)
        })
        .await
    }

    async fn channel_members(
        &self,
        id: Vec<u8>,
        caller: String,
    ) -> StoreResult<Option<Vec<String>>> {
        self.read(move |c| {
            if !is_member(c, &id, &caller)? {
                return Ok(None);
            }
            members_of(c, &id).map(Some)
        })
        .await
    }

    async fn user_exists(&self, user: String) -> StoreResult<bool> {
        self.read(move |c| user_exists_in(c, &user)).await
    }

    async fn blob(&self, sha256: Vec<u8>) -> StoreResult<Option<BlobRow>> {
        self.read(move |c| {
            c.query_row(
                "SELECT owner, size, received, complete, epoch FROM blobs WHERE sha256 = ?1",
                [sha256],
                |r| {
                    Ok(BlobRow {
                        owner: r.get(0)?,
                        size: u(r.get(1)?),
                        received: u(r.get(2)?),
                        complete: r.get(3)?,
                        epoch: u(r.get(4)?),
                    })
                },
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn begin_blob(
        &self,
        sha256: Vec<u8>,
        owner: String,
        size: u64,
        quota: u64,
        now_ms: u64,
    ) -> StoreResult<()> {
        self.write(move |tx| {
            let used: i64 = tx
                .query_row("SELECT COALESCE(SUM(size), 0) FROM blobs WHERE owner = ?1", [&owner], |r| r.get(0))
                .map_err(backend)?;
            if u(used).saturating_add(size) > quota {
                return Err(StoreError::QuotaExceeded);
            }
            tx.execute(
                "INSERT INTO blobs (sha256, owner, size, received, complete, created_at_ms) VALUES (?1, ?2, ?3, 0, 0, ?4)",
                params![sha256, owner, i(size), i(now_ms)],
            )
            .map_err(constraint_or(StoreError::AlreadyExists))?;
            Ok(())
        })
        .await
    }

    async fn append_blob(&self, sha256: Vec<u8>, offset: u64, data: Vec<u8>) -> StoreResult<u64> {
        self.write(move |tx| {
            let row: Option<(i64, bool)> = tx
                .query_row(
                    "SELECT received, complete FROM blobs WHERE sha256 = ?1",
                    [&sha256],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            let (received, complete) = row.ok_or(StoreError::NotFound)?;
            if complete {
                return Err(StoreError::AlreadyExists);
            }
            if u(received) != offset {
                return Err(StoreError::OutOfOrder {
                    expected: u(received),
                });
            }
            if data.is_empty() {
                return Ok(offset);
            }
            let end = offset.saturating_add(data.len() as u64);
            tx.prepare_cached(
                "INSERT INTO blob_chunks (sha256, offset_bytes, bytes) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut st| st.execute(params![sha256, i(offset), data]))
            .map_err(backend)?;
            tx.prepare_cached("UPDATE blobs SET received = ?2 WHERE sha256 = ?1")
                .and_then(|mut st| st.execute(params![sha256, i(end)]))
                .map_err(backend)?;
            Ok(end)
        })
        .await
    }

    async fn read_blob(&self, sha256: Vec<u8>, offset: u64) -> StoreResult<Vec<u8>> {
        self.read(move |c| {
            let chunk: Option<(i64, Vec<u8>)> = c
                .prepare_cached(
                    "SELECT offset_bytes, bytes FROM blob_chunks
                     WHERE sha256 = ?1 AND offset_bytes <= ?2
                     ORDER BY offset_bytes DESC LIMIT 1",
                )
                .and_then(|mut st| {
                    st.query_row(params![sha256, i(offset)], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(backend)?;
            Ok(chunk.map_or_else(Vec::new, |(start, bytes)| {
                let skip = usize::try_from(offset - u(start)).unwrap_or(usize::MAX);
                bytes.get(skip..).map(<[u8]>::to_vec).unwrap_or_default()
            }))
        })
        .await
    }

    async fn reset_blob(&self, sha256: Vec<u8>) -> StoreResult<Option<u64>> {
        self.write(move |tx| {
            tx.execute("DELETE FROM blob_chunks WHERE sha256 = ?1", [&sha256])
                .map_err(backend)?;
            tx.query_row(
                "UPDATE blobs SET received = 0, complete = 0, epoch = epoch + 1
                 WHERE sha256 = ?1 RETURNING epoch",
                [&sha256],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|e| e.map(u))
            .map_err(backend)
        })
        .await
    }

    async fn finish_blob(&self, sha256: Vec<u8>, epoch: u64, complete: bool) -> StoreResult<bool> {
        self.write(move |tx| {
            if complete {
                let n = tx
                    .execute(
                        "UPDATE blobs SET complete = 1 WHERE sha256 = ?1 AND epoch = ?2
                         AND received = size AND complete = 0",
                        params![sha256, i(epoch)],
                    )
                    .map_err(backend)?;
                return Ok(n > 0);
            }
            let n = tx
                .execute(
                    "UPDATE blobs SET received = 0, epoch = epoch + 1
                     WHERE sha256 = ?1 AND epoch = ?2 AND complete = 0 AND received = size",
                    params![sha256, i(epoch)],
                )
                .map_err(backend)?;
            if n > 0 {
                tx.execute("DELETE FROM blob_chunks WHERE sha256 = ?1", [&sha256])
                    .map_err(backend)?;
            }
            Ok(n > 0)
        })
        .await
    }

    async fn publish_endpoint(
        &self,
        device: DeviceId,
        addresses: Vec<String>,
        expires_at_ms: u64,
    ) -> StoreResult<()> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO endpoints (user, device, addresses, expires_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user, device) DO UPDATE SET addresses = ?3, expires_at_ms = ?4",
                params![device.user, device.device, addresses.join("\n"), i(expires_at_ms)],
            )
            .map_err(constraint_or(StoreError::NotFound))?;
            Ok(())
        })
        .await
    }

    async fn endpoint(
        &self,
        device: DeviceId,
        now_ms: u64,
    ) -> StoreResult<Option<(Vec<String>, u64)>> {
        self.read(move |c| {
            let row: Option<(String, i64)> = c
                .query_row(
                    "SELECT addresses, expires_at_ms FROM endpoints WHERE user = ?1 AND device = ?2 AND expires_at_ms > ?3",
                    params![device.user, device.device, i(now_ms)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            Ok(row.map(|(a, e)| (a.lines().map(str::to_owned).collect(), u(e))))
        })
        .await
    }

    async fn secret(&self, name: String) -> StoreResult<Option<Vec<u8>>> {
        self.read(move |c| {
            c.query_row(
                "SELECT value FROM server_secrets WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn init_secret(&self, name: String, value: Vec<u8>) -> StoreResult<Vec<u8>> {
        self.write(move |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO server_secrets (name, value) VALUES (?1, ?2)",
                params![name, value],
            )
            .map_err(backend)?;
            tx.query_row(
                "SELECT value FROM server_secrets WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .map_err(backend)
        })
        .await
    }

    async fn outbox_push(
        &self,
        messages: Vec<OutboxMessage>,
        limits: QueueLimits,
        now_ms: u64,
    ) -> StoreResult<Vec<StoreResult<Enqueued>>> {
        self.write(move |tx| {
            let mut tally = OutboxTally::default();
            each_on_its_own(tx, &messages, |m| {
                if tally.needs_destination(m) {
                    let waiting: i64 = tx
                        .prepare_cached("SELECT COUNT(*) FROM relay_outbox WHERE destination = ?1")
                        .and_then(|mut st| st.query_row([&m.destination], |r| r.get(0)))
                        .map_err(backend)?;
                    tally.set_destination(m, u(waiting));
                }
                if tally.needs_sender(m) {
                    let (mine, my_bytes): (i64, i64) = tx
                        .prepare_cached(
                            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM relay_outbox
                             WHERE destination = ?1 AND sender_user = ?2",
                        )
                        .and_then(|mut st| {
                            st.query_row(params![m.destination, m.sender.user], |r| {
                                Ok((r.get(0)?, r.get(1)?))
                            })
                        })
                        .map_err(backend)?;
                    tally.set_sender(m, u(mine), u(my_bytes));
                }
                let inserted = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO relay_outbox (destination, sender_user, sender_device,
                             recipient_user, recipient_device, message_id, payload, created_at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )
                    .and_then(|mut st| {
                        st.execute(params![
                            m.destination,
                            m.sender.user,
                            m.sender.device,
                            m.recipient.user,
                            m.recipient.device,
                            m.message_id,
                            m.payload,
                            i(now_ms)
                        ])
                    })
                    .map_err(constraint_or(StoreError::NotFound))?;
                if inserted == 0 {
                    return Ok(Enqueued::SEEN);
                }
                // Refused: the savepoint takes the insert back.
                tally.check(m, limits)?;
                tx.prepare_cached("INSERT OR IGNORE INTO contacts (user, peer) VALUES (?1, ?2)")
                    .and_then(|mut st| {
                        st.execute(params![
                            m.sender.user,
                            format!("{}@{}", m.recipient.user, m.destination)
                        ])
                    })
                    .map_err(backend)?;
                tally.add(m);
                Ok(Enqueued::IN_OUTBOX)
            })
        })
        .await
    }

    async fn outbox_hold(&self, ids: Vec<u64>, until_ms: u64) -> StoreResult<()> {
        self.write(move |tx| {
            for id in &ids {
                tx.prepare_cached("UPDATE relay_outbox SET hold_until_ms = ?2 WHERE id = ?1")
                    .and_then(|mut st| st.execute(params![i(*id), i(until_ms)]))
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn outbox_due(&self, node: String, now_ms: u64) -> StoreResult<Vec<String>> {
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT DISTINCT o.destination FROM relay_outbox o
                     LEFT JOIN relay_destinations d ON d.destination = o.destination
                     WHERE d.destination IS NULL
                        OR (d.next_attempt_ms <= ?1
                            AND (d.lease_owner = ?2 OR d.lease_until_ms <= ?1))
                     ORDER BY o.destination",
                )
                .map_err(backend)?;
            let rows = st
                .query_map(params![i(now_ms), node], |r| r.get(0))
                .map_err(backend)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(backend)
        })
        .await
    }

    async fn outbox_claim(
        &self,
        destination: String,
        node: String,
        now_ms: u64,
        lease_ms: u64,
        limit: u32,
    ) -> StoreResult<Option<(Vec<OutboxRow>, DestinationState)>> {
        self.write(move |tx| {
            tx.prepare_cached("INSERT OR IGNORE INTO relay_destinations (destination) VALUES (?1)")
                .and_then(|mut st| st.execute([&destination]))
                .map_err(backend)?;
            let (attempts, next, failing, owner, until): (i64, i64, i64, String, i64) = tx
                .prepare_cached(
                    "SELECT attempts, next_attempt_ms, failing_since_ms, lease_owner, lease_until_ms
                     FROM relay_destinations WHERE destination = ?1",
                )
                .and_then(|mut st| {
                    st.query_row([&destination], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                })
                .map_err(backend)?;
            if u(next) > now_ms || (owner != node && u(until) > now_ms) {
                return Ok(None);
            }
            tx.prepare_cached(
                "UPDATE relay_destinations SET lease_owner = ?2, lease_until_ms = ?3
                 WHERE destination = ?1",
            )
            .and_then(|mut st| {
                st.execute(params![
                    destination,
                    node,
                    i(now_ms.saturating_add(lease_ms))
                ])
            })
            .map_err(backend)?;
            let mut st = tx
                .prepare_cached(
                    "SELECT id, sender_user, sender_device, recipient_user, recipient_device,
                         message_id, payload, created_at_ms
                     FROM relay_outbox o WHERE destination = ?1
                       AND NOT EXISTS (SELECT 1 FROM relay_outbox h
                                       WHERE h.destination = o.destination
                                         AND h.sender_user = o.sender_user
                                         AND h.recipient_user = o.recipient_user
                                         AND h.recipient_device = o.recipient_device
                                         AND h.id <= o.id AND h.hold_until_ms > ?3)
                     ORDER BY id LIMIT ?2",
                )
                .map_err(backend)?;
            let rows = st
                .query_map(params![destination, i64::from(limit), i(now_ms)], |r| {
                    Ok(OutboxRow {
                        id: u(r.get(0)?),
                        message: OutboxMessage {
                            destination: destination.clone(),
                            sender: DeviceId::new(r.get::<_, String>(1)?, r.get::<_, String>(2)?),
                            recipient: DeviceId::new(
                                r.get::<_, String>(3)?,
                                r.get::<_, String>(4)?,
                            ),
                            message_id: r.get(5)?,
                            payload: r.get(6)?,
                        },
                        created_at_ms: u(r.get(7)?),
                    })
                })
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            let state = DestinationState {
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                failing_since_ms: u(failing),
            };
            Ok(Some((rows, state)))
        })
        .await
    }

    async fn outbox_sent(&self, destination: String, ids: Vec<u64>) -> StoreResult<()> {
        self.write(move |tx| {
            for id in &ids {
                tx.prepare_cached("DELETE FROM relay_outbox WHERE id = ?1 AND destination = ?2")
                    .and_then(|mut st| st.execute(params![i(*id), destination]))
                    .map_err(backend)?;
            }
            tx.prepare_cached(
                "UPDATE relay_destinations SET attempts = 0, next_attempt_ms = 0,
                     failing_since_ms = 0 WHERE destination = ?1",
            )
            .and_then(|mut st| st.execute([&destination]))
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn outbox_retry_later(
        &self,
        destination: String,
        next_attempt_ms: u64,
        now_ms: u64,
    ) -> StoreResult<()> {
        self.write(move |tx| {
            tx.prepare_cached(
                "UPDATE relay_destinations SET attempts = attempts + 1, next_attempt_ms = ?2,
                     failing_since_ms = CASE WHEN failing_since_ms = 0 THEN ?3
                                             ELSE failing_since_ms END,
                     lease_owner = '', lease_until_ms = 0
                 WHERE destination = ?1",
            )
            .and_then(|mut st| st.execute(params![destination, i(next_attempt_ms), i(now_ms)]))
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn outbox_wake(&self, destination: String) -> StoreResult<()> {
        self.write(move |tx| {
            tx.prepare_cached(
                "UPDATE relay_destinations SET next_attempt_ms = 0 WHERE destination = ?1",
            )
            .and_then(|mut st| st.execute([&destination]))
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn outbox_fail(
        &self,
        ids: Vec<u64>,
        reason: String,
        retryable: bool,
        now_ms: u64,
    ) -> StoreResult<Vec<(String, u64)>> {
        self.write(move |tx| {
            let mut failed = Vec::with_capacity(ids.len());
            for id in &ids {
                let row: Option<(String, Vec<u8>, String, String, String)> = tx
                    .prepare_cached(
                        "DELETE FROM relay_outbox WHERE id = ?1
                         RETURNING sender_user, message_id, recipient_user, recipient_device,
                             destination",
                    )
                    .and_then(|mut st| {
                        st.query_row([i(*id)], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                        })
                        .optional()
                    })
                    .map_err(backend)?;
                let Some((sender, message_id, user, device, destination)) = row else {
                    continue;
                };
                let failure: i64 = tx
                    .prepare_cached(
                        "INSERT INTO relay_failures (sender_user, message_id, recipient_user,
                             recipient_device, reason, retryable, failed_at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
                    )
                    .and_then(|mut st| {
                        st.query_row(
                            params![
                                sender,
                                message_id,
                                format!("{user}@{destination}"),
                                device,
                                reason,
                                retryable,
                                i(now_ms)
                            ],
                            |r| r.get(0),
                        )
                    })
                    .map_err(backend)?;
                failed.push((sender, u(failure)));
            }
            Ok(failed)
        })
        .await
    }

    async fn relay_failures(
        &self,
        user: String,
        after_id: u64,
        limit: u32,
    ) -> StoreResult<Vec<RelayFailureRow>> {
        self.read(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT id, message_id, recipient_user, recipient_device, reason, retryable,
                         failed_at_ms
                     FROM relay_failures WHERE sender_user = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                )
                .map_err(backend)?;
            let rows = st
                .query_map(params![user, i(after_id), i64::from(limit)], |r| {
                    Ok(RelayFailureRow {
                        id: u(r.get(0)?),
                        sender_user: user.clone(),
                        message_id: r.get(1)?,
                        recipient: DeviceId::new(r.get::<_, String>(2)?, r.get::<_, String>(3)?),
                        reason: r.get(4)?,
                        retryable: r.get(5)?,
                        failed_at_ms: u(r.get(6)?),
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn relay_accept(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
        now_ms: u64,
        seen_until_ms: u64,
    ) -> StoreResult<Vec<StoreResult<Enqueued>>> {
        self.write(move |tx| {
            // A sender refused for room in a queue: its later messages to that queue wait
            // behind the refused one.
            let mut stopped: std::collections::HashMap<(String, DeviceId), StoreError> =
                Default::default();
            each_on_its_own(tx, &messages, |m| {
                let key = (m.quota_key().to_owned(), m.recipient.clone());
                if let Some(refusal) = stopped.get(&key) {
                    return Err(refusal.clone());
                }
                let result = accept_one(tx, m, limits, now_ms, seen_until_ms);
                if let Err(e @ (StoreError::QueueFull | StoreError::SenderQuota { .. })) = &result {
                    stopped.insert(key, e.clone());
                }
                result
            })
        })
        .await
    }

    async fn witnessed_head(&self, domain: String) -> StoreResult<Option<WitnessedHead>> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT log_key, tree_size, head FROM witnessed_heads WHERE domain = ?1",
            )
            .and_then(|mut st| {
                st.query_row([domain], |r| {
                    Ok(WitnessedHead {
                        log_key: r.get(0)?,
                        tree_size: u(r.get(1)?),
                        head: r.get(2)?,
                    })
                })
                .optional()
            })
            .map_err(backend)
        })
        .await
    }

    async fn witness_head(
        &self,
        domain: String,
        previous_size: Option<u64>,
        head: WitnessedHead,
    ) -> StoreResult<bool> {
        self.write(move |tx| {
            let changed = match previous_size {
                None => tx.execute(
                    "INSERT OR IGNORE INTO witnessed_heads (domain, log_key, tree_size, head)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![domain, head.log_key, i(head.tree_size), head.head],
                ),
                Some(size) => tx.execute(
                    "UPDATE witnessed_heads SET tree_size = ?3, head = ?4
                     WHERE domain = ?1 AND tree_size = ?2 AND log_key = ?5",
                    params![domain, i(size), i(head.tree_size), head.head, head.log_key],
                ),
            }
            .map_err(backend)?;
            Ok(changed == 1)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A fresh store in a temporary directory.
    async fn fresh() -> Option<(tempfile::TempDir, SqliteStore)> {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("qpq.db"), 4)
            .await
            .unwrap();
        Some((dir, store))
    }

    crate::store::conformance::store_conformance!(conformance, super::fresh);

    #[tokio::test]
    async fn migrations_run_once_and_reopen_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qpq.db");
        {
            let s = SqliteStore::open(&path, 2).await.unwrap();
            assert_eq!(s.schema_version().await.unwrap(), MIGRATIONS.len() as u32);
            s.create_user("alice".into(), vec![9], 1).await.unwrap();
        }
        let s = SqliteStore::open(&path, 2).await.unwrap();
        assert_eq!(
            s.password_file("alice".into()).await.unwrap(),
            Some(vec![9])
        );
        assert!(matches!(
            s.create_user("alice".into(), vec![1], 2).await,
            Err(StoreError::AlreadyExists)
        ));
    }
}
