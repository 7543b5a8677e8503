//! MLS groups over openmls, with the X-Wing post-quantum ciphersuite by default and group state
//! persisted in SQLite.
//!
//! A device is an [`MlsMember`]: its signature key, its credential, and an openmls provider whose
//! storage is an SQLite database (the client keeps it in its SQLCipher file). Everything openmls
//! needs to resume — groups, epochs, key packages' private keys, the signer — lives in that
//! database, so a member reopened from the same file continues every group.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::OpenMlsProvider;
use rusqlite::{Connection, OptionalExtension};
use zeroize::Zeroizing;

use crate::identity::{IdentityKey, IdentityPublic};
use crate::mls_crypto::QpqCrypto as CryptoProvider;

/// The ciphersuites qpq uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Suite {
    /// `MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519`: X-Wing hybrid KEM (post-quantum). Default.
    #[default]
    XWing,
    /// `MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519`: classic X25519.
    X25519,
}

impl Suite {
    /// The openmls ciphersuite.
    pub fn ciphersuite(self) -> Ciphersuite {
        match self {
            Self::XWing => Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519,
            Self::X25519 => Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
        }
    }

    fn code(self) -> u16 {
        self.ciphersuite().into()
    }

    fn from_code(code: u16) -> Option<Self> {
        [Self::XWing, Self::X25519]
            .into_iter()
            .find(|s| s.code() == code)
    }
}

/// Why an MLS operation failed. Messages name the operation, never key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MlsError {
    /// The SQLite store failed.
    #[error("MLS store: {0}")]
    Store(String),
    /// No member was created in this store.
    #[error("no MLS member in this store")]
    NoMember,
    /// openmls refused the operation.
    #[error("MLS {operation} failed: {reason}")]
    Protocol {
        /// What was attempted.
        operation: &'static str,
        /// openmls's reason.
        reason: String,
    },
    /// Input bytes did not decode as the expected MLS message.
    #[error("malformed MLS {0}")]
    Malformed(&'static str),
    /// The named member is not in the group.
    #[error("no such member in the group")]
    NotAMember,
    /// The store's member signs with another key than the device's identity key (a store made
    /// before MLS keys were bound to identities, or another device's store).
    #[error("the MLS member in this store does not sign with this device's identity key")]
    IdentityMismatch,
    /// The message belongs to an epoch this member has not reached yet (a commit before it is
    /// still on its way): keep it and process it once the group gets there.
    #[error("MLS message from epoch {epoch}, ahead of the group")]
    FutureEpoch {
        /// The message's epoch.
        epoch: u64,
    },
}

/// Past epochs whose secrets a member keeps, so that an application message sent just before
/// a commit still decrypts when the commit overtakes it. Low on purpose: each kept epoch
/// weakens forward secrecy a little.
pub const PAST_EPOCHS: usize = 3;

fn protocol(operation: &'static str) -> impl FnOnce(&dyn std::fmt::Debug) -> MlsError {
    move |e| MlsError::Protocol {
        operation,
        reason: format!("{e:?}"),
    }
}

macro_rules! mls_try {
    ($op:literal, $e:expr) => {
        $e.map_err(|e| protocol($op)(&e))?
    };
}

/// Serializes openmls storage entities as JSON.
#[derive(Debug, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// The member's signer: the identity key, as openmls's Ed25519 key pair (both qpq suites
/// sign with Ed25519).
fn signer_of(identity: &IdentityKey, suite: Suite) -> SignatureKeyPair {
    let secret = identity.to_secret_bytes();
    SignatureKeyPair::from_raw(
        suite.ciphersuite().signature_algorithm(),
        secret.to_vec(),
        identity.public().to_bytes().to_vec(),
    )
}

/// openmls provider: libcrux crypto and SQLite storage on the member's connection, borrowed for
/// one operation (so the member can also run other statements in the same transaction).
pub struct Provider<'a> {
    crypto: &'a CryptoProvider,
    storage: SqliteStorageProvider<JsonCodec, &'a Connection>,
}

impl<'a> OpenMlsProvider for Provider<'a> {
    type CryptoProvider = CryptoProvider;
    type RandProvider = CryptoProvider;
    type StorageProvider = SqliteStorageProvider<JsonCodec, &'a Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}

/// Creates openmls's tables in the database behind `conn` (idempotent).
fn migrate(conn: &mut Connection) -> Result<(), MlsError> {
    SqliteStorageProvider::<JsonCodec, &mut Connection>::new(conn)
        .run_migrations()
        .map_err(|e| MlsError::Store(e.to_string()))
}

const MEMBER_TABLE: &str = "CREATE TABLE IF NOT EXISTS qpq_mls_member (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name BLOB NOT NULL,
    suite INTEGER NOT NULL,
    signature_public_key BLOB NOT NULL
)";

/// One device's MLS state: signer, credential and persistent storage.
///
/// The member signs with the device's identity key: the key that signs its leaf in every
/// group is the one the device published (and the key-transparency log holds), so a leaf can
/// be checked against the log and safety numbers cover it.
pub struct MlsMember {
    conn: Connection,
    crypto: CryptoProvider,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    suite: Suite,
    name: Vec<u8>,
    cache: Mutex<GroupCache>,
}

/// Groups kept in memory between operations, so that a busy group is not read and decoded
/// from the store for every message. A group is in the cache only while nobody holds it
/// ([`MlsMember::group`] takes it out, [`MlsMember::keep`] puts it back), and only in the
/// state the store has or will have once the open transaction commits:
/// - every copy handed out gets a serial number, and only the latest copy of a group may come
///   back (an older copy is behind the store);
/// - a rolled-back transaction empties the cache and refuses every copy handed out before it
///   (their state may be ahead of the store's);
/// - a copy that changes the group while a later copy is out makes that later one stale: then
///   no copy comes back;
/// - a deleted group's copies are refused.
///
/// The cache assumes this member is the only writer of its groups: one store, one
/// `MlsMember` at a time.
#[derive(Default)]
struct GroupCache {
    groups: HashMap<Vec<u8>, MlsGroup>,
    /// The serial of the latest copy handed out of each group not given back yet.
    out: HashMap<Vec<u8>, u64>,
    serial: u64,
}

/// Copies handed out and never given back are forgotten past this many (their groups then
/// load from the store again).
const MAX_OUTSTANDING: usize = 4096;

impl GroupCache {
    fn hand_out(&mut self, id: &[u8]) -> u64 {
        if self.out.len() >= MAX_OUTSTANDING {
            self.out.clear();
        }
        self.serial = self.serial.wrapping_add(1);
        self.out.insert(id.to_vec(), self.serial);
        self.serial
    }

    fn forget_all(&mut self) {
        self.groups.clear();
        self.out.clear();
    }
}

/// How many groups the cache holds at most.
pub const CACHED_GROUPS: usize = 64;

impl std::fmt::Debug for MlsMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlsMember")
            .field("name", &String::from_utf8_lossy(&self.name))
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl MlsMember {
    /// Creates a member named `name`, signing with `identity`, in the database behind `conn`
    /// (which may be an encrypted SQLCipher connection), replacing none: fails if the store
    /// already has a member. The signing key is not stored: it is the device's identity key,
    /// given again to [`load`](Self::load).
    pub fn create(
        mut conn: Connection,
        name: &[u8],
        identity: &IdentityKey,
        suite: Suite,
    ) -> Result<Self, MlsError> {
        let store = |e: rusqlite::Error| MlsError::Store(e.to_string());
        conn.execute(MEMBER_TABLE, []).map_err(store)?;
        let signer = signer_of(identity, suite);
        conn.execute(
            "INSERT INTO qpq_mls_member (id, name, suite, signature_public_key) VALUES (1, ?1, ?2, ?3)",
            rusqlite::params![name, suite.code(), signer.to_public_vec()],
        )
        .map_err(store)?;
        migrate(&mut conn)?;
        Self::assemble(conn, signer, suite, name.to_vec())
    }

    /// Creates a member in a database file.
    pub fn create_at(
        path: &Path,
        name: &[u8],
        identity: &IdentityKey,
        suite: Suite,
    ) -> Result<Self, MlsError> {
        Self::create(
            Connection::open(path).map_err(|e| MlsError::Store(e.to_string()))?,
            name,
            identity,
            suite,
        )
    }

    /// Reopens the member stored in the database behind `conn`, signing with `identity`;
    /// [`MlsError::IdentityMismatch`] if the store's member was made with another key.
    pub fn load(mut conn: Connection, identity: &IdentityKey) -> Result<Self, MlsError> {
        let store = |e: rusqlite::Error| MlsError::Store(e.to_string());
        conn.execute(MEMBER_TABLE, []).map_err(store)?;
        let row: Option<(Vec<u8>, u16, Vec<u8>)> = conn
            .query_row(
                "SELECT name, suite, signature_public_key FROM qpq_mls_member WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(store)?;
        let (name, suite_code, public_key) = row.ok_or(MlsError::NoMember)?;
        let suite = Suite::from_code(suite_code)
            .ok_or(MlsError::Store("unknown ciphersuite in store".into()))?;
        if public_key != identity.public().to_bytes() {
            return Err(MlsError::IdentityMismatch);
        }
        migrate(&mut conn)?;
        Self::assemble(conn, signer_of(identity, suite), suite, name)
    }

    /// Reopens the member stored in a database file.
    pub fn load_at(path: &Path, identity: &IdentityKey) -> Result<Self, MlsError> {
        Self::load(
            Connection::open(path).map_err(|e| MlsError::Store(e.to_string()))?,
            identity,
        )
    }

    fn assemble(
        conn: Connection,
        signer: SignatureKeyPair,
        suite: Suite,
        name: Vec<u8>,
    ) -> Result<Self, MlsError> {
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.clone()).into(),
            signature_key: signer.to_public_vec().into(),
        };
        Ok(Self {
            conn,
            crypto: CryptoProvider::new().map_err(|e| protocol("crypto init")(&e))?,
            signer,
            credential,
            suite,
            name,
            cache: Mutex::new(GroupCache::default()),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, GroupCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The openmls provider over this member's connection.
    fn provider(&self) -> Provider<'_> {
        Provider {
            crypto: &self.crypto,
            storage: SqliteStorageProvider::new(&self.conn),
        }
    }

    /// Runs `f` in one SQLite transaction on this member's database: every group change made
    /// through this member while `f` runs, and every statement `f` runs on the connection it
    /// is given, commit together when `f` succeeds and are rolled back together when it fails
    /// (or panics). A process killed half-way through leaves the state from before.
    ///
    /// Groups loaded before the call keep their in-memory state; load them again inside `f`.
    pub fn atomically<R, E: From<MlsError>>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, E>,
    ) -> Result<R, E> {
        let store = |e: rusqlite::Error| MlsError::Store(e.to_string());
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(store)?;
        // Until the commit succeeds, a failure (or a panic) leaves groups in memory ahead of
        // the store: the guard forgets them.
        let rollback = ForgetOnRollback {
            member: self,
            armed: true,
        };
        let out = f(&tx)?;
        tx.commit().map_err(store)?;
        rollback.disarm();
        Ok(out)
    }

    /// The member's name (its credential identity).
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// The key that signs this member's leaves: the device's identity key.
    pub fn signature_key(&self) -> Vec<u8> {
        self.signer.to_public_vec()
    }

    /// The ciphersuite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// A one-time key package, TLS-encoded for upload. Its private key stays in the store.
    pub fn key_package(&self) -> Result<Vec<u8>, MlsError> {
        self.build_key_package(false)
    }

    /// A last-resort key package: others may use it when one-time packages run out.
    pub fn last_resort_key_package(&self) -> Result<Vec<u8>, MlsError> {
        self.build_key_package(true)
    }

    fn build_key_package(&self, last_resort: bool) -> Result<Vec<u8>, MlsError> {
        // Every leaf advertises support for the last-resort extension, so that either kind of
        // key package validates.
        let capabilities =
            Capabilities::new(None, None, Some(&[ExtensionType::LastResort]), None, None);
        let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities);
        if last_resort {
            builder = builder.mark_as_last_resort();
        }
        let bundle = mls_try!(
            "key package",
            builder.build(
                self.suite.ciphersuite(),
                &self.provider(),
                &self.signer,
                self.credential.clone()
            )
        );
        Ok(mls_try!(
            "key package encoding",
            bundle.key_package().tls_serialize_detached()
        ))
    }

    /// Creates a group with this member alone in it.
    pub fn create_group(&self, group_id: &[u8]) -> Result<Group, MlsError> {
        let group = mls_try!(
            "group creation",
            MlsGroup::builder()
                .ciphersuite(self.suite.ciphersuite())
                .use_ratchet_tree_extension(true)
                .max_past_epochs(PAST_EPOCHS)
                .with_group_id(GroupId::from_slice(group_id))
                .build(&self.provider(), &self.signer, self.credential.clone())
        );
        let serial = self.cache().hand_out(group_id);
        Ok(Group { group, serial })
    }

    /// Joins a group from a Welcome another member produced for one of our key packages.
    /// Returns the group and the leaf of the member that sent the Welcome (the one whose key
    /// signed the group's state the Welcome carries).
    pub fn join(&self, welcome: &[u8]) -> Result<(Group, Leaf), MlsError> {
        let message = MlsMessageIn::tls_deserialize_exact(welcome)
            .map_err(|_| MlsError::Malformed("welcome"))?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err(MlsError::Malformed("welcome"));
        };
        let config = MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(true)
            .max_past_epochs(PAST_EPOCHS)
            .build();
        let staged = mls_try!(
            "welcome",
            StagedWelcome::new_from_welcome(&self.provider(), &config, welcome, None)
        );
        let sender = mls_try!("welcome sender", staged.welcome_sender().map(Leaf::of_node));
        let group = mls_try!("joining", staged.into_group(&self.provider()));
        let serial = self.cache().hand_out(group.group_id().as_slice());
        Ok((Group { group, serial }, sender))
    }

    /// The group, from the cache if [`keep`](Self::keep) put it there, else loaded from the
    /// store. The caller holds it until it gives it back with `keep` (or drops it: the next
    /// call loads it again).
    pub fn group(&self, group_id: &[u8]) -> Result<Option<Group>, MlsError> {
        let (cached, serial) = {
            let mut cache = self.cache();
            (cache.groups.remove(group_id), cache.hand_out(group_id))
        };
        let group = match cached {
            Some(group) => Some(group),
            None => MlsGroup::load(self.provider().storage(), &GroupId::from_slice(group_id))
                .map_err(|e| MlsError::Store(format!("{e:?}")))?,
        };
        Ok(group.map(|group| Group { group, serial }))
    }

    /// Gives a group back to the cache, so the next [`group`](Self::group) call finds it
    /// without reading the store. Call it once the changes made to the group are in the store
    /// or in the transaction that will write them (inside [`atomically`](Self::atomically)).
    /// A copy is not taken if a transaction was rolled back since it was handed out (its
    /// state may be ahead of the store's), if a later copy of the group was handed out (it is
    /// behind), or if the group was deleted.
    pub fn keep(&self, group: Group) {
        let id = group.group.group_id().as_slice().to_vec();
        let mut cache = self.cache();
        if cache.out.get(&id) != Some(&group.serial) {
            return;
        }
        cache.out.remove(&id);
        if cache.groups.len() >= CACHED_GROUPS && !cache.groups.contains_key(&id) {
            // Any group out: the cache saves loads, it never holds the only copy.
            if let Some(other) = cache.groups.keys().next().cloned() {
                cache.groups.remove(&other);
            }
        }
        cache.groups.insert(id, group.group);
    }

    /// How many groups the cache holds (for tests and diagnostics).
    pub fn cached_groups(&self) -> usize {
        self.cache().groups.len()
    }
}

/// Empties the member's group cache unless disarmed: dropped armed when a transaction did
/// not commit.
struct ForgetOnRollback<'a> {
    member: &'a MlsMember,
    armed: bool,
}

impl ForgetOnRollback<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ForgetOnRollback<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.member.cache().forget_all();
        }
    }
}

/// One leaf of a group: the name its credential claims and the key that signs for it. The
/// name is only a claim until the key is checked against the key the name's device published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The credential's identity (for qpq, an encoded `DeviceName`); empty if the credential
    /// is not a basic credential.
    pub name: Vec<u8>,
    /// The leaf's signature public key.
    pub signature_key: Vec<u8>,
}

impl Leaf {
    fn of_member(m: &Member) -> Self {
        Self {
            name: credential_name(&m.credential).unwrap_or_default(),
            signature_key: m.signature_key.clone(),
        }
    }

    fn of_node(node: &LeafNode) -> Self {
        Self {
            name: credential_name(node.credential()).unwrap_or_default(),
            signature_key: node.signature_key().as_slice().to_vec(),
        }
    }

    /// Whether this leaf signs with `identity`.
    pub fn signs_with(&self, identity: &IdentityPublic) -> bool {
        self.signature_key.as_slice() == identity.to_bytes().as_slice()
    }
}

/// What processing an incoming group message produced.
#[derive(Debug)]
#[non_exhaustive]
pub enum Incoming {
    /// An application message (wiped on drop).
    Application {
        /// The sender's leaf (its signature verified by MLS).
        sender: Leaf,
        /// The plaintext.
        plaintext: Zeroizing<Vec<u8>>,
    },
    /// A commit, now merged: the group moved to a new epoch.
    Commit {
        /// Whether this member was removed by it.
        removed_self: bool,
        /// The committer's leaf as it was before the commit (the key that signed it).
        committer: Option<Leaf>,
    },
    /// A proposal: not kept (see [`Group::process`]).
    Proposal,
}

/// One MLS group as this member sees it. Operations take the member, which holds the keys.
#[derive(Debug)]
pub struct Group {
    group: MlsGroup,
    /// Which copy of the group this is (see the member's cache).
    serial: u64,
}

fn credential_name(credential: &Credential) -> Option<Vec<u8>> {
    BasicCredential::try_from(credential.clone())
        .ok()
        .map(|c| c.identity().to_vec())
}

impl Group {
    /// The group id.
    pub fn id(&self) -> Vec<u8> {
        self.group.group_id().as_slice().to_vec()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }

    /// Members' names, in leaf order.
    pub fn members(&self) -> Vec<Vec<u8>> {
        self.group
            .members()
            .filter_map(|m| credential_name(&m.credential))
            .collect()
    }

    /// Every leaf, in leaf order: each name with the key that signs for it.
    pub fn leaves(&self) -> Vec<Leaf> {
        self.group.members().map(|m| Leaf::of_member(&m)).collect()
    }

    /// A value all members share in an epoch; comparing it out of band detects a split view.
    pub fn epoch_authenticator(&self) -> Vec<u8> {
        self.group.epoch_authenticator().as_slice().to_vec()
    }

    /// Before this copy changes the group: if it is not the latest copy handed out, the latest
    /// one is now behind the store, so no copy may go back to the cache (the next
    /// [`MlsMember::group`] loads the store's state).
    fn changing(&self, me: &MlsMember) {
        let id = self.group.group_id().as_slice();
        let mut cache = me.cache();
        if cache.out.get(id) != Some(&self.serial) {
            cache.out.remove(id);
            cache.groups.remove(id);
        }
    }

    /// Drops every pending proposal, so this member's commit holds only what it chose.
    fn forget_proposals(&mut self, me: &MlsMember) -> Result<(), MlsError> {
        self.changing(me);
        self.group
            .clear_pending_proposals(me.provider().storage())
            .map_err(|e| MlsError::Store(format!("{e:?}")))
    }

    /// Adds members from their key packages; returns the commit (for existing members) and the
    /// Welcome (for the new ones). The commit is merged locally at once.
    pub fn add_members(
        &mut self,
        me: &MlsMember,
        key_packages: &[&[u8]],
    ) -> Result<(Vec<u8>, Vec<u8>), MlsError> {
        self.changing(me);
        let mut packages = Vec::with_capacity(key_packages.len());
        for bytes in key_packages {
            let kp = KeyPackageIn::tls_deserialize_exact(bytes)
                .map_err(|_| MlsError::Malformed("key package"))?;
            packages.push(mls_try!(
                "key package validation",
                kp.validate(me.provider().crypto(), ProtocolVersion::Mls10)
            ));
        }
        self.forget_proposals(me)?;
        let (commit, welcome, _info) = mls_try!(
            "add",
            self.group
                .add_members(&me.provider(), &me.signer, &packages)
        );
        mls_try!(
            "merging own commit",
            self.group.merge_pending_commit(&me.provider())
        );
        Ok((
            mls_try!("commit encoding", commit.to_bytes()),
            mls_try!("welcome encoding", welcome.to_bytes()),
        ))
    }

    /// Removes the members with these names; returns the commit, merged locally.
    pub fn remove_members(&mut self, me: &MlsMember, names: &[&[u8]]) -> Result<Vec<u8>, MlsError> {
        self.changing(me);
        let mut leaves = Vec::new();
        for name in names {
            let leaf = self
                .group
                .members()
                .find(|m| credential_name(&m.credential).as_deref() == Some(*name))
                .ok_or(MlsError::NotAMember)?;
            leaves.push(leaf.index);
        }
        self.forget_proposals(me)?;
        let (commit, _welcome, _info) = mls_try!(
            "remove",
            self.group
                .remove_members(&me.provider(), &me.signer, &leaves)
        );
        mls_try!(
            "merging own commit",
            self.group.merge_pending_commit(&me.provider())
        );
        Ok(mls_try!("commit encoding", commit.to_bytes()))
    }

    /// Rotates this member's leaf keys (post-compromise security); returns the commit.
    pub fn self_update(&mut self, me: &MlsMember) -> Result<Vec<u8>, MlsError> {
        self.forget_proposals(me)?;
        let bundle = mls_try!(
            "self update",
            self.group
                .self_update(&me.provider(), &me.signer, LeafNodeParameters::default())
        );
        mls_try!(
            "merging own commit",
            self.group.merge_pending_commit(&me.provider())
        );
        Ok(mls_try!("commit encoding", bundle.into_commit().to_bytes()))
    }

    /// Deletes the group and every secret of it from the store (after leaving it).
    pub fn delete(mut self, me: &MlsMember) -> Result<(), MlsError> {
        {
            let mut cache = me.cache();
            cache.groups.remove(self.group.group_id().as_slice());
            cache.out.remove(self.group.group_id().as_slice());
        }
        self.group
            .delete(me.provider().storage())
            .map_err(|e| MlsError::Store(format!("{e:?}")))
    }

    /// Encrypts an application message for the group.
    pub fn encrypt(&mut self, me: &MlsMember, plaintext: &[u8]) -> Result<Vec<u8>, MlsError> {
        self.changing(me);
        let message = mls_try!(
            "encrypt",
            self.group
                .create_message(&me.provider(), &me.signer, plaintext)
        );
        Ok(mls_try!("message encoding", message.to_bytes()))
    }

    /// Processes a message from the group: decrypts application messages, merges commits,
    /// stores proposals.
    pub fn process(&mut self, me: &MlsMember, message: &[u8]) -> Result<Incoming, MlsError> {
        self.changing(me);
        let message = MlsMessageIn::tls_deserialize_exact(message)
            .map_err(|_| MlsError::Malformed("message"))?;
        let protocol_message = message
            .try_into_protocol_message()
            .map_err(|_| MlsError::Malformed("protocol message"))?;
        let epoch = protocol_message.epoch().as_u64();
        if protocol_message.group_id() == self.group.group_id() && epoch > self.epoch() {
            return Err(MlsError::FutureEpoch { epoch });
        }
        let processed = mls_try!(
            "processing",
            self.group.process_message(&me.provider(), protocol_message)
        );
        // The sender's leaf before anything is merged: the key that signed this message.
        let sender = match processed.sender() {
            Sender::Member(index) => self.group.member_at(*index).map(|m| Leaf::of_member(&m)),
            _ => None,
        };
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => Ok(Incoming::Application {
                sender: sender.ok_or(MlsError::Malformed("application message sender"))?,
                plaintext: Zeroizing::new(app.into_bytes()),
            }),
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let removed_self = staged.self_removed();
                mls_try!(
                    "merging commit",
                    self.group.merge_staged_commit(&me.provider(), *staged)
                );
                Ok(Incoming::Commit {
                    removed_self,
                    committer: sender,
                })
            }
            // Proposals are not kept: qpq members commit their changes directly, and a kept
            // proposal would go into this member's next commit unchecked (another member's
            // forged Add, committed in this member's name). A commit that refers to a
            // proposal by reference therefore fails to process.
            ProcessedMessageContent::ProposalMessage(_)
            | ProcessedMessageContent::ExternalJoinProposalMessage(_) => Ok(Incoming::Proposal),
            // Echoes of this member's own messages carry nothing new.
            _ => Err(MlsError::Protocol {
                operation: "processing",
                reason: "message was sent by this member".into(),
            }),
        }
    }
}

/// The epoch an MLS group message (public or private) belongs to, read from its unencrypted
/// header, without any key.
pub fn message_epoch(message: &[u8]) -> Result<u64, MlsError> {
    let message =
        MlsMessageIn::tls_deserialize_exact(message).map_err(|_| MlsError::Malformed("message"))?;
    let protocol_message = message
        .try_into_protocol_message()
        .map_err(|_| MlsError::Malformed("protocol message"))?;
    Ok(protocol_message.epoch().as_u64())
}

/// What a server may learn from a key package it stores for others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackageInfo {
    /// The credential identity (the owner's name).
    pub name: Vec<u8>,
    /// The leaf's signature key: for qpq, the owner's identity key.
    pub signature_key: Vec<u8>,
    /// Whether it is marked last-resort.
    pub last_resort: bool,
    /// Its ciphersuite, if it is one of qpq's.
    pub suite: Option<Suite>,
}

/// Decodes a key package and checks its signature and lifetime, without any private key.
pub fn inspect_key_package(bytes: &[u8]) -> Result<KeyPackageInfo, MlsError> {
    let crypto = CryptoProvider::new().map_err(|e| protocol("crypto init")(&e))?;
    let kp = KeyPackageIn::tls_deserialize_exact(bytes)
        .map_err(|_| MlsError::Malformed("key package"))?;
    let kp = mls_try!(
        "key package validation",
        kp.validate(&crypto, ProtocolVersion::Mls10)
    );
    let suite = [Suite::XWing, Suite::X25519]
        .into_iter()
        .find(|s| s.ciphersuite() == kp.ciphersuite());
    Ok(KeyPackageInfo {
        name: credential_name(kp.leaf_node().credential())
            .ok_or(MlsError::Malformed("credential"))?,
        signature_key: kp.leaf_node().signature_key().as_slice().to_vec(),
        last_resort: kp.last_resort(),
        suite,
    })
}
