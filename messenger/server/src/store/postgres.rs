//! The PostgreSQL store, for several nodes serving one messenger: numbered migrations, a
//! connection pool (deadpool-postgres), and the same guarantees as SQLite.
//!
//! - A message is acknowledged only once its transaction committed.
//! - Every change to a recipient queue (enqueue, ack) first locks the recipient's `devices`
//!   row, so the queue bounds, the per-sender quotas and the next sequence number are checked
//!   and moved by one writer at a time per queue, on any node. Every check runs before the
//!   first write of a message, so a refused message in a batch leaves nothing behind.
//! - A key-transparency append takes a transaction-scoped advisory lock: leaf indexes stay
//!   dense and in commit order across nodes.
//! - Other read-check-write sequences (the device cap, the key-package cap, the blob quota,
//!   channel changes) lock the row they count under.
//! - The janitor's deletes are plain `DELETE ... WHERE expires_at_ms <= $1`: safe on every
//!   node at once.

use std::sync::Arc;

use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::*;

/// Numbered migrations; `qpq_schema` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/V1__initial.sql"),
    include_str!("../../migrations/postgres/V2__federation.sql"),
];

/// Advisory lock keys (arbitrary constants, one per purpose).
const MIGRATION_LOCK: i64 = 0x7170_7100_0001;
const KT_APPEND_LOCK: i64 = 0x7170_7100_0002;

fn pg(e: tokio_postgres::Error) -> StoreError {
    backend(e)
}

/// Maps a unique violation to `unique` and a foreign-key violation (a missing parent row) to
/// `missing`, when given, and any other error to a backend failure.
fn violation(
    unique: Option<StoreError>,
    missing: Option<StoreError>,
) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| {
        let mapped = match e.code() {
            Some(c) if *c == SqlState::UNIQUE_VIOLATION => unique,
            Some(c) if *c == SqlState::FOREIGN_KEY_VIOLATION => missing,
            _ => None,
        };
        mapped.unwrap_or_else(|| pg(e))
    }
}

/// Locks `device`'s row until the transaction ends (one writer per queue and per device's
/// key packages, on any node); whether the device exists.
async fn lock_device<C: GenericClient>(tx: &C, device: &DeviceId) -> StoreResult<bool> {
    exists(
        tx,
        "SELECT 1 FROM devices WHERE \"user\" = $1 AND device = $2 FOR UPDATE",
        &[&device.user, &device.device],
    )
    .await
}

/// Locks the queues of every recipient of `messages`, in one order (two transactions locking
/// overlapping sets never wait on each other), until the transaction ends.
async fn lock_recipients<C: GenericClient>(tx: &C, messages: &[NewMessage]) -> StoreResult<()> {
    let mut recipients: Vec<&DeviceId> = messages.iter().map(|m| &m.recipient).collect();
    recipients.sort();
    recipients.dedup();
    for r in recipients {
        lock_device(tx, r).await?;
    }
    Ok(())
}

/// The PostgreSQL store. Clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never printed.
        f.write_str("PostgresStore")
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/database`, or the key=value form) with
    /// a pool of at most `pool_size` connections, checks that the database answers, and runs
    /// pending migrations (one node at a time).
    pub async fn open(url: &str, pool_size: usize) -> StoreResult<Self> {
        let mut config: tokio_postgres::Config = url.parse().map_err(pg)?;
        // The server's own notices ("relation already exists, skipping") are not news.
        config.options("-c client_min_messages=warning");
        let manager = deadpool_postgres::Manager::from_config(
            config,
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .build()
            .map_err(backend)?;
        let store = Self {
            pool: Arc::new(pool),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The schema version after migrations.
    pub async fn schema_version(&self) -> StoreResult<u32> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT COALESCE(MAX(version), 0) FROM qpq_schema", &[])
            .await
            .map_err(pg)?;
        Ok(u32::try_from(row.get::<_, i32>(0)).unwrap_or(0))
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(backend)
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut client = self.client().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        let result = async {
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS qpq_schema (
                         version INTEGER PRIMARY KEY,
                         applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                     )",
                )
                .await
                .map_err(pg)?;
            let done: i32 = client
                .query_one("SELECT COALESCE(MAX(version), 0) FROM qpq_schema", &[])
                .await
                .map_err(pg)?
                .get(0);
            for (n, sql) in MIGRATIONS
                .iter()
                .enumerate()
                .skip(usize::try_from(done).unwrap_or(0))
            {
                let version = i32::try_from(n + 1).unwrap_or(i32::MAX);
                let tx = client.transaction().await.map_err(pg)?;
                tx.batch_execute(sql).await.map_err(pg)?;
                tx.execute("INSERT INTO qpq_schema (version) VALUES ($1)", &[&version])
                    .await
                    .map_err(pg)?;
                tx.commit().await.map_err(pg)?;
                tracing::info!(version, "applied PostgreSQL migration");
            }
            Ok(())
        }
        .await;
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        result
    }
}

/// Runs `body` in a transaction on a pooled connection, committing when it returns `Ok`
/// (an `Err` rolls everything back when the transaction is dropped).
macro_rules! transaction {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let mut client = $store.client().await?;
        let $tx = client.transaction().await.map_err(pg)?;
        let result = $body;
        match result {
            Ok(value) => {
                $tx.commit().await.map_err(pg)?;
                Ok(value)
            }
            Err(e) => Err(e),
        }
    }};
}

async fn query_opt<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Option<tokio_postgres::Row>> {
    let stmt = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_opt(&stmt, params).await.map_err(pg)
}

async fn query<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Vec<tokio_postgres::Row>> {
    let stmt = c.prepare_cached(sql).await.map_err(pg)?;
    c.query(&stmt, params).await.map_err(pg)
}

async fn execute<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let stmt = c.prepare_cached(sql).await?;
    c.execute(&stmt, params).await
}

async fn exists<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<bool> {
    Ok(query_opt(c, sql, params).await?.is_some())
}

async fn members_of<C: GenericClient>(c: &C, id: &[u8]) -> StoreResult<Vec<String>> {
    Ok(query(
        c,
        "SELECT \"user\" FROM channel_members WHERE channel_id = $1 AND state = 'accepted'
         ORDER BY \"user\"",
        &[&id],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

async fn is_member<C: GenericClient>(c: &C, id: &[u8], user: &str) -> StoreResult<bool> {
    exists(
        c,
        "SELECT 1 FROM channel_members WHERE channel_id = $1 AND \"user\" = $2
         AND state = 'accepted'",
        &[&id, &user],
    )
    .await
}

async fn share_channel_in<C: GenericClient>(c: &C, a: &str, b: &str) -> StoreResult<bool> {
    if a == b {
        return Ok(true);
    }
    exists(
        c,
        "SELECT 1 FROM channel_members x JOIN channel_members y ON x.channel_id = y.channel_id
         WHERE x.\"user\" = $1 AND y.\"user\" = $2 AND x.state = 'accepted'
         AND y.state = 'accepted' LIMIT 1",
        &[&a, &b],
    )
    .await
}

async fn user_exists_in<C: GenericClient>(c: &C, user: &str) -> StoreResult<bool> {
    exists(c, "SELECT 1 FROM users WHERE name = $1", &[&user]).await
}

/// One enqueue inside the caller's transaction: checks first, writes last.
async fn enqueue_one<C: GenericClient>(
    tx: &C,
    m: &NewMessage,
    limits: QueueLimits,
    now_ms: u64,
) -> StoreResult<Enqueued> {
    let (user, device) = (&m.recipient.user, &m.recipient.device);
    // The queue's row, locked: one writer per queue from here to the commit.
    let Some(queue) = query_opt(
        tx,
        "SELECT next_seq, queue_messages, queue_bytes FROM devices
         WHERE \"user\" = $1 AND device = $2 FOR UPDATE",
        &[user, device],
    )
    .await?
    else {
        return Err(StoreError::NotFound);
    };
    if let Some(row) = query_opt(
        tx,
        "SELECT seq FROM queue WHERE \"user\" = $1 AND device = $2 AND sender = $3
         AND message_id = $4",
        &[user, device, &m.sender, &m.message_id],
    )
    .await?
    {
        return Ok(Enqueued {
            seq: u(row.get(0)),
            duplicate: true,
        });
    }
    let (seq, messages, bytes): (i64, i64, i64) = (queue.get(0), queue.get(1), queue.get(2));
    let size = m.payload.len() as u64;
    if u(messages) >= limits.max_messages || u(bytes).saturating_add(size) > limits.max_bytes {
        return Err(StoreError::QueueFull);
    }
    let quota_key = m.quota_key();
    let (sender_messages, sender_bytes) = query_opt(
        tx,
        "SELECT messages, bytes FROM queue_senders
         WHERE \"user\" = $1 AND device = $2 AND sender = $3",
        &[user, device, &quota_key],
    )
    .await?
    .map_or((0, 0), |r| (r.get::<_, i64>(0), r.get::<_, i64>(1)));
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
    execute(
        tx,
        "INSERT INTO queue (\"user\", device, seq, sender, message_id, payload, received_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            user,
            device,
            &seq,
            &m.sender,
            &m.message_id,
            &m.payload,
            &i(now_ms),
        ],
    )
    .await
    .map_err(pg)?;
    execute(
        tx,
        "UPDATE devices SET next_seq = $3, queue_messages = queue_messages + 1,
             queue_bytes = queue_bytes + $4 WHERE \"user\" = $1 AND device = $2",
        &[user, device, &(seq + 1), &i(size)],
    )
    .await
    .map_err(pg)?;
    execute(
        tx,
        "INSERT INTO queue_senders (\"user\", device, sender, messages, bytes)
         VALUES ($1, $2, $3, 1, $4)
         ON CONFLICT (\"user\", device, sender) DO UPDATE SET
             messages = queue_senders.messages + 1,
             bytes = queue_senders.bytes + excluded.bytes",
        &[user, device, &quota_key, &i(size)],
    )
    .await
    .map_err(pg)?;
    if let Some(sender) = &m.sender_user
        && sender != user
    {
        execute(
            tx,
            "INSERT INTO contacts (\"user\", peer) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[sender, user],
        )
        .await
        .map_err(pg)?;
    }
    Ok(Enqueued {
        seq: u(seq),
        duplicate: false,
    })
}

impl Store for PostgresStore {
    async fn create_user(
        &self,
        user: String,
        password_file: Vec<u8>,
        now_ms: u64,
    ) -> StoreResult<()> {
        let client = self.client().await?;
        execute(
            &client,
            "INSERT INTO users (name, password_file, created_at_ms) VALUES ($1, $2, $3)",
            &[&user, &password_file, &i(now_ms)],
        )
        .await
        .map_err(violation(Some(StoreError::AlreadyExists), None))?;
        Ok(())
    }

    async fn password_file(&self, user: String) -> StoreResult<Option<Vec<u8>>> {
        let client = self.client().await?;
        Ok(query_opt(
            &client,
            "SELECT password_file FROM users WHERE name = $1",
            &[&user],
        )
        .await?
        .map(|r| r.get(0)))
    }

    async fn register_device(
        &self,
        device: DeviceId,
        label: String,
        now_ms: u64,
        first_only: bool,
        max_devices: u32,
    ) -> StoreResult<()> {
        transaction!(self, |tx| async {
            // The user's row, locked: the device count holds until the commit.
            if !exists(
                &tx,
                "SELECT 1 FROM users WHERE name = $1 FOR UPDATE",
                &[&device.user],
            )
            .await?
            {
                return Err(StoreError::NotFound);
            }
            if exists(
                &tx,
                "SELECT 1 FROM revoked_devices WHERE \"user\" = $1 AND device = $2",
                &[&device.user, &device.device],
            )
            .await?
            {
                return Err(StoreError::Revoked);
            }
            if exists(
                &tx,
                "SELECT 1 FROM devices WHERE \"user\" = $1 AND device = $2",
                &[&device.user, &device.device],
            )
            .await?
            {
                return Err(StoreError::AlreadyExists);
            }
            let count: i64 = query(
                &tx,
                "SELECT COUNT(*) FROM devices WHERE \"user\" = $1",
                &[&device.user],
            )
            .await?[0]
                .get(0);
            if first_only && count > 0 {
                return Err(StoreError::NotFound);
            }
            if u(count) >= u64::from(max_devices) {
                return Err(StoreError::QuotaExceeded);
            }
            execute(
                &tx,
                "INSERT INTO devices (\"user\", device, label, created_at_ms)
                 VALUES ($1, $2, $3, $4)",
                &[&device.user, &device.device, &label, &i(now_ms)],
            )
            .await
            .map_err(pg)?;
            Ok(())
        }
        .await)
    }

    async fn device_exists(&self, device: DeviceId) -> StoreResult<bool> {
        let client = self.client().await?;
        exists(
            &client,
            "SELECT 1 FROM devices WHERE \"user\" = $1 AND device = $2",
            &[&device.user, &device.device],
        )
        .await
    }

    async fn list_devices(&self, user: String) -> StoreResult<Vec<DeviceRow>> {
        let client = self.client().await?;
        Ok(query(
            &client,
            "SELECT d.device, d.label, d.created_at_ms,
                    EXISTS(SELECT 1 FROM key_bundles k
                           WHERE k.\"user\" = d.\"user\" AND k.device = d.device)
             FROM devices d WHERE d.\"user\" = $1 ORDER BY d.created_at_ms, d.device",
            &[&user],
        )
        .await?
        .iter()
        .map(|r| DeviceRow {
            device: r.get(0),
            label: r.get(1),
            created_at_ms: u(r.get(2)),
            has_keys: r.get(3),
        })
        .collect())
    }

    async fn revoke_device(&self, device: DeviceId, now_ms: u64) -> StoreResult<()> {
        transaction!(self, |tx| async {
            execute(
                &tx,
                "INSERT INTO revoked_devices (\"user\", device, revoked_at_ms)
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&device.user, &device.device, &i(now_ms)],
            )
            .await
            .map_err(violation(None, Some(StoreError::NotFound)))?;
            // Cascades to sessions, queue, key packages, bundle and endpoint.
            let n = execute(
                &tx,
                "DELETE FROM devices WHERE \"user\" = $1 AND device = $2",
                &[&device.user, &device.device],
            )
            .await
            .map_err(pg)?;
            if n == 0 {
                Err(StoreError::NotFound)
            } else {
                Ok(())
            }
        }
        .await)
    }

    async fn create_session(&self, token_hash: Vec<u8>, session: Session) -> StoreResult<()> {
        let client = self.client().await?;
        execute(
            &client,
            "INSERT INTO sessions (token_hash, \"user\", device, expires_at_ms)
             VALUES ($1, $2, $3, $4)",
            &[
                &token_hash,
                &session.device.user,
                &session.device.device,
                &i(session.expires_at_ms),
            ],
        )
        .await
        .map_err(violation(None, Some(StoreError::NotFound)))?;
        Ok(())
    }

    async fn session(&self, token_hash: Vec<u8>) -> StoreResult<Option<Session>> {
        let client = self.client().await?;
        Ok(query_opt(
            &client,
            "SELECT \"user\", device, expires_at_ms FROM sessions WHERE token_hash = $1",
            &[&token_hash],
        )
        .await?
        .map(|r| Session {
            device: DeviceId::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            expires_at_ms: u(r.get(2)),
        }))
    }

    async fn delete_session(&self, token_hash: Vec<u8>) -> StoreResult<()> {
        let client = self.client().await?;
        execute(
            &client,
            "DELETE FROM sessions WHERE token_hash = $1",
            &[&token_hash],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    async fn delete_expired(&self, now_ms: u64) -> StoreResult<u64> {
        transaction!(self, |tx| async {
            let sessions = execute(
                &tx,
                "DELETE FROM sessions WHERE expires_at_ms <= $1",
                &[&i(now_ms)],
            )
            .await
            .map_err(pg)?;
            let endpoints = execute(
                &tx,
                "DELETE FROM endpoints WHERE expires_at_ms <= $1",
                &[&i(now_ms)],
            )
            .await
            .map_err(pg)?;
            let seen = execute(
                &tx,
                "DELETE FROM relay_seen WHERE expires_at_ms <= $1",
                &[&i(now_ms)],
            )
            .await
            .map_err(pg)?;
            let failures = execute(
                &tx,
                "DELETE FROM relay_failures WHERE failed_at_ms < $1",
                &[&i(now_ms.saturating_sub(RELAY_FAILURES_KEPT_MS))],
            )
            .await
            .map_err(pg)?;
            Ok(sessions + endpoints + seen + failures)
        }
        .await)
    }

    async fn enqueue(
        &self,
        message: NewMessage,
        limits: QueueLimits,
        now_ms: u64,
    ) -> StoreResult<Enqueued> {
        transaction!(self, |tx| enqueue_one(&tx, &message, limits, now_ms).await)
    }

    async fn batch_enqueue(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
        now_ms: u64,
    ) -> StoreResult<Vec<StoreResult<Enqueued>>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        transaction!(self, |tx| async {
            // Lock every recipient queue up front, in one order, so that two batches to
            // overlapping recipients cannot wait on each other.
            lock_recipients(&tx, &messages).await?;
            let mut results = Vec::with_capacity(messages.len());
            for m in &messages {
                // Every check of a message precedes its first write: a refused one wrote
                // nothing, and the accepted ones commit together.
                match enqueue_one(&tx, m, limits, now_ms).await {
                    Err(StoreError::Backend(e)) => return Err(StoreError::Backend(e)),
                    other => results.push(other),
                }
            }
            Ok(results)
        }
        .await)
    }

    async fn known_to(&self, sender: String, recipients: Vec<String>) -> StoreResult<Vec<bool>> {
        let client = self.client().await?;
        let mut answers = Vec::with_capacity(recipients.len());
        for recipient in &recipients {
            if *recipient == sender {
                answers.push(true);
                continue;
            }
            let wrote = exists(
                &client,
                "SELECT 1 FROM contacts WHERE \"user\" = $1 AND peer = $2",
                &[recipient, &sender],
            )
            .await?;
            answers.push(wrote || share_channel_in(&client, recipient, &sender).await?);
        }
        Ok(answers)
    }

    async fn share_channel(&self, a: String, b: String) -> StoreResult<bool> {
        let client = self.client().await?;
        share_channel_in(&client, &a, &b).await
    }

    async fn fetch(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: u32,
    ) -> StoreResult<Vec<StoredMessage>> {
        let client = self.client().await?;
        Ok(query(
            &client,
            "SELECT seq, message_id, payload, received_at_ms FROM queue
             WHERE \"user\" = $1 AND device = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            &[
                &device.user,
                &device.device,
                &i(after_seq),
                &i64::from(limit),
            ],
        )
        .await?
        .iter()
        .map(|r| StoredMessage {
            seq: u(r.get(0)),
            message_id: r.get(1),
            payload: r.get(2),
            received_at_ms: u(r.get(3)),
        })
        .collect())
    }

    async fn peek(&self, device: DeviceId) -> StoreResult<QueueDepth> {
        let client = self.client().await?;
        let row = query(
            &client,
            "SELECT COUNT(*), COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM queue
             WHERE \"user\" = $1 AND device = $2",
            &[&device.user, &device.device],
        )
        .await?;
        Ok(QueueDepth {
            depth: u(row[0].get(0)),
            first_seq: u(row[0].get(1)),
            last_seq: u(row[0].get(2)),
        })
    }

    async fn ack(&self, device: DeviceId, up_to_seq: u64) -> StoreResult<u64> {
        transaction!(self, |tx| async {
            if !lock_device(&tx, &device).await? {
                return Ok(0);
            }
            let per_sender = query(
                &tx,
                "SELECT split_part(sender, '/', 1) AS quota_key, COUNT(*),
                        COALESCE(SUM(octet_length(payload)), 0)::BIGINT
                 FROM queue WHERE \"user\" = $1 AND device = $2 AND seq <= $3
                 GROUP BY quota_key",
                &[&device.user, &device.device, &i(up_to_seq)],
            )
            .await?;
            if per_sender.is_empty() {
                return Ok(0);
            }
            execute(
                &tx,
                "DELETE FROM queue WHERE \"user\" = $1 AND device = $2 AND seq <= $3",
                &[&device.user, &device.device, &i(up_to_seq)],
            )
            .await
            .map_err(pg)?;
            let (mut count, mut bytes) = (0i64, 0i64);
            for row in &per_sender {
                let (sender, n, b): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
                count += n;
                bytes += b;
                execute(
                    &tx,
                    "UPDATE queue_senders SET messages = messages - $4, bytes = bytes - $5
                     WHERE \"user\" = $1 AND device = $2 AND sender = $3",
                    &[&device.user, &device.device, &sender, &n, &b],
                )
                .await
                .map_err(pg)?;
            }
            execute(
                &tx,
                "DELETE FROM queue_senders WHERE \"user\" = $1 AND device = $2 AND messages <= 0",
                &[&device.user, &device.device],
            )
            .await
            .map_err(pg)?;
            execute(
                &tx,
                "UPDATE devices SET queue_messages = GREATEST(queue_messages - $3, 0),
                     queue_bytes = GREATEST(queue_bytes - $4, 0)
                 WHERE \"user\" = $1 AND device = $2",
                &[&device.user, &device.device, &count, &bytes],
            )
            .await
            .map_err(pg)?;
            Ok(u(count))
        }
        .await)
    }

    async fn add_key_packages(
        &self,
        device: DeviceId,
        packages: Vec<Vec<u8>>,
        max: u32,
    ) -> StoreResult<u32> {
        transaction!(self, |tx| async {
            if !lock_device(&tx, &device).await? {
                return Err(StoreError::NotFound);
            }
            let count: i64 = query(
                &tx,
                "SELECT COUNT(*) FROM key_packages WHERE \"user\" = $1 AND device = $2
                 AND NOT last_resort",
                &[&device.user, &device.device],
            )
            .await?[0]
                .get(0);
            let total = u(count) + packages.len() as u64;
            if total > u64::from(max) {
                return Err(StoreError::QuotaExceeded);
            }
            for kp in &packages {
                execute(
                    &tx,
                    "INSERT INTO key_packages (\"user\", device, key_package, last_resort)
                     VALUES ($1, $2, $3, FALSE)",
                    &[&device.user, &device.device, kp],
                )
                .await
                .map_err(pg)?;
            }
            Ok(u32::try_from(total).unwrap_or(u32::MAX))
        }
        .await)
    }

    async fn set_last_resort_key_package(
        &self,
        device: DeviceId,
        package: Vec<u8>,
    ) -> StoreResult<()> {
        transaction!(self, |tx| async {
            if !lock_device(&tx, &device).await? {
                return Err(StoreError::NotFound);
            }
            execute(
                &tx,
                "DELETE FROM key_packages WHERE \"user\" = $1 AND device = $2 AND last_resort",
                &[&device.user, &device.device],
            )
            .await
            .map_err(pg)?;
            execute(
                &tx,
                "INSERT INTO key_packages (\"user\", device, key_package, last_resort)
                 VALUES ($1, $2, $3, TRUE)",
                &[&device.user, &device.device, &package],
            )
            .await
            .map_err(pg)?;
            Ok(())
        }
        .await)
    }

    async fn take_key_package(&self, device: DeviceId) -> StoreResult<Option<(Vec<u8>, bool)>> {
        let client = self.client().await?;
        // Two takers never get the same one-time package: the row is claimed by the delete.
        if let Some(row) = query_opt(
            &client,
            "DELETE FROM key_packages WHERE id = (
                 SELECT id FROM key_packages WHERE \"user\" = $1 AND device = $2
                 AND NOT last_resort ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING key_package",
            &[&device.user, &device.device],
        )
        .await?
        {
            return Ok(Some((row.get(0), false)));
        }
        Ok(query_opt(
            &client,
            "SELECT key_package FROM key_packages WHERE \"user\" = $1 AND device = $2
             AND last_resort",
            &[&device.user, &device.device],
        )
        .await?
        .map(|r| (r.get(0), true)))
    }

    async fn key_package_count(&self, device: DeviceId) -> StoreResult<u32> {
        let client = self.client().await?;
        let count: i64 = query(
            &client,
            "SELECT COUNT(*) FROM key_packages WHERE \"user\" = $1 AND device = $2
             AND NOT last_resort",
            &[&device.user, &device.device],
        )
        .await?[0]
            .get(0);
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    async fn last_resort_key_package(&self, device: DeviceId) -> StoreResult<Option<Vec<u8>>> {
        let client = self.client().await?;
        Ok(query_opt(
            &client,
            "SELECT key_package FROM key_packages WHERE \"user\" = $1 AND device = $2
             AND last_resort",
            &[&device.user, &device.device],
        )
        .await?
        .map(|r| r.get(0)))
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
        transaction!(self, |tx| async {
            if !exists(
                &tx,
                "SELECT 1 FROM devices WHERE \"user\" = $1 AND device = $2",
                &[&device.user, &device.device],
            )
            .await?
            {
                return Err(StoreError::NotFound);
            }
            if let Some(row) = query_opt(
                &tx,
                "SELECT \"user\", device FROM key_bundles WHERE identity_key = $1",
                &[&identity_key],
            )
            .await?
                && (row.get::<_, String>(0), row.get::<_, String>(1))
                    != (device.user.clone(), device.device.clone())
            {
                // The identity key belongs to the device that published it first.
                return Err(StoreError::AlreadyExists);
            }
            // One appender at a time across the cluster: indexes stay dense, in commit order.
            execute(&tx, "SELECT pg_advisory_xact_lock($1)", &[&KT_APPEND_LOCK])
                .await
                .map_err(pg)?;
            let index: i64 =
                query(&tx, "SELECT COALESCE(MAX(idx) + 1, 0) FROM kt_leaves", &[]).await?[0].get(0);
            execute(
                &tx,
                "INSERT INTO kt_leaves (idx, leaf_hash) VALUES ($1, $2)",
                &[&index, &leaf_hash.as_slice()],
            )
            .await
            .map_err(pg)?;
            execute(
                &tx,
                "INSERT INTO key_bundles (\"user\", device, bundle, identity_key,
                     delivery_token_hash, kt_index, kt_key_package_hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (\"user\", device) DO UPDATE SET bundle = $3, identity_key = $4,
                     delivery_token_hash = $5, kt_index = $6, kt_key_package_hash = $7",
                &[
                    &device.user,
                    &device.device,
                    &bundle,
                    &identity_key,
                    &delivery_token_hash,
                    &index,
                    &key_package_hash.as_slice(),
                ],
            )
            .await
            .map_err(violation(
                Some(StoreError::AlreadyExists),
                Some(StoreError::NotFound),
            ))?;
            Ok(u(index))
        }
        .await)
    }

    async fn bundle(&self, device: DeviceId) -> StoreResult<Option<BundleRow>> {
        let client = self.client().await?;
        Ok(query_opt(
            &client,
            "SELECT bundle, identity_key, delivery_token_hash, kt_index, kt_key_package_hash
             FROM key_bundles WHERE \"user\" = $1 AND device = $2",
            &[&device.user, &device.device],
        )
        .await?
        .map(|r| BundleRow {
            bundle: r.get(0),
            identity_key: r.get(1),
            delivery_token_hash: r.get(2),
            kt_index: u(r.get(3)),
            kt_key_package_hash: r.get(4),
        }))
    }

    async fn user_identities(&self, user: String) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let client = self.client().await?;
        Ok(query(
            &client,
            "SELECT device, identity_key FROM key_bundles WHERE \"user\" = $1 ORDER BY device",
            &[&user],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }

    async fn resolve_identity(&self, identity_key: Vec<u8>) -> StoreResult<Option<DeviceId>> {
        let client = self.client().await?;
        Ok(query_opt(
            &client,
            "SELECT \"user\", device FROM key_bundles WHERE identity_key = $1",
            &[&identity_key],
        )
        .await?
        .map(|r| DeviceId::new(r.get::<_, String>(0), r.get::<_, String>(1))))
    }

    async fn kt_leaves(&self) -> StoreResult<Vec<[u8; 32]>> {
        let client = self.client().await?;
        query(&client, "SELECT leaf_hash FROM kt_leaves ORDER BY idx", &[])
            .await?
            .iter()
            .map(|r| {
                r.get::<_, Vec<u8>>(0)
                    .try_into()
                    .map_err(|_| StoreError::backend("corrupt key-transparency leaf"))
            })
            .collect()
    }

    async fn kt_leaves_from(&self, start: u64) -> StoreResult<Vec<[u8; 32]>> {
        let client = self.client().await?;
        query(
            &client,
            "SELECT leaf_hash FROM kt_leaves WHERE idx >= $1 ORDER BY idx",
            &[&i(start)],
        )
        .await?
        .iter()
        .map(|r| {
            r.get::<_, Vec<u8>>(0)
                .try_into()
                .map_err(|_| StoreError::backend("corrupt key-transparency leaf"))
        })
        .collect()
    }

    async fn kt_head(&self, tree_size: u64) -> StoreResult<Option<Vec<u8>>> {
        let client = self.client().await?;
        Ok(query_opt(
            &client,
            "SELECT head FROM kt_heads WHERE tree_size = $1",
            &[&i(tree_size)],
        )
        .await?
        .map(|r| r.get(0)))
    }

    async fn init_kt_head(&self, tree_size: u64, head: Vec<u8>) -> StoreResult<Vec<u8>> {
        let client = self.client().await?;
        execute(
            &client,
            "INSERT INTO kt_heads (tree_size, head) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&i(tree_size), &head],
        )
        .await
        .map_err(pg)?;
        query_opt(
            &client,
            "SELECT head FROM kt_heads WHERE tree_size = $1",
            &[&i(tree_size)],
        )
        .await?
        .map(|r| r.get(0))
        .ok_or_else(|| StoreError::backend("signed tree head vanished"))
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
        transaction!(self, |tx| async {
            for member in &members {
                if !user_exists_in(&tx, member).await? {
                    return Err(StoreError::NotFound);
                }
            }
            execute(
                &tx,
                "INSERT INTO channels (id, name, owner, mls_group_id, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&id, &name, &owner, &mls_group_id, &i(now_ms)],
            )
            .await
            .map_err(violation(Some(StoreError::AlreadyExists), None))?;
            execute(
                &tx,
                "INSERT INTO channel_members (channel_id, \"user\", state)
                 VALUES ($1, $2, 'accepted')",
                &[&id, &owner],
            )
            .await
            .map_err(pg)?;
            for member in &members {
                execute(
                    &tx,
                    "INSERT INTO channel_members (channel_id, \"user\", state)
                     VALUES ($1, $2, 'invited') ON CONFLICT DO NOTHING",
                    &[&id, member],
                )
                .await
                .map_err(pg)?;
            }
            Ok(())
        }
        .await)
    }

    async fn update_channel(
        &self,
        id: Vec<u8>,
        caller: String,
        add: Vec<String>,
        remove: Vec<String>,
        max_members: usize,
    ) -> StoreResult<Vec<String>> {
        transaction!(self, |tx| async {
            // The channel's row, locked: one change of its members at a time.
            let Some(owner) = query_opt(
                &tx,
                "SELECT owner FROM channels WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
            .map(|r| r.get::<_, String>(0)) else {
                return Err(StoreError::NotFound);
            };
            if !is_member(&tx, &id, &caller).await? {
                return Err(StoreError::NotFound);
            }
            // Only the owner invites: nobody else can bring users into a channel whose
            // members see each other's endpoints and count as known to each other.
            if !add.is_empty() && caller != owner {
                return Err(StoreError::Forbidden);
            }
            for user in &remove {
                // The owner removes anyone; a member only itself (leaving).
                if *user != caller && caller != owner {
                    return Err(StoreError::Forbidden);
                }
            }
            for user in &add {
                if !user_exists_in(&tx, user).await? {
                    return Err(StoreError::NotFound);
                }
            }
            for user in &add {
                execute(
                    &tx,
                    "INSERT INTO channel_members (channel_id, \"user\", state)
                     VALUES ($1, $2, 'invited') ON CONFLICT DO NOTHING",
                    &[&id, user],
                )
                .await
                .map_err(pg)?;
            }
            for user in &remove {
                execute(
                    &tx,
                    "DELETE FROM channel_members WHERE channel_id = $1 AND \"user\" = $2",
                    &[&id, user],
                )
                .await
                .map_err(pg)?;
            }
            let all: i64 = query(
                &tx,
                "SELECT COUNT(*) FROM channel_members WHERE channel_id = $1",
                &[&id],
            )
            .await?[0]
                .get(0);
            if u(all) > max_members as u64 {
                return Err(StoreError::QuotaExceeded);
            }
            members_of(&tx, &id).await
        }
        .await)
    }

    async fn answer_channel(
        &self,
        id: Vec<u8>,
        user: String,
        mls_group_id: Vec<u8>,
        accept: bool,
    ) -> StoreResult<Vec<String>> {
        transaction!(self, |tx| async {
            let group: Option<Vec<u8>> = query_opt(
                &tx,
                "SELECT mls_group_id FROM channels WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
            .map(|r| r.get(0));
            if group.as_deref() != Some(mls_group_id.as_slice()) {
                return Err(StoreError::NotFound);
            }
            let changed = if accept {
                execute(
                    &tx,
                    "UPDATE channel_members SET state = 'accepted'
                     WHERE channel_id = $1 AND \"user\" = $2 AND state = 'invited'",
                    &[&id, &user],
                )
                .await
            } else {
                execute(
                    &tx,
                    "DELETE FROM channel_members
                     WHERE channel_id = $1 AND \"user\" = $2 AND state = 'invited'",
                    &[&id, &user],
                )
                .await
            }
            .map_err(pg)?;
            if changed == 0 {
                return Err(StoreError::NotFound);
            }
            if accept {
                members_of(&tx, &id).await
            } else {
                Ok(Vec::new())
            }
        }
        .await)
    }

    async fn channels_owned(&self, user: String) -> StoreResult<u64> {
        let client = self.client().await?;
        let n: i64 = query(
            &client,
            "SELECT COUNT(*) FROM channels WHERE owner = $1",
            &[&user],
        )
        .await?[0]
            .get(0);
        Ok(u(n))
    }

    async fn channel_members(
        &self,
        id: Vec<u8>,
        caller: String,
    ) -> StoreResult<Option<Vec<String>>> {
        let client = self.client().await?;
        if !is_member(&client, &id, &caller).await? {
            return Ok(None);
        }
        members_of(&client, &id).await.map(Some)
    }

    async fn user_exists(&self, user: String) -> StoreResult<bool> {
        let client = self.client().await?;
        user_exists_in(&client, &user).await
    }

    async fn blob(&self, sha256: Vec<u8>) -> StoreResult<Option<BlobRow>> {
        let client = self.client().await?;
        Ok(query_opt(
            &client,
            "SELECT owner, size, received, complete, epoch FROM blobs WHERE sha256 = $1",
            &[&sha256],
        )
        .await?
        .map(|r| BlobRow {
            owner: r.get(0),
            size: u(r.get(1)),
            received: u(r.get(2)),
            complete: r.get(3),
            epoch: u(r.get(4)),
        }))
    }

    async fn begin_blob(
        &self,
        sha256: Vec<u8>,
        owner: String,
        size: u64,
        quota: u64,
        now_ms: u64,
    ) -> StoreResult<()> {
        transaction!(self, |tx| async {
            // One quota check per owner at a time, on any node.
            execute(
                &tx,
                "SELECT pg_advisory_xact_lock(hashtextextended('qpq blob quota ' || $1, 0))",
                &[&owner],
            )
            .await
            .map_err(pg)?;
            let used: i64 = query(
                &tx,
                "SELECT COALESCE(SUM(size), 0)::BIGINT FROM blobs WHERE owner = $1",
                &[&owner],
            )
            .await?[0]
                .get(0);
            if u(used).saturating_add(size) > quota {
                return Err(StoreError::QuotaExceeded);
            }
            let inserted = execute(
                &tx,
                "INSERT INTO blobs (sha256, owner, size, received, complete, created_at_ms)
                 VALUES ($1, $2, $3, 0, FALSE, $4) ON CONFLICT DO NOTHING",
                &[&sha256, &owner, &i(size), &i(now_ms)],
            )
            .await
            .map_err(pg)?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists);
            }
            Ok(())
        }
        .await)
    }

    async fn append_blob(&self, sha256: Vec<u8>, offset: u64, data: Vec<u8>) -> StoreResult<u64> {
        transaction!(self, |tx| async {
            // The blob's row, locked: appends of one blob are serialized across nodes.
            let Some(row) = query_opt(
                &tx,
                "SELECT received, complete FROM blobs WHERE sha256 = $1 FOR UPDATE",
                &[&sha256],
            )
            .await?
            else {
                return Err(StoreError::NotFound);
            };
            let (received, complete): (i64, bool) = (row.get(0), row.get(1));
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
            execute(
                &tx,
                "INSERT INTO blob_chunks (sha256, offset_bytes, bytes) VALUES ($1, $2, $3)",
                &[&sha256, &i(offset), &data],
            )
            .await
            .map_err(pg)?;
            execute(
                &tx,
                "UPDATE blobs SET received = $2 WHERE sha256 = $1",
                &[&sha256, &i(end)],
            )
            .await
            .map_err(pg)?;
            Ok(end)
        }
        .await)
    }

    async fn read_blob(&self, sha256: Vec<u8>, offset: u64) -> StoreResult<Vec<u8>> {
        let client = self.client().await?;
        Ok(query_opt(
            &client,
            "SELECT offset_bytes, bytes FROM blob_chunks
             WHERE sha256 = $1 AND offset_bytes <= $2 ORDER BY offset_bytes DESC LIMIT 1",
            &[&sha256, &i(offset)],
        )
        .await?
        .map_or_else(Vec::new, |r| {
            let (start, bytes): (i64, Vec<u8>) = (r.get(0), r.get(1));
            let skip = usize::try_from(offset - u(start)).unwrap_or(usize::MAX);
            bytes.get(skip..).map(<[u8]>::to_vec).unwrap_or_default()
        }))
    }

    async fn reset_blob(&self, sha256: Vec<u8>) -> StoreResult<Option<u64>> {
        transaction!(self, |tx| async {
            execute(&tx, "DELETE FROM blob_chunks WHERE sha256 = $1", &[&sha256])
                .await
                .map_err(pg)?;
            Ok(query_opt(
                &tx,
                "UPDATE blobs SET received = 0, complete = FALSE, epoch = epoch + 1
                 WHERE sha256 = $1 RETURNING epoch",
                &[&sha256],
            )
            .await?
            .map(|r| u(r.get(0))))
        }
        .await)
    }

    async fn finish_blob(&self, sha256: Vec<u8>, epoch: u64, complete: bool) -> StoreResult<bool> {
        transaction!(self, |tx| async {
            if complete {
                let n = execute(
                    &tx,
                    "UPDATE blobs SET complete = TRUE WHERE sha256 = $1 AND epoch = $2
                     AND received = size AND NOT complete",
                    &[&sha256, &i(epoch)],
                )
                .await
                .map_err(pg)?;
                return Ok(n > 0);
            }
            let n = execute(
                &tx,
                "UPDATE blobs SET received = 0, epoch = epoch + 1
                 WHERE sha256 = $1 AND epoch = $2 AND NOT complete AND received = size",
                &[&sha256, &i(epoch)],
            )
            .await
            .map_err(pg)?;
            if n > 0 {
                execute(&tx, "DELETE FROM blob_chunks WHERE sha256 = $1", &[&sha256])
                    .await
                    .map_err(pg)?;
            }
            Ok(n > 0)
        }
        .await)
    }

    async fn publish_endpoint(
        &self,
        device: DeviceId,
        addresses: Vec<String>,
        expires_at_ms: u64,
    ) -> StoreResult<()> {
        let client = self.client().await?;
        execute(
            &client,
            "INSERT INTO endpoints (\"user\", device, addresses, expires_at_ms)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (\"user\", device) DO UPDATE SET addresses = $3, expires_at_ms = $4",
            &[
                &device.user,
                &device.device,
                &addresses.join("\n"),
                &i(expires_at_ms),
            ],
        )
        .await
        .map_err(violation(None, Some(StoreError::NotFound)))?;
        Ok(())
    }

    async fn endpoint(
        &self,
        device: DeviceId,
        now_ms: u64,
    ) -> StoreResult<Option<(Vec<String>, u64)>> {
        let client = self.client().await?;
        Ok(query_opt(
            &client,
            "SELECT addresses, expires_at_ms FROM endpoints
             WHERE \"user\" = $1 AND device = $2 AND expires_at_ms > $3",
            &[&device.user, &device.device, &i(now_ms)],
        )
        .await?
        .map(|r| {
            let addresses: String = r.get(0);
            (addresses.lines().map(str::to_owned).collect(), u(r.get(1)))
        }))
    }

    async fn secret(&self, name: String) -> StoreResult<Option<Vec<u8>>> {
        let client = self.client().await?;
        Ok(query_opt(
            &client,
            "SELECT value FROM server_secrets WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|r| r.get(0)))
    }

    async fn init_secret(&self, name: String, value: Vec<u8>) -> StoreResult<Vec<u8>> {
        let client = self.client().await?;
        execute(
            &client,
            "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&name, &value],
        )
        .await
        .map_err(pg)?;
        // Whichever node inserted first, every node reads the same value.
        query_opt(
            &client,
            "SELECT value FROM server_secrets WHERE name = $1",
            &[&name],
        )
        .await?
        .map(|r| r.get(0))
        .ok_or_else(|| StoreError::backend("server secret vanished"))
    }

    async fn outbox_push(
        &self,
        messages: Vec<OutboxMessage>,
        limits: QueueLimits,
        now_ms: u64,
    ) -> StoreResult<Vec<StoreResult<Enqueued>>> {
        transaction!(self, |tx| async {
            let mut results = Vec::with_capacity(messages.len());
            let mut tally = OutboxTally::default();
            for m in &messages {
                // Checks first, writes last: a refused message wrote nothing.
                if !user_exists_in(&tx, &m.sender.user).await? {
                    results.push(Err(StoreError::NotFound));
                    continue;
                }
                let duplicate = exists(
                    &tx,
                    "SELECT 1 FROM relay_outbox WHERE sender_user = $1 AND sender_device = $2
                     AND destination = $3 AND recipient_user = $4 AND recipient_device = $5
                     AND message_id = $6",
                    &[
                        &m.sender.user,
                        &m.sender.device,
                        &m.destination,
                        &m.recipient.user,
                        &m.recipient.device,
                        &m.message_id,
                    ],
                )
                .await?;
                if duplicate {
                    results.push(Ok(Enqueued::SEEN));
                    continue;
                }
                if tally.needs_destination(m) {
                    let waiting: i64 = query_opt(
                        &tx,
                        "SELECT COUNT(*) FROM relay_outbox WHERE destination = $1",
                        &[&m.destination],
                    )
                    .await?
                    .map_or(0, |r| r.get(0));
                    tally.set_destination(m, u(waiting));
                }
                if tally.needs_sender(m) {
                    let (mine, my_bytes): (i64, i64) = query_opt(
                        &tx,
                        "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0)::BIGINT
                         FROM relay_outbox WHERE destination = $1 AND sender_user = $2",
                        &[&m.destination, &m.sender.user],
                    )
                    .await?
                    .map_or((0, 0), |r| (r.get(0), r.get(1)));
                    tally.set_sender(m, u(mine), u(my_bytes));
                }
                if let Err(refused) = tally.check(m, limits) {
                    results.push(Err(refused));
                    continue;
                }
                let inserted = execute(
                    &tx,
                    "INSERT INTO relay_outbox (destination, sender_user, sender_device,
                         recipient_user, recipient_device, message_id, payload, created_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                    &[
                        &m.destination,
                        &m.sender.user,
                        &m.sender.device,
                        &m.recipient.user,
                        &m.recipient.device,
                        &m.message_id,
                        &m.payload,
                        &i(now_ms),
                    ],
                )
                .await
                .map_err(pg)?;
                if inserted == 0 {
                    results.push(Ok(Enqueued::SEEN));
                    continue;
                }
                execute(
                    &tx,
                    "INSERT INTO contacts (\"user\", peer) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[
                        &m.sender.user,
                        &format!("{}@{}", m.recipient.user, m.destination),
                    ],
                )
                .await
                .map_err(pg)?;
                tally.add(m);
                results.push(Ok(Enqueued::IN_OUTBOX));
            }
            Ok(results)
        }
        .await)
    }

    async fn outbox_hold(&self, ids: Vec<u64>, until_ms: u64) -> StoreResult<()> {
        let ids: Vec<i64> = ids.into_iter().map(i).collect();
        let client = self.client().await?;
        execute(
            &client,
            "UPDATE relay_outbox SET hold_until_ms = $2 WHERE id = ANY($1)",
            &[&ids, &i(until_ms)],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    async fn outbox_due(&self, node: String, now_ms: u64) -> StoreResult<Vec<String>> {
        let client = self.client().await?;
        Ok(query(
            &client,
            "SELECT DISTINCT o.destination FROM relay_outbox o
             LEFT JOIN relay_destinations d ON d.destination = o.destination
             WHERE d.destination IS NULL
                OR (d.next_attempt_ms <= $1 AND (d.lease_owner = $2 OR d.lease_until_ms <= $1))
             ORDER BY o.destination",
            &[&i(now_ms), &node],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }

    async fn outbox_claim(
        &self,
        destination: String,
        node: String,
        now_ms: u64,
        lease_ms: u64,
        limit: u32,
    ) -> StoreResult<Option<(Vec<OutboxRow>, DestinationState)>> {
        transaction!(self, |tx| async {
            execute(
                &tx,
                "INSERT INTO relay_destinations (destination) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&destination],
            )
            .await
            .map_err(pg)?;
            // The destination's row, locked: one node decides about the lease at a time.
            let row = query_opt(
                &tx,
                "SELECT attempts, next_attempt_ms, failing_since_ms, lease_owner, lease_until_ms
                 FROM relay_destinations WHERE destination = $1 FOR UPDATE",
                &[&destination],
            )
            .await?
            .ok_or_else(|| StoreError::backend("relay destination vanished"))?;
            let (attempts, next, failing, owner, until): (i64, i64, i64, String, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            if u(next) > now_ms || (owner != node && u(until) > now_ms) {
                return Ok(None);
            }
            execute(
                &tx,
                "UPDATE relay_destinations SET lease_owner = $2, lease_until_ms = $3
                 WHERE destination = $1",
                &[&destination, &node, &i(now_ms.saturating_add(lease_ms))],
            )
            .await
            .map_err(pg)?;
            let rows = query(
                &tx,
                "SELECT id, sender_user, sender_device, recipient_user, recipient_device,
                     message_id, payload, created_at_ms
                 FROM relay_outbox o WHERE destination = $1
                   AND NOT EXISTS (SELECT 1 FROM relay_outbox h
                                   WHERE h.destination = o.destination
                                     AND h.sender_user = o.sender_user
                                     AND h.recipient_user = o.recipient_user
                                     AND h.recipient_device = o.recipient_device
                                     AND h.id <= o.id AND h.hold_until_ms > $3)
                 ORDER BY id LIMIT $2",
                &[&destination, &i64::from(limit), &i(now_ms)],
            )
            .await?
            .iter()
            .map(|r| OutboxRow {
                id: u(r.get(0)),
                message: OutboxMessage {
                    destination: destination.clone(),
                    sender: DeviceId::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                    recipient: DeviceId::new(r.get::<_, String>(3), r.get::<_, String>(4)),
                    message_id: r.get(5),
                    payload: r.get(6),
                },
                created_at_ms: u(r.get(7)),
            })
            .collect();
            let state = DestinationState {
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                failing_since_ms: u(failing),
            };
            Ok(Some((rows, state)))
        }
        .await)
    }

    async fn outbox_sent(&self, destination: String, ids: Vec<u64>) -> StoreResult<()> {
        let ids: Vec<i64> = ids.into_iter().map(i).collect();
        transaction!(self, |tx| async {
            execute(
                &tx,
                "DELETE FROM relay_outbox WHERE destination = $1 AND id = ANY($2)",
                &[&destination, &ids],
            )
            .await
            .map_err(pg)?;
            execute(
                &tx,
                "UPDATE relay_destinations SET attempts = 0, next_attempt_ms = 0,
                     failing_since_ms = 0 WHERE destination = $1",
                &[&destination],
            )
            .await
            .map_err(pg)?;
            Ok(())
        }
        .await)
    }

    async fn outbox_retry_later(
        &self,
        destination: String,
        next_attempt_ms: u64,
        now_ms: u64,
    ) -> StoreResult<()> {
        let client = self.client().await?;
        execute(
            &client,
            "UPDATE relay_destinations SET attempts = attempts + 1, next_attempt_ms = $2,
                 failing_since_ms = CASE WHEN failing_since_ms = 0 THEN $3
                                         ELSE failing_since_ms END,
                 lease_owner = '', lease_until_ms = 0
             WHERE destination = $1",
            &[&destination, &i(next_attempt_ms), &i(now_ms)],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    async fn outbox_wake(&self, destination: String) -> StoreResult<()> {
        let client = self.client().await?;
        execute(
            &client,
            "UPDATE relay_destinations SET next_attempt_ms = 0 WHERE destination = $1",
            &[&destination],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    async fn outbox_fail(
        &self,
        ids: Vec<u64>,
        reason: String,
        retryable: bool,
        now_ms: u64,
    ) -> StoreResult<Vec<(String, u64)>> {
        let ids: Vec<i64> = ids.into_iter().map(i).collect();
        transaction!(self, |tx| async {
            Ok(query(
                &tx,
                "WITH gone AS (
                     DELETE FROM relay_outbox WHERE id = ANY($1)
                     RETURNING id, sender_user, message_id, recipient_user, recipient_device,
                         destination
                 )
                 INSERT INTO relay_failures (sender_user, message_id, recipient_user,
                     recipient_device, reason, retryable, failed_at_ms)
                 SELECT sender_user, message_id, recipient_user || '@' || destination,
                     recipient_device, $2, $3, $4
                 FROM gone ORDER BY id
                 RETURNING sender_user, id",
                &[&ids, &reason, &retryable, &i(now_ms)],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), u(r.get(1))))
            .collect())
        }
        .await)
    }

    async fn relay_failures(
        &self,
        user: String,
        after_id: u64,
        limit: u32,
    ) -> StoreResult<Vec<RelayFailureRow>> {
        let client = self.client().await?;
        Ok(query(
            &client,
            "SELECT id, message_id, recipient_user, recipient_device, reason, retryable,
                 failed_at_ms
             FROM relay_failures WHERE sender_user = $1 AND id > $2 ORDER BY id LIMIT $3",
            &[&user, &i(after_id), &i64::from(limit)],
        )
        .await?
        .iter()
        .map(|r| RelayFailureRow {
            id: u(r.get(0)),
            sender_user: user.clone(),
            message_id: r.get(1),
            recipient: DeviceId::new(r.get::<_, String>(2), r.get::<_, String>(3)),
            reason: r.get(4),
            retryable: r.get(5),
            failed_at_ms: u(r.get(6)),
        })
        .collect())
    }

    async fn relay_accept(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
        now_ms: u64,
        seen_until_ms: u64,
    ) -> StoreResult<Vec<StoreResult<Enqueued>>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        transaction!(self, |tx| async {
            // Every recipient queue locked up front (as batch_enqueue does): two relays of
            // one message wait on each other, and the second sees the first.
            lock_recipients(&tx, &messages).await?;
            let mut results = Vec::with_capacity(messages.len());
            // A sender refused for room in a queue: its later messages to that queue wait
            // behind the refused one.
            let mut stopped: std::collections::HashMap<(String, DeviceId), StoreError> =
                Default::default();
            for m in &messages {
                let key = (m.quota_key().to_owned(), m.recipient.clone());
                if let Some(refusal) = stopped.get(&key) {
                    results.push(Err(refusal.clone()));
                    continue;
                }
                let seen = exists(
                    &tx,
                    "SELECT 1 FROM relay_seen WHERE sender = $1 AND recipient_user = $2
                     AND recipient_device = $3 AND message_id = $4",
                    &[
                        &m.sender,
                        &m.recipient.user,
                        &m.recipient.device,
                        &m.message_id,
                    ],
                )
                .await?;
                if seen {
                    results.push(Ok(Enqueued::SEEN));
                    continue;
                }
                match enqueue_one(&tx, m, limits, now_ms).await {
                    Err(StoreError::Backend(e)) => return Err(StoreError::Backend(e)),
                    Ok(done) => {
                        execute(
                            &tx,
                            "INSERT INTO relay_seen (sender, recipient_user, recipient_device,
                                 message_id, expires_at_ms) VALUES ($1, $2, $3, $4, $5)",
                            &[
                                &m.sender,
                                &m.recipient.user,
                                &m.recipient.device,
                                &m.message_id,
                                &i(seen_until_ms),
                            ],
                        )
                        .await
                        .map_err(pg)?;
                        results.push(Ok(done));
                    }
                    Err(other) => {
                        if matches!(
                            other,
                            StoreError::QueueFull | StoreError::SenderQuota { .. }
                        ) {
                            stopped.insert(key, other.clone());
                        }
                        results.push(Err(other));
                    }
                }
            }
            Ok(results)
        }
        .await)
    }

    async fn witnessed_head(&self, domain: String) -> StoreResult<Option<WitnessedHead>> {
        let client = self.client().await?;
        Ok(query_opt(
            &client,
            "SELECT log_key, tree_size, head FROM witnessed_heads WHERE domain = $1",
            &[&domain],
        )
        .await?
        .map(|r| WitnessedHead {
            log_key: r.get(0),
            tree_size: u(r.get(1)),
            head: r.get(2),
        }))
    }

    async fn witness_head(
        &self,
        domain: String,
        previous_size: Option<u64>,
        head: WitnessedHead,
    ) -> StoreResult<bool> {
        let client = self.client().await?;
        let changed = match previous_size {
            None => {
                execute(
                    &client,
                    "INSERT INTO witnessed_heads (domain, log_key, tree_size, head)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&domain, &head.log_key, &i(head.tree_size), &head.head],
                )
                .await
            }
            Some(size) => {
                execute(
                    &client,
                    "UPDATE witnessed_heads SET tree_size = $3, head = $4
                 WHERE domain = $1 AND tree_size = $2 AND log_key = $5",
                    &[
                        &domain,
                        &i(size),
                        &i(head.tree_size),
                        &head.head,
                        &head.log_key,
                    ],
                )
                .await
            }
        }
        .map_err(pg)?;
        Ok(changed == 1)
    }
}

/// A fresh database on the PostgreSQL server named by `QPQ_TEST_POSTGRES_URL`, dropped
/// (with every connection to it) when this is dropped.
#[cfg(any(test, feature = "testing"))]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    /// The new database's URL.
    pub url: String,
}

#[cfg(any(test, feature = "testing"))]
impl TestDatabase {
    /// Creates one, or `None` (with a line on stderr) when `QPQ_TEST_POSTGRES_URL` is unset.
    pub async fn create() -> Option<Self> {
        let Ok(admin_url) = std::env::var("QPQ_TEST_POSTGRES_URL") else {
            eprintln!("QPQ_TEST_POSTGRES_URL is unset: skipping a PostgreSQL test");
            return None;
        };
        let name = format!("qpq_test_{:016x}", rand::random::<u64>());
        let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("QPQ_TEST_POSTGRES_URL does not answer: {e}"));
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("creating the test database: {e}"));
        drop(client);
        let _ = driver.await;
        let mut config: tokio_postgres::Config = admin_url
            .parse()
            .unwrap_or_else(|e| panic!("QPQ_TEST_POSTGRES_URL: {e}"));
        config.dbname(&name);
        let url = config_url(&config);
        Some(Self {
            admin_url,
            name,
            url,
        })
    }
}

/// `config` back as a key=value connection string (what `tokio_postgres::Config` parses).
#[cfg(any(test, feature = "testing"))]
fn config_url(config: &tokio_postgres::Config) -> String {
    let mut parts = Vec::new();
    if let Some(user) = config.get_user() {
        parts.push(format!("user={user}"));
    }
    if let Some(tokio_postgres::config::Host::Tcp(host)) = config.get_hosts().first() {
        parts.push(format!("host={host}"));
    }
    if let Some(port) = config.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!("password={}", String::from_utf8_lossy(password)));
    }
    if let Some(db) = config.get_dbname() {
        parts.push(format!("dbname={db}"));
    }
    parts.join(" ")
}

#[cfg(any(test, feature = "testing"))]
impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs outside any runtime's reach: a thread with its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
                        .await
                        .ok()?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn fresh() -> Option<(TestDatabase, PostgresStore)> {
        let db = TestDatabase::create().await?;
        let store = PostgresStore::open(&db.url, 4).await.unwrap();
        Some((db, store))
    }

    crate::store::conformance::store_conformance!(conformance, super::fresh);

    #[tokio::test]
    async fn migrations_run_once_even_when_nodes_start_together() {
        let Some(db) = TestDatabase::create().await else {
            return;
        };
        let (a, b) = tokio::join!(
            PostgresStore::open(&db.url, 2),
            PostgresStore::open(&db.url, 2)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.schema_version().await.unwrap(), MIGRATIONS.len() as u32);
        a.create_user("alice".into(), vec![9], 1).await.unwrap();
        drop(a);
        let c = PostgresStore::open(&db.url, 2).await.unwrap();
        assert_eq!(c.schema_version().await.unwrap(), MIGRATIONS.len() as u32);
        assert_eq!(
            c.password_file("alice".into()).await.unwrap(),
            Some(vec![9])
        );
        drop(b);
    }

    #[tokio::test]
    async fn an_unreachable_database_is_a_clear_error() {
        // Nothing listens on port 1.
        let err = PostgresStore::open("postgres://postgres@127.0.0.1:1/none", 2)
            .await
            .unwrap_err();
        let shown = format!("{err}: {:?}", std::error::Error::source(&err));
        assert!(shown.contains("storage failure"), "{shown}");
    }
}
