//! [`SqlStore`]: the SQLCipher store (one encrypted database per account and device).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

use qpq_core::mls::MlsMember;

use super::{
    Delivery, Effect, Parked, Store, StoreKey, StoredAccount, Tx, now_ms, state_from, state_name,
};
use crate::error::{SdkError, SdkResult};
use crate::model::{Conversation, ConversationId, ConversationKind, Message, MessageId, SendState};

const SALT_FILE: &str = "store.salt";

/// The passphrase's key derivation: Argon2id with these costs (RFC 9106's second
/// recommendation: 64 MiB, three passes), recorded beside the salt so later versions can
/// raise them for new stores and still open old ones.
const KDF_MEMORY_KIB: u32 = 64 * 1024;
const KDF_PASSES: u32 = 3;
const KDF_LANES: u32 = 1;
/// The salt file: `"qpq-kdf1" || memory_kib_be32 || passes_be32 || lanes_be32 || salt(16)`.
/// A bare 16-byte salt is a store made before the costs were recorded (Argon2's defaults:
/// 19 MiB, two passes, one lane).
const KDF_MAGIC: &[u8; 8] = b"qpq-kdf1";
const KDF_FILE_LEN: usize = 8 + 12 + 16;

/// Argon2id costs and salt of one store.
struct KdfParams {
    memory_kib: u32,
    passes: u32,
    lanes: u32,
    salt: [u8; 16],
}

impl KdfParams {
    fn decode(bytes: &[u8]) -> Option<Self> {
        let be = |b: &[u8]| <[u8; 4]>::try_from(b).ok().map(u32::from_be_bytes);
        match bytes.len() {
            16 => Some(Self {
                memory_kib: 19 * 1024,
                passes: 2,
                lanes: 1,
                salt: bytes.try_into().ok()?,
            }),
            KDF_FILE_LEN if bytes.starts_with(KDF_MAGIC) => Some(Self {
                memory_kib: be(&bytes[8..12])?,
                passes: be(&bytes[12..16])?,
                lanes: be(&bytes[16..20])?,
                salt: bytes[20..].try_into().ok()?,
            })
            // Costs outside these bounds are no store this code wrote: refused, so a rewritten
            // file can neither exhaust memory nor weaken the derivation.
            .filter(|p| {
                (8 * 1024..=1024 * 1024).contains(&p.memory_kib)
                    && (1..=10).contains(&p.passes)
                    && (1..=4).contains(&p.lanes)
            }),
            _ => None,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(KDF_FILE_LEN);
        out.extend_from_slice(KDF_MAGIC);
        for n in [self.memory_kib, self.passes, self.lanes] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&self.salt);
        out
    }
}
const DB_FILE: &str = "qpq-client.db";

impl StoreKey {
    /// The 32-byte database key for the store in `dir` (creating its salt on first use).
    pub(super) fn derive(&self, dir: &Path) -> SdkResult<Zeroizing<[u8; 32]>> {
        match self {
            Self::Raw(key) => Ok(key.clone()),
            Self::Passphrase(passphrase) => {
                let salt_path = dir.join(SALT_FILE);
                // A new store gets fresh costs and salt, whatever file was left where its salt
                // goes (one planted there must not choose them).
                let fresh = !dir.join(DB_FILE).exists();
                let existing = if fresh {
                    Err(std::io::Error::from(std::io::ErrorKind::NotFound))
                } else {
                    std::fs::read(&salt_path)
                };
                let params = match existing {
                    Ok(bytes) => KdfParams::decode(&bytes).ok_or_else(|| {
                        SdkError::Store(format!("{} is corrupt", salt_path.display()))
                    })?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let params = KdfParams {
                            memory_kib: KDF_MEMORY_KIB,
                            passes: KDF_PASSES,
                            lanes: KDF_LANES,
                            salt: rand::random(),
                        };
                        qpq_core::files::write_private(&salt_path, &params.encode())?;
                        params
                    }
                    Err(e) => return Err(e.into()),
                };
                use opaque_ke::argon2::{Algorithm, Argon2, Params, Version};
                let costs = Params::new(params.memory_kib, params.passes, params.lanes, Some(32))
                    .map_err(|e| SdkError::Store(format!("key derivation costs: {e}")))?;
                let mut key = Zeroizing::new([0u8; 32]);
                Argon2::new(Algorithm::Argon2id, Version::V0x13, costs)
                    .hash_password_into(passphrase.as_bytes(), &params.salt, key.as_mut())
                    .map_err(|e| SdkError::Store(format!("key derivation: {e}")))?;
                Ok(key)
            }
        }
    }
}

/// `PRAGMA key = "x'<64 hex digits>'";`
const KEY_STATEMENT_LEN: usize = 16 + 64 + 3;

/// Opens a connection to the encrypted database and checks the key.
fn open_keyed(path: &Path, key: &[u8; 32]) -> SdkResult<Connection> {
    let conn = Connection::open(path)?;
    // SQLCipher locks and wipes its own key material whatever this says; `ON` would also lock
    // and wipe every page-cache and statement allocation of SQLite, which costs a third of the
    // time of receiving a message (an `mlock` and a `memset` per allocation) and protects
    // plaintext the client holds unwiped in its `Message` values anyway. SQLCipher's default,
    // stated so that it is a decision.
    let _ = conn
        .prepare_cached("PRAGMA cipher_memory_security = OFF")?
        .query_row([], |_| Ok(()));
    // The statement holds the key: built in one allocation that never grows, wiped after.
    let mut statement = Zeroizing::new(String::with_capacity(KEY_STATEMENT_LEN));
    statement.push_str("PRAGMA key = \"x'");
    for b in key {
        for digit in [b >> 4, b & 0x0f] {
            statement.push(char::from_digit(u32::from(digit), 16).unwrap_or('0'));
        }
    }
    statement.push_str("'\";");
    debug_assert_eq!(statement.len(), KEY_STATEMENT_LEN, "the key statement grew");
    conn.execute_batch(statement.as_str())?;
    // SQLCipher would log a wrong key's failed page check to stderr; the error below says it.
    // (Set after the key: keying sets SQLCipher's default log level the first time.)
    let _ = conn
        .prepare_cached("PRAGMA cipher_log_level = NONE")?
        .query_row([], |_| Ok(()));
    // With a wrong key the first read fails: SQLCipher cannot decrypt page 1.
    if conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .is_err()
    {
        return Err(SdkError::WrongStoreKey);
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Every statement the store runs stays prepared (they are fewer than this).
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE account (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    user            TEXT NOT NULL,
    device          TEXT NOT NULL,
    identity_secret BLOB NOT NULL,
    hybrid_seed     BLOB NOT NULL,
    delivery_token  BLOB NOT NULL,
    session_token   BLOB,
    cursor          INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE conversations (
    id            BLOB PRIMARY KEY,
    kind          INTEGER NOT NULL,
    name          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE members (
    conversation BLOB NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    user         TEXT NOT NULL,
    PRIMARY KEY (conversation, user)
);
CREATE TABLE messages (
    id             BLOB PRIMARY KEY,
    conversation   BLOB NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    sender         TEXT NOT NULL,
    body           TEXT NOT NULL,
    reply_to       BLOB,
    sent_at_ms     INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    outgoing       INTEGER NOT NULL,
    state          TEXT NOT NULL,
    state_reason   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX messages_by_conversation ON messages(conversation, received_at_ms);
-- What must still reach each device: one row per (outbox item, device). `transport` is the
-- encoded Transport, sealed afresh at every attempt; `message_id` is fixed, so the server
-- stores a retried delivery once.
CREATE TABLE deliveries (
    item       BLOB NOT NULL,
    user       TEXT NOT NULL,
    device     TEXT NOT NULL,
    message_id BLOB NOT NULL,
    transport  BLOB NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (item, user, device)
);
",
    "
ALTER TABLE messages ADD COLUMN edited INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
CREATE TABLE reactions (
    message BLOB NOT NULL,
    user    TEXT NOT NULL,
    emoji   TEXT NOT NULL,
    PRIMARY KEY (message, user, emoji)
);
CREATE TABLE receipts (
    message    BLOB NOT NULL,
    user       TEXT NOT NULL,
    read_at_ms INTEGER NOT NULL,
    PRIMARY KEY (message, user)
);
",
    "
-- The encoded qpq.v1.Attachment (with its key) of an attachment message.
ALTER TABLE messages ADD COLUMN attachment BLOB;
",
    "
-- Full-text index of message text, inside the encrypted database like everything else.
CREATE VIRTUAL TABLE messages_fts USING fts5(body, content = 'messages', content_rowid = 'rowid');
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.rowid, new.body);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.rowid, old.body);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.rowid, old.body);
    INSERT INTO messages_fts (rowid, body) VALUES (new.rowid, new.body);
END;
INSERT INTO messages_fts (rowid, body) SELECT rowid, body FROM messages;
",
    "
-- Whether the key bundle is on the server, and how many one-time key packages are believed
-- to be there (corrected by the server's answer at every upload).
ALTER TABLE account ADD COLUMN keys_published INTEGER NOT NULL DEFAULT 0;
ALTER TABLE account ADD COLUMN key_packages INTEGER NOT NULL DEFAULT 0;
",
    "
-- The server channel a conversation's members share (typing notifications).
ALTER TABLE conversations ADD COLUMN channel BLOB;
CREATE INDEX conversations_by_channel ON conversations(channel);
",
    "
-- The key-transparency log key (pinned on first use) and the last head verified.
CREATE TABLE kt (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    log_key BLOB NOT NULL,
    head    BLOB NOT NULL
);
",
    "
-- Group messages from an epoch this device has not reached (their commit is still on its
-- way), kept until it gets there; `seq` is the queue entry they came in.
CREATE TABLE parked (
    seq          INTEGER PRIMARY KEY,
    conversation BLOB NOT NULL,
    epoch        INTEGER NOT NULL,
    mls          BLOB NOT NULL
);
CREATE INDEX parked_by_conversation ON parked(conversation, epoch, seq);
-- The identity key of every other device whose keys this device has used: a change, or a new
-- device of a known user, changes the safety number.
CREATE TABLE peer_identities (
    user     TEXT NOT NULL,
    device   TEXT NOT NULL,
    identity BLOB NOT NULL,
    PRIMARY KEY (user, device)
);
-- Whether some device's queue took an outgoing message (it can then no longer be cancelled).
ALTER TABLE messages ADD COLUMN accepted INTEGER NOT NULL DEFAULT 0;
",
    "
-- The identity that sealed a parked message: checked against its MLS sender when it is
-- processed, and the parking budget is counted per sender.
ALTER TABLE parked ADD COLUMN sender BLOB NOT NULL DEFAULT x'';
CREATE INDEX parked_by_sender ON parked(sender);
-- When it was parked: parked messages expire.
ALTER TABLE parked ADD COLUMN parked_at_ms INTEGER NOT NULL DEFAULT 0;
-- A delivery that failed waits until then, so the ones to other devices are not held up
-- (those behind it to the same device wait with it: their order is kept).
ALTER TABLE deliveries ADD COLUMN not_before_ms INTEGER NOT NULL DEFAULT 0;
CREATE INDEX deliveries_by_device ON deliveries(user, device);
-- Invitations from users this one has no conversation with (message requests): the
-- conversation is kept out of the list until the user accepts it, or deleted if it declines.
CREATE TABLE requests (
    conversation BLOB PRIMARY KEY REFERENCES conversations(id) ON DELETE CASCADE,
    inviter      TEXT NOT NULL
);
-- Joined conversations whose server channel invitation is still to be accepted there; the
-- conversations from before channel invitations had to be answered are answered once.
CREATE TABLE channel_answers (
    conversation BLOB PRIMARY KEY REFERENCES conversations(id) ON DELETE CASCADE,
    channel      BLOB NOT NULL
);
INSERT OR IGNORE INTO channel_answers (conversation, channel)
    SELECT id, channel FROM conversations WHERE channel IS NOT NULL;
",
    "
-- The key-transparency logs of other servers (federation): each log key pinned on first
-- use, and the last head verified (with the home server's witness cosignature).
CREATE TABLE peer_kt (
    domain  TEXT PRIMARY KEY,
    log_key BLOB NOT NULL,
    head    BLOB NOT NULL
);
",
    "
-- Deliveries to users of other servers, to match the relay failures the home server reports
-- (by wire id) to their messages; and the last failure applied.
CREATE TABLE relayed (
    delivery_id BLOB PRIMARY KEY,
    item        BLOB NOT NULL,
    at_ms       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX relayed_by_age ON relayed(at_ms);
CREATE TABLE relay_failures_seen (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    after_id INTEGER NOT NULL
);
",
];

/// Applies the effect of queue entry `seq` and advances the cursor to it, inside the caller's
/// transaction on `conn` (which also holds the MLS work that produced the effect). Returns
/// whether the effect changed anything (a repeat or a forbidden edit does not).
fn commit_incoming_on(conn: &Connection, seq: u64, effect: &Effect) -> SdkResult<bool> {
    let changed = apply_effect(conn, effect)?;
    conn.prepare_cached("UPDATE account SET cursor = MAX(cursor, ?1) WHERE id = 1")?
        .execute([i64::try_from(seq).unwrap_or(i64::MAX)])?;
    Ok(changed)
}

/// Queues an outgoing message (its local echo and one delivery per recipient device) inside
/// the caller's transaction on `conn`, with the MLS work that encrypted it.
fn queue_outgoing_on(
    conn: &Connection,
    echo: Option<&Message>,
    deliveries: &[Delivery],
) -> SdkResult<()> {
    if let Some(m) = echo {
        insert_message(conn, m)?;
    }
    for d in deliveries {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO deliveries (item, user, device, message_id, transport)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            d.item.0.as_slice(),
            d.user,
            d.device,
            d.message_id.as_slice(),
            d.transport
        ])?;
    }
    Ok(())
}

/// Messages parked for `conversation`, oldest first.
fn parked_on(conn: &Connection, conversation: &ConversationId) -> SdkResult<Vec<Parked>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, mls, sender FROM parked WHERE conversation = ?1 ORDER BY epoch, seq",
    )?;
    let rows = stmt.query_map([conversation.0.as_slice()], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    rows.map(|row| {
        let (seq, mls, sender) = row?;
        Ok(Parked {
            seq: u64::try_from(seq).unwrap_or(0),
            conversation: *conversation,
            sender,
            mls,
        })
    })
    .collect()
}

/// How many messages are parked for `conversation`.
fn parked_count_on(conn: &Connection, conversation: &ConversationId) -> SdkResult<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM parked WHERE conversation = ?1")?
        .query_row([conversation.0.as_slice()], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// How many messages are parked in all.
fn parked_total_on(conn: &Connection) -> SdkResult<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM parked")?
        .query_row([], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// How many messages sealed by `sender` are parked.
fn parked_from_on(conn: &Connection, sender: &[u8]) -> SdkResult<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM parked WHERE sender = ?1")?
        .query_row([sender], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Forgets a parked message (processed, or given up on).
fn unpark_on(conn: &Connection, seq: u64) -> SdkResult<()> {
    conn.prepare_cached("DELETE FROM parked WHERE seq = ?1")?
        .execute([i64::try_from(seq).unwrap_or(i64::MAX)])?;
    Ok(())
}

/// Applies a local action's effect inside the caller's transaction on `conn`.
fn apply_on(conn: &Connection, effect: &Effect) -> SdkResult<bool> {
    apply_effect(conn, effect)
}

/// A conversation as stored, read on `conn`.
fn channel_on(conn: &Connection, id: &ConversationId) -> SdkResult<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT channel FROM conversations WHERE id = ?1")?
        .query_row([id.0.as_slice()], |r| r.get::<_, Option<Vec<u8>>>(0))
        .optional()?
        .flatten())
}

fn conversation_of_channel_on(
    conn: &Connection,
    channel: &[u8],
) -> SdkResult<Option<ConversationId>> {
    conn.prepare_cached("SELECT id FROM conversations WHERE channel = ?1")?
        .query_row([channel], |r| r.get::<_, Vec<u8>>(0))
        .optional()?
        .map(|id| array(id, "conversation id").map(ConversationId))
        .transpose()
}

fn is_request_on(conn: &Connection, id: &ConversationId) -> SdkResult<bool> {
    Ok(conn
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM requests WHERE conversation = ?1)")?
        .query_row([id.0.as_slice()], |r| r.get(0))?)
}

fn identity_on(conn: &Connection, user: &str, device: &str) -> SdkResult<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT identity FROM peer_identities WHERE user = ?1 AND device = ?2")?
        .query_row(params![user, device], |r| r.get(0))
        .optional()?)
}

fn conversation_on(conn: &Connection, id: &ConversationId) -> SdkResult<Option<Conversation>> {
    load_conversation(conn, id)
}

/// The encrypted local store.
pub(crate) struct SqlStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn array<const N: usize>(v: Vec<u8>, what: &str) -> SdkResult<[u8; N]> {
    v.try_into()
        .map_err(|_| SdkError::Store(format!("corrupt {what}")))
}

/// The file a store holds locked while it is open.
const LOCK_FILE: &str = "lock";

/// Locks the data directory `dir` for one client, or fails with [`SdkError::DataDirInUse`]
/// when another client holds it: two clients on one directory would each receive and
/// acknowledge part of the messages and diverge. The lock lasts as long as the returned file
/// is open; the operating system releases it when its holder exits, also after a crash, so
/// a stale lock file never keeps a user out.
pub(crate) fn lock_dir(dir: &Path) -> SdkResult<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    qpq_core::files::private_file(&path)?;
    let file = std::fs::OpenOptions::new().append(true).open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SdkError::DataDirInUse(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(SdkError::Io(e)),
    }
}

impl SqlStore {
    /// Opens (creating if needed) the store in `dir`. Works offline. A wrong key is
    /// [`SdkError::WrongStoreKey`].
    pub(crate) fn open(dir: &Path, key: &StoreKey) -> SdkResult<Self> {
        qpq_core::files::private_dir(dir)?;
        let key = key.derive(dir)?;
        let path = dir.join(DB_FILE);
        qpq_core::files::private_file(&path)?;
        let mut conn = open_keyed(&path, &key)?;
        let version: usize = conn
            .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))?
            .try_into()
            .unwrap_or(0);
        for (n, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", n + 1)?;
            tx.commit()?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
            path,
            key,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // Every critical section is one statement or one transaction; a panic mid-way rolls
        // the transaction back, so the connection stays usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Statements inside one transaction of the caller's (on the MLS connection when MLS work is
/// part of it).
struct SqlTx<'a>(&'a Connection);

impl Tx for SqlTx<'_> {
    fn commit_incoming(&mut self, seq: u64, effect: &Effect) -> SdkResult<bool> {
        commit_incoming_on(self.0, seq, effect)
    }

    fn apply(&mut self, effect: &Effect) -> SdkResult<bool> {
        apply_on(self.0, effect)
    }

    fn queue_outgoing(&mut self, echo: Option<&Message>, deliveries: &[Delivery]) -> SdkResult<()> {
        queue_outgoing_on(self.0, echo, deliveries)
    }

    fn parked_count(&mut self, conversation: &ConversationId) -> SdkResult<u64> {
        parked_count_on(self.0, conversation)
    }

    fn parked_from(&mut self, sender: &[u8]) -> SdkResult<u64> {
        parked_from_on(self.0, sender)
    }

    fn parked_total(&mut self) -> SdkResult<u64> {
        parked_total_on(self.0)
    }

    fn knows(&mut self, user: &str, me: &str) -> SdkResult<bool> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM members m JOIN members mine
                                 ON mine.conversation = m.conversation AND mine.user = ?2
                               WHERE m.user = ?1
                                 AND m.conversation NOT IN (SELECT conversation FROM requests))",
            )?
            .query_row(params![user, me], |r| r.get(0))?)
    }

    fn channel_user(&mut self, channel: &[u8]) -> SdkResult<Option<ConversationId>> {
        conversation_of_channel_on(self.0, channel)
    }

    fn channel_of(&mut self, id: &ConversationId) -> SdkResult<Option<Vec<u8>>> {
        channel_on(self.0, id)
    }

    fn in_request(&mut self, id: &ConversationId) -> SdkResult<bool> {
        is_request_on(self.0, id)
    }

    fn unpark(&mut self, seq: u64) -> SdkResult<()> {
        unpark_on(self.0, seq)
    }

    fn conversation(&mut self, id: &ConversationId) -> SdkResult<Option<Conversation>> {
        conversation_on(self.0, id)
    }

    fn identity(&mut self, user: &str, device: &str) -> SdkResult<Option<Vec<u8>>> {
        identity_on(self.0, user, device)
    }
}

impl Store for SqlStore {
    /// A second connection to the same database: the MLS state lives beside the rest.
    fn mls_connection(&self) -> SdkResult<Connection> {
        open_keyed(&self.path, &self.key)
    }

    fn transact_dyn(
        &self,
        mls: Option<&MlsMember>,
        f: &mut dyn FnMut(&mut dyn Tx) -> SdkResult<()>,
    ) -> SdkResult<()> {
        match mls {
            // The member's connection carries the MLS writes: the store's go there too.
            Some(mls) => mls.atomically(|conn| f(&mut SqlTx(conn))),
            None => {
                let mut conn = self.lock();
                let tx = conn.transaction()?;
                f(&mut SqlTx(&tx))?;
                tx.commit()?;
                Ok(())
            }
        }
    }

    fn account(&self) -> SdkResult<Option<StoredAccount>> {
        let conn = self.lock();
        let row = conn
            .query_row(
                "SELECT user, device, identity_secret, hybrid_seed, delivery_token, session_token
                 FROM account WHERE id = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                        r.get::<_, Option<Vec<u8>>>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((user, device, identity, hybrid, token, session)) = row else {
            return Ok(None);
        };
        Ok(Some(StoredAccount {
            user,
            device,
            identity_secret: Zeroizing::new(array(identity, "identity key")?),
            hybrid_seed: Zeroizing::new(array(hybrid, "hybrid key")?),
            delivery_token: Zeroizing::new(array(token, "delivery token")?),
            session_token: session.map(Zeroizing::new),
        }))
    }

    fn create_account(&self, a: &StoredAccount) -> SdkResult<()> {
        self.lock().execute(
            "INSERT INTO account (id, user, device, identity_secret, hybrid_seed, delivery_token)
             VALUES (1, ?1, ?2, ?3, ?4, ?5)",
            params![
                a.user,
                a.device,
                a.identity_secret.as_slice(),
                a.hybrid_seed.as_slice(),
                a.delivery_token.as_slice()
            ],
        )?;
        Ok(())
    }

    fn set_session_token(&self, token: Option<&[u8]>) -> SdkResult<()> {
        self.lock().execute(
            "UPDATE account SET session_token = ?1 WHERE id = 1",
            [token],
        )?;
        Ok(())
    }

    fn keys_published(&self) -> SdkResult<bool> {
        Ok(self
            .lock()
            .query_row("SELECT keys_published FROM account WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(false))
    }

    fn set_keys_published(&self) -> SdkResult<()> {
        self.lock()
            .execute("UPDATE account SET keys_published = 1 WHERE id = 1", [])?;
        Ok(())
    }

    /// One-time key packages believed to be on the server.
    fn key_packages(&self) -> SdkResult<u64> {
        let n: Option<i64> = self
            .lock()
            .query_row("SELECT key_packages FROM account WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    fn set_key_packages(&self, n: u64) -> SdkResult<()> {
        self.lock().execute(
            "UPDATE account SET key_packages = ?1 WHERE id = 1",
            [i64::try_from(n).unwrap_or(i64::MAX)],
        )?;
        Ok(())
    }

    /// Counts one key package as used (an invitation was accepted).
    fn key_package_used(&self) -> SdkResult<()> {
        self.lock().execute(
            "UPDATE account SET key_packages = MAX(key_packages - 1, 0) WHERE id = 1",
            [],
        )?;
        Ok(())
    }

    /// The pinned key-transparency log key and the last verified head.
    fn kt(&self) -> SdkResult<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .lock()
            .query_row("SELECT log_key, head FROM kt WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    /// Records a newly verified head (and pins the log key on first use).
    fn set_kt(&self, log_key: &[u8], head: &[u8]) -> SdkResult<()> {
        self.lock().execute(
            "INSERT INTO kt (id, log_key, head) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET head = ?2",
            params![log_key, head],
        )?;
        Ok(())
    }

    fn peer_kt(&self, domain: &str) -> SdkResult<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT log_key, head FROM peer_kt WHERE domain = ?1",
                [domain],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    fn set_peer_kt(&self, domain: &str, log_key: &[u8], head: &[u8]) -> SdkResult<()> {
        self.lock().execute(
            "INSERT INTO peer_kt (domain, log_key, head) VALUES (?1, ?2, ?3)
             ON CONFLICT (domain) DO UPDATE SET head = ?3",
            params![domain, log_key, head],
        )?;
        Ok(())
    }

    /// The server channel of a conversation, if it has one.
    fn channel(&self, conversation: &ConversationId) -> SdkResult<Option<Vec<u8>>> {
        channel_on(&self.lock(), conversation)
    }

    /// The conversation using a server channel.
    fn conversation_of_channel(&self, channel: &[u8]) -> SdkResult<Option<ConversationId>> {
        conversation_of_channel_on(&self.lock(), channel)
    }

    /// The last queue sequence number whose effects are committed here.
    fn cursor(&self) -> SdkResult<u64> {
        let conn = self.lock();
        let cursor: Option<i64> = conn
            .query_row("SELECT cursor FROM account WHERE id = 1", [], |r| r.get(0))
            .optional()?;
        Ok(cursor.map_or(0, |c| u64::try_from(c).unwrap_or(0)))
    }

    /// The encoded attachment (with its key) of a message.
    fn attachment(&self, id: &MessageId) -> SdkResult<Option<Vec<u8>>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT attachment FROM messages WHERE id = ?1 AND deleted = 0",
                [id.0.as_slice()],
                |r| r.get::<_, Option<Vec<u8>>>(0),
            )
            .optional()?
            .flatten())
    }

    /// Messages whose text contains every word of `query` (full-text, case-insensitive),
    /// best matches first, at most `limit`. Deleted messages are not found.
    fn search(&self, query: &str, limit: u32) -> SdkResult<Vec<Message>> {
        // Each word becomes a quoted FTS5 string, so no input is a syntax error.
        let terms: Vec<String> = query
            .split_whitespace()
            .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
            .collect();
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let hits: Vec<(Vec<u8>, Vec<u8>)> = {
            let conn = self.lock();
            let mut stmt = conn.prepare_cached(
                "SELECT m.id, m.conversation FROM messages_fts
                 JOIN messages m ON m.rowid = messages_fts.rowid
                 WHERE messages_fts MATCH ?1 AND m.deleted = 0
                 ORDER BY rank LIMIT ?2",
            )?;
            stmt.query_map(params![terms.join(" "), limit], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?
        };
        let conn = self.lock();
        let mut out = Vec::with_capacity(hits.len());
        for (id, conversation) in hits {
            let id = MessageId(array(id, "message id")?);
            let conversation = ConversationId(array(conversation, "conversation id")?);
            out.extend(load_messages(&conn, &conversation, Some(&id), None, 1)?);
        }
        Ok(out)
    }

    /// One message.
    fn message(&self, id: &MessageId) -> SdkResult<Option<Message>> {
        let conn = self.lock();
        let conversation: Option<Vec<u8>> = conn
            .query_row(
                "SELECT conversation FROM messages WHERE id = ?1",
                [id.0.as_slice()],
                |r| r.get(0),
            )
            .optional()?;
        let Some(conversation) = conversation else {
            return Ok(None);
        };
        let conversation = ConversationId(array(conversation, "conversation id")?);
        Ok(load_messages(&conn, &conversation, Some(id), None, u32::MAX)?.pop())
    }

    /// Every conversation, newest first.
    fn conversations(&self) -> SdkResult<Vec<Conversation>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id FROM conversations WHERE id NOT IN (SELECT conversation FROM requests)
             ORDER BY created_at_ms DESC, id",
        )?;
        let ids: Vec<Vec<u8>> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        ids.into_iter()
            .map(|id| load_conversation(&conn, &ConversationId(array(id, "conversation id")?)))
            .collect::<SdkResult<Option<Vec<_>>>>()
            .map(Option::unwrap_or_default)
    }

    /// One conversation.
    fn conversation(&self, id: &ConversationId) -> SdkResult<Option<Conversation>> {
        load_conversation(&self.lock(), id)
    }

    fn request_count(&self) -> SdkResult<u64> {
        let count: i64 = self.lock().query_row(
            "SELECT COUNT(*) FROM requests r JOIN conversations c ON c.id = r.conversation",
            [],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    fn requests(&self) -> SdkResult<Vec<(Conversation, String)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT r.conversation, r.inviter FROM requests r
             JOIN conversations c ON c.id = r.conversation ORDER BY c.created_at_ms DESC",
        )?;
        let rows: Vec<(Vec<u8>, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        let mut out = Vec::with_capacity(rows.len());
        for (id, inviter) in rows {
            let id = ConversationId(array(id, "conversation id")?);
            if let Some(c) = load_conversation(&conn, &id)? {
                out.push((c, inviter));
            }
        }
        Ok(out)
    }

    fn channel_to_accept(&self, id: &ConversationId, channel: &[u8]) -> SdkResult<()> {
        self.lock().execute(
            "INSERT OR REPLACE INTO channel_answers (conversation, channel) VALUES (?1, ?2)",
            params![id.0.as_slice(), channel],
        )?;
        Ok(())
    }

    fn channels_to_accept(&self) -> SdkResult<Vec<(ConversationId, Vec<u8>)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached("SELECT conversation, channel FROM channel_answers")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get(1)?)))?;
        rows.map(|r| {
            let (id, channel) = r?;
            Ok((ConversationId(array(id, "conversation id")?), channel))
        })
        .collect()
    }

    fn channel_accepted(&self, id: &ConversationId) -> SdkResult<()> {
        self.lock().execute(
            "DELETE FROM channel_answers WHERE conversation = ?1",
            [id.0.as_slice()],
        )?;
        Ok(())
    }

    fn is_request(&self, id: &ConversationId) -> SdkResult<bool> {
        is_request_on(&self.lock(), id)
    }

    fn accept_request(&self, id: &ConversationId) -> SdkResult<bool> {
        Ok(self.lock().execute(
            "DELETE FROM requests WHERE conversation = ?1",
            [id.0.as_slice()],
        )? > 0)
    }

    fn decline_request(&self, id: &ConversationId) -> SdkResult<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let was = tx
            .prepare_cached("DELETE FROM requests WHERE conversation = ?1")?
            .execute([id.0.as_slice()])?;
        if was > 0 {
            tx.prepare_cached("DELETE FROM conversations WHERE id = ?1")?
                .execute([id.0.as_slice()])?;
        }
        tx.commit()?;
        Ok(was > 0)
    }

    /// The newest `limit` messages of a conversation, oldest first.
    fn messages(
        &self,
        conversation: &ConversationId,
        before: Option<&MessageId>,
        limit: u32,
    ) -> SdkResult<Vec<Message>> {
        load_messages(&self.lock(), conversation, None, before, limit)
    }

    /// Deliveries still to make, oldest items first.
    fn pending_deliveries(&self, limit: u32, now_ms: u64) -> SdkResult<Vec<Delivery>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT d.item, d.user, d.device, d.message_id, d.transport FROM deliveries AS d
             WHERE d.not_before_ms <= ?2
               AND NOT EXISTS (SELECT 1 FROM deliveries AS e
                               WHERE e.user = d.user AND e.device = d.device
                                 AND e.rowid < d.rowid AND e.not_before_ms > ?2)
             ORDER BY d.rowid LIMIT ?1",
        )?;
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![limit, now], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
            ))
        })?;
        rows.map(|row| {
            let (item, user, device, message_id, transport) = row?;
            Ok(Delivery {
                item: MessageId(array(item, "outbox item")?),
                user,
                device,
                message_id: array(message_id, "delivery id")?,
                transport,
            })
        })
        .collect()
    }

    /// Claims an outbox item for one attempt: a queued (or retrying) message moves to
    /// `sending`, after which it can no longer be cancelled. Returns whether the item still
    /// has deliveries to make (a cancelled one has none) and whether its state changed.
    fn claim(&self, item: &MessageId) -> SdkResult<(bool, Option<ConversationId>)> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let conversation: Option<Vec<u8>> = tx
            .query_row(
                "UPDATE messages SET state = 'sending', state_reason = ''
                 WHERE id = ?1 AND outgoing = 1 AND state IN ('queued', 'retrying')
                 RETURNING conversation",
                [item.0.as_slice()],
                |r| r.get(0),
            )
            .optional()?;
        let pending: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM deliveries WHERE item = ?1)")?
            .query_row([item.0.as_slice()], |r| r.get(0))?;
        tx.commit()?;
        Ok((
            pending,
            conversation
                .map(|c| array(c, "conversation id").map(ConversationId))
                .transpose()?,
        ))
    }

    /// Withdraws a message no device has received yet: its deliveries and the message go.
    /// Fails once the outbox has claimed it or any device's queue has taken it.
    fn cancel(&self, id: &MessageId) -> SdkResult<ConversationId> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let row: Option<(Vec<u8>, String, bool)> = tx
            .query_row(
                "SELECT conversation, state, accepted FROM messages WHERE id = ?1 AND outgoing = 1",
                [id.0.as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((conversation, state, accepted)) = row else {
            return Err(SdkError::NotFound(format!("outgoing message {id}")));
        };
        if accepted || !matches!(state.as_str(), "queued" | "retrying") {
            return Err(SdkError::InvalidArgument(format!(
                "message {id} is already on its way ({state}); delete it instead"
            )));
        }
        tx.prepare_cached("DELETE FROM deliveries WHERE item = ?1")?
            .execute([id.0.as_slice()])?;
        tx.prepare_cached("DELETE FROM reactions WHERE message = ?1")?
            .execute([id.0.as_slice()])?;
        tx.prepare_cached("DELETE FROM receipts WHERE message = ?1")?
            .execute([id.0.as_slice()])?;
        tx.prepare_cached("DELETE FROM messages WHERE id = ?1")?
            .execute([id.0.as_slice()])?;
        tx.commit()?;
        Ok(ConversationId(array(conversation, "conversation id")?))
    }

    /// Records that a delivery reached the server (`accepted`) or can never be made; returns
    /// whether its item has no delivery left.
    fn delivery_done(
        &self,
        item: &MessageId,
        user: &str,
        device: &str,
        accepted: bool,
    ) -> SdkResult<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.prepare_cached("DELETE FROM deliveries WHERE item = ?1 AND user = ?2 AND device = ?3")?
            .execute(params![item.0.as_slice(), user, device])?;
        if accepted {
            tx.prepare_cached("UPDATE messages SET accepted = 1 WHERE id = ?1 AND outgoing = 1")?
                .execute([item.0.as_slice()])?;
        }
        let left: i64 = tx
            .prepare_cached("SELECT COUNT(*) FROM deliveries WHERE item = ?1")?
            .query_row([item.0.as_slice()], |r| r.get(0))?;
        tx.commit()?;
        Ok(left == 0)
    }

    fn delivery_failed(
        &self,
        item: &MessageId,
        user: &str,
        device: &str,
        retry_at: &dyn Fn(u32) -> u64,
    ) -> SdkResult<u32> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let attempts: Option<i64> = tx
            .query_row(
                "UPDATE deliveries SET attempts = attempts + 1
                 WHERE item = ?1 AND user = ?2 AND device = ?3 RETURNING attempts",
                params![item.0.as_slice(), user, device],
                |r| r.get(0),
            )
            .optional()?;
        let Some(attempts) = attempts else {
            return Ok(0);
        };
        let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
        tx.prepare_cached(
            "UPDATE deliveries SET not_before_ms = ?4
             WHERE item = ?1 AND user = ?2 AND device = ?3",
        )?
        .execute(params![
            item.0.as_slice(),
            user,
            device,
            i64::try_from(retry_at(attempts)).unwrap_or(i64::MAX)
        ])?;
        tx.commit()?;
        Ok(attempts)
    }

    fn note_relayed(&self, delivery_id: &[u8], item: &MessageId, now_ms: u64) -> SdkResult<()> {
        const KEPT_MS: u64 = 30 * 24 * 3600 * 1000;
        let conn = self.lock();
        conn.execute(
            "DELETE FROM relayed WHERE at_ms < ?1",
            [i64::try_from(now_ms.saturating_sub(KEPT_MS)).unwrap_or(i64::MAX)],
        )?;
        conn.execute(
            "INSERT OR REPLACE INTO relayed (delivery_id, item, at_ms) VALUES (?1, ?2, ?3)",
            params![
                delivery_id,
                item.0.as_slice(),
                i64::try_from(now_ms).unwrap_or(i64::MAX)
            ],
        )?;
        Ok(())
    }

    fn relayed_item(&self, delivery_id: &[u8]) -> SdkResult<Option<MessageId>> {
        let item: Option<Vec<u8>> = self
            .lock()
            .query_row(
                "SELECT item FROM relayed WHERE delivery_id = ?1",
                [delivery_id],
                |r| r.get(0),
            )
            .optional()?;
        item.map(|b| array(b, "message id").map(MessageId))
            .transpose()
    }

    fn relay_failures_seen(&self) -> SdkResult<u64> {
        let seen: Option<i64> = self
            .lock()
            .query_row(
                "SELECT after_id FROM relay_failures_seen WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(seen.map_or(0, |v| u64::try_from(v).unwrap_or(0)))
    }

    fn set_relay_failures_seen(&self, id: u64) -> SdkResult<()> {
        self.lock().execute(
            "INSERT INTO relay_failures_seen (id, after_id) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET after_id = MAX(after_id, ?1)",
            [i64::try_from(id).unwrap_or(i64::MAX)],
        )?;
        Ok(())
    }

    fn mark_accepted(&self, item: &MessageId) -> SdkResult<()> {
        self.lock().execute(
            "UPDATE messages SET accepted = 1 WHERE id = ?1 AND outgoing = 1",
            [item.0.as_slice()],
        )?;
        Ok(())
    }

    /// Records the identity key `user/device` uses. Returns whether that changes a safety
    /// number this device had: the device's key differs from the one seen before, or it is a
    /// new device of a user seen before. The first device of a user is recorded quietly.
    fn note_identity(&self, user: &str, device: &str, identity: &[u8]) -> SdkResult<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let known = identity_on(&tx, user, device)?;
        let changed = match known {
            Some(k) => k != identity,
            None => {
                tx.prepare_cached("SELECT COUNT(*) FROM peer_identities WHERE user = ?1")?
                    .query_row([user], |r| r.get::<_, i64>(0))?
                    > 0
            }
        };
        tx.prepare_cached(
            "INSERT INTO peer_identities (user, device, identity) VALUES (?1, ?2, ?3)
             ON CONFLICT (user, device) DO UPDATE SET identity = ?3",
        )?
        .execute(params![user, device, identity])?;
        tx.commit()?;
        Ok(changed)
    }

    /// Messages parked for `conversation`, oldest first.
    fn parked(&self, conversation: &ConversationId) -> SdkResult<Vec<Parked>> {
        parked_on(&self.lock(), conversation)
    }

    fn expire_parked(&self, before_ms: u64) -> SdkResult<Vec<u64>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("DELETE FROM parked WHERE parked_at_ms < ?1 RETURNING seq")?;
        let rows = stmt.query_map([i64::try_from(before_ms).unwrap_or(i64::MAX)], |r| {
            r.get::<_, i64>(0)
        })?;
        rows.map(|r| Ok(u64::try_from(r?).unwrap_or(0))).collect()
    }

    fn parked_conversations(&self) -> SdkResult<Vec<ConversationId>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached("SELECT DISTINCT conversation FROM parked")?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        rows.map(|r| array(r?, "conversation id").map(ConversationId))
            .collect()
    }

    /// Forgets a parked message.
    fn unpark(&self, seq: u64) -> SdkResult<()> {
        unpark_on(&self.lock(), seq)
    }

    /// Outgoing items not yet fully delivered.
    fn outbox_len(&self) -> SdkResult<u64> {
        let n: i64 =
            self.lock()
                .query_row("SELECT COUNT(DISTINCT item) FROM deliveries", [], |r| {
                    r.get(0)
                })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Moves an outgoing message to `state`, unless it already failed (a failure for one
    /// device is final for the message). Returns its conversation when the state changed.
    fn set_state(&self, id: &MessageId, state: &SendState) -> SdkResult<Option<ConversationId>> {
        let (name, reason) = state_name(state);
        let conversation: Option<Vec<u8>> = self
            .lock()
            .query_row(
                "UPDATE messages SET state = ?2, state_reason = ?3
                 WHERE id = ?1 AND outgoing = 1 AND state <> 'failed' AND state <> ?2
                   AND NOT (state = 'sent' AND ?2 IN ('sending', 'retrying'))
                 RETURNING conversation",
                params![id.0.as_slice(), name, reason],
                |r| r.get(0),
            )
            .optional()?;
        conversation
            .map(|c| array(c, "conversation id").map(ConversationId))
            .transpose()
    }
}

fn load_messages(
    conn: &Connection,
    conversation: &ConversationId,
    only: Option<&MessageId>,
    before: Option<&MessageId>,
    limit: u32,
) -> SdkResult<Vec<Message>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, sender, body, reply_to, sent_at_ms, received_at_ms, outgoing, state,
                state_reason, edited, deleted, attachment
         FROM messages WHERE conversation = ?1 AND (?2 IS NULL OR id = ?2)
           AND (?4 IS NULL OR (received_at_ms, rowid) <
                (SELECT received_at_ms, rowid FROM messages WHERE id = ?4))
         ORDER BY received_at_ms DESC, rowid DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![
            conversation.0.as_slice(),
            only.map(|m| m.0.to_vec()),
            limit,
            before.map(|m| m.0.to_vec())
        ],
        |r| {
            Ok((
                (
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<Vec<u8>>>(3)?,
                ),
                (
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, bool>(6)?,
                ),
                (r.get::<_, String>(7)?, r.get::<_, String>(8)?),
                (r.get::<_, bool>(9)?, r.get::<_, bool>(10)?),
                r.get::<_, Option<Vec<u8>>>(11)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (
            (id, sender, body, reply_to),
            (sent, received, outgoing),
            (state, reason),
            (edited, deleted),
            attachment,
        ) = row?;
        let id = MessageId(array(id, "message id")?);
        let mut reactions = Vec::new();
        let mut rs = conn.prepare_cached(
            "SELECT user, emoji FROM reactions WHERE message = ?1 ORDER BY user, emoji",
        )?;
        for r in rs.query_map([id.0.as_slice()], |r| Ok((r.get(0)?, r.get(1)?)))? {
            reactions.push(r?);
        }
        let mut rd =
            conn.prepare_cached("SELECT user FROM receipts WHERE message = ?1 ORDER BY user")?;
        let read_by = rd
            .query_map([id.0.as_slice()], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        out.push(Message {
            id,
            conversation: *conversation,
            sender,
            body: if deleted { String::new() } else { body },
            reply_to: reply_to
                .map(|r| array(r, "reply id").map(MessageId))
                .transpose()?,
            sent_at_ms: u64::try_from(sent).unwrap_or(0),
            received_at_ms: u64::try_from(received).unwrap_or(0),
            outgoing,
            state: state_from(&state, reason),
            edited,
            deleted,
            reactions,
            read_by,
            attachment: attachment
                .filter(|_| !deleted)
                .map(|bytes: Vec<u8>| crate::model::AttachmentInfo::decode(&bytes))
                .transpose()?,
        });
    }
    out.reverse();
    Ok(out)
}

/// The author user of a stored message, if it is in `conversation`.
fn author_of(
    tx: &Connection,
    conversation: &ConversationId,
    id: &MessageId,
) -> SdkResult<Option<String>> {
    let sender: Option<String> = tx
        .query_row(
            "SELECT sender FROM messages WHERE id = ?1 AND conversation = ?2",
            params![id.0.as_slice(), conversation.0.as_slice()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(sender.map(|s| crate::model::user_of(&s).to_owned()))
}

fn apply_effect(tx: &Connection, effect: &Effect) -> SdkResult<bool> {
    let now = super::now_ms();
    Ok(match effect {
        Effect::None => false,
        Effect::Conversation(c, channel) => {
            insert_conversation(tx, c, now)?;
            if let Some(channel) = channel {
                tx.prepare_cached("UPDATE conversations SET channel = ?2 WHERE id = ?1")?
                    .execute(params![c.id.0.as_slice(), channel])?;
            }
            true
        }
        Effect::Request {
            conversation: c,
            channel,
            inviter,
        } => {
            insert_conversation(tx, c, now)?;
            tx.prepare_cached("UPDATE conversations SET channel = ?2 WHERE id = ?1")?
                .execute(params![c.id.0.as_slice(), channel])?;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO requests (conversation, inviter) VALUES (?1, ?2)",
            )?
            .execute(params![c.id.0.as_slice(), inviter])?;
            true
        }
        Effect::Members {
            conversation,
            members,
        } => {
            tx.prepare_cached("DELETE FROM members WHERE conversation = ?1")?
                .execute([conversation.0.as_slice()])?;
            for user in members {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO members (conversation, user) VALUES (?1, ?2)",
                )?
                .execute(params![conversation.0.as_slice(), user])?;
            }
            true
        }
        Effect::Message(m) => insert_message(tx, m)?,
        Effect::Edit {
            conversation,
            target,
            author,
            body,
        } => {
            // Only the author may edit, and a deleted message stays deleted.
            author_of(tx, conversation, target)?.as_deref() == Some(author.as_str())
                && tx
                    .prepare_cached(
                        "UPDATE messages SET body = ?2, edited = 1 WHERE id = ?1 AND deleted = 0",
                    )?
                    .execute(params![target.0.as_slice(), body])?
                    > 0
        }
        Effect::Delete {
            conversation,
            target,
            author,
        } => {
            author_of(tx, conversation, target)?.as_deref() == Some(author.as_str())
                && tx
                    .prepare_cached(
                        "UPDATE messages SET body = '', attachment = NULL, deleted = 1
                     WHERE id = ?1 AND deleted = 0",
                    )?
                    .execute([target.0.as_slice()])?
                    > 0
        }
        Effect::Reaction {
            conversation,
            target,
            user,
            emoji,
            remove,
        } => {
            if author_of(tx, conversation, target)?.is_none() {
                false
            } else if *remove {
                tx.prepare_cached(
                    "DELETE FROM reactions WHERE message = ?1 AND user = ?2 AND emoji = ?3",
                )?
                .execute(params![target.0.as_slice(), user, emoji])?
                    > 0
            } else {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO reactions (message, user, emoji) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![target.0.as_slice(), user, emoji])?
                    > 0
            }
        }
        Effect::Receipt {
            conversation,
            targets,
            user,
            at_ms,
        } => {
            let mut changed = false;
            for target in targets {
                if author_of(tx, conversation, target)?.is_some() {
                    changed |= tx.prepare_cached("INSERT OR IGNORE INTO receipts (message, user, read_at_ms) VALUES (?1, ?2, ?3)")?.execute(params![target.0.as_slice(), user, i64::try_from(*at_ms).unwrap_or(0)],
                    )? > 0;
                }
            }
            changed
        }
        Effect::Rename { conversation, name } => {
            tx.prepare_cached("UPDATE conversations SET name = ?2 WHERE id = ?1")?
                .execute(params![conversation.0.as_slice(), name])?
                > 0
        }
        Effect::Park {
            seq,
            conversation,
            epoch,
            sender,
            mls,
        } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO parked (seq, conversation, epoch, mls, sender, parked_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                i64::try_from(*seq).unwrap_or(i64::MAX),
                conversation.0.as_slice(),
                i64::try_from(*epoch).unwrap_or(i64::MAX),
                mls,
                sender,
                now_ms()
            ])?;
            false
        }
        Effect::LeaveRequest { .. } => false,
    })
}

/// Stores a conversation as it now is: a repeated id (an invitation back into a conversation
/// this device left) takes the new kind, name and members outright, never the old ones.
fn insert_conversation(tx: &Connection, c: &Conversation, created_at_ms: i64) -> SdkResult<()> {
    tx.prepare_cached(
        "INSERT INTO conversations (id, kind, name, created_at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET kind = ?2, name = ?3",
    )?
    .execute(params![
        c.id.0.as_slice(),
        c.kind.code(),
        c.name,
        created_at_ms
    ])?;
    tx.prepare_cached("DELETE FROM members WHERE conversation = ?1")?
        .execute([c.id.0.as_slice()])?;
    for user in &c.members {
        tx.prepare_cached("INSERT OR IGNORE INTO members (conversation, user) VALUES (?1, ?2)")?
            .execute(params![c.id.0.as_slice(), user])?;
    }
    Ok(())
}

/// Inserts a message unless its id is stored; returns whether it was new.
fn insert_message(tx: &Connection, m: &Message) -> SdkResult<bool> {
    let (state, reason) = state_name(&m.state);
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO messages
             (id, conversation, sender, body, reply_to, sent_at_ms, received_at_ms, outgoing,
              state, state_reason, attachment)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?
        .execute(params![
            m.id.0.as_slice(),
            m.conversation.0.as_slice(),
            m.sender,
            m.body,
            m.reply_to.map(|r| r.0.to_vec()),
            i64::try_from(m.sent_at_ms).unwrap_or(i64::MAX),
            i64::try_from(m.received_at_ms).unwrap_or(i64::MAX),
            m.outgoing,
            state,
            reason,
            m.attachment
                .as_ref()
                .map(crate::model::AttachmentInfo::encode)
        ])?;
    Ok(n > 0)
}

fn load_conversation(conn: &Connection, id: &ConversationId) -> SdkResult<Option<Conversation>> {
    let row: Option<(u32, String)> = conn
        .query_row(
            "SELECT kind, name FROM conversations WHERE id = ?1",
            [id.0.as_slice()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((kind, name)) = row else {
        return Ok(None);
    };
    let mut stmt =
        conn.prepare_cached("SELECT user FROM members WHERE conversation = ?1 ORDER BY user")?;
    let members = stmt
        .query_map([id.0.as_slice()], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(Some(Conversation {
        id: *id,
        kind: ConversationKind::from_code(kind),
        name,
        members,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn passphrase(p: &str) -> StoreKey {
        StoreKey::Passphrase(Zeroizing::new(p.to_owned()))
    }

    #[test]
    fn a_passphrase_store_records_its_key_derivation_costs() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::open(dir.path(), &passphrase("correct horse")).unwrap();
        drop(store);
        let recorded = std::fs::read(dir.path().join(SALT_FILE)).unwrap();
        let params = KdfParams::decode(&recorded).unwrap();
        assert_eq!(
            (params.memory_kib, params.passes, params.lanes),
            (64 * 1024, 3, 1)
        );
        assert!(SqlStore::open(dir.path(), &passphrase("correct horse")).is_ok());
        assert!(matches!(
            SqlStore::open(dir.path(), &passphrase("wrong")),
            Err(SdkError::WrongStoreKey)
        ));
    }

    #[test]
    fn a_data_directory_is_open_in_one_client_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path()).unwrap();
        let second = lock_dir(dir.path());
        assert!(
            matches!(&second, Err(SdkError::DataDirInUse(p)) if p == dir.path()),
            "{second:?}"
        );
        let shown = second.unwrap_err().to_string();
        assert!(shown.contains("in use by another qpq client"), "{shown}");
        // Closing the first frees the directory; the lock file is private like the rest.
        drop(first);
        drop(lock_dir(dir.path()).unwrap());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(LOCK_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_store_keyed_before_the_costs_were_recorded_still_opens() {
        // A bare 16-byte salt: Argon2's default costs (19 MiB, two passes), as before.
        let dir = tempfile::tempdir().unwrap();
        let salt = [9u8; 16];
        std::fs::write(dir.path().join(SALT_FILE), salt).unwrap();
        let mut key = Zeroizing::new([0u8; 32]);
        opaque_ke::argon2::Argon2::default()
            .hash_password_into(b"old pass", &salt, key.as_mut())
            .unwrap();
        drop(SqlStore::open(dir.path(), &StoreKey::Raw(key)).unwrap());
        assert!(SqlStore::open(dir.path(), &passphrase("old pass")).is_ok());
        assert!(KdfParams::decode(&[1; 20]).is_none());
        // Costs out of bounds are refused, not run.
        let mut huge = KdfParams {
            memory_kib: u32::MAX,
            passes: 3,
            lanes: 1,
            salt: [0; 16],
        }
        .encode();
        assert!(KdfParams::decode(&huge).is_none());
        huge[8..12].copy_from_slice(&(64 * 1024u32).to_be_bytes());
        assert!(KdfParams::decode(&huge).is_some());
    }
}
