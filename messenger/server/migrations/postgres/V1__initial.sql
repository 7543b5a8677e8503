-- quicproquo server schema on PostgreSQL, version 1: the SQLite schema's version 6 in one step.
-- Every node of a cluster runs the same migrations; the first to start applies them, holding
-- an advisory lock, and records the version in qpq_schema.

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_file BYTEA NOT NULL,          -- OPAQUE registration record (no password material)
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE devices (
    "user"         TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    device         TEXT NOT NULL,
    label          TEXT NOT NULL DEFAULT '',
    created_at_ms  BIGINT NOT NULL,
    next_seq       BIGINT NOT NULL DEFAULT 1,
    queue_messages BIGINT NOT NULL DEFAULT 0,
    queue_bytes    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY ("user", device)
);

CREATE TABLE revoked_devices (
    "user"        TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    device        TEXT NOT NULL,
    revoked_at_ms BIGINT NOT NULL,
    PRIMARY KEY ("user", device)
);

CREATE TABLE sessions (
    token_hash    BYTEA PRIMARY KEY,       -- SHA-256 of the bearer token
    "user"        TEXT NOT NULL,
    device        TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    FOREIGN KEY ("user", device) REFERENCES devices("user", device) ON DELETE CASCADE
);
CREATE INDEX sessions_by_expiry ON sessions(expires_at_ms);
CREATE INDEX sessions_by_device ON sessions("user", device);

CREATE TABLE queue (
    "user"         TEXT NOT NULL,
    device         TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    sender         TEXT NOT NULL DEFAULT '',
    message_id     BYTEA NOT NULL,
    payload        BYTEA NOT NULL,
    received_at_ms BIGINT NOT NULL,
    PRIMARY KEY ("user", device, seq),
    UNIQUE ("user", device, sender, message_id),
    FOREIGN KEY ("user", device) REFERENCES devices("user", device) ON DELETE CASCADE
);

-- Running per-sender totals in each queue (the sending user, or '' for sealed sends).
CREATE TABLE queue_senders (
    "user"   TEXT NOT NULL,
    device   TEXT NOT NULL,
    sender   TEXT NOT NULL,
    messages BIGINT NOT NULL,
    bytes    BIGINT NOT NULL,
    PRIMARY KEY ("user", device, sender),
    FOREIGN KEY ("user", device) REFERENCES devices("user", device) ON DELETE CASCADE
);

CREATE TABLE contacts (
    "user" TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    peer   TEXT NOT NULL,
    PRIMARY KEY ("user", peer)
);

CREATE TABLE key_packages (
    id          BIGSERIAL PRIMARY KEY,
    "user"      TEXT NOT NULL,
    device      TEXT NOT NULL,
    key_package BYTEA NOT NULL,
    last_resort BOOLEAN NOT NULL DEFAULT FALSE,
    FOREIGN KEY ("user", device) REFERENCES devices("user", device) ON DELETE CASCADE
);
CREATE INDEX key_packages_by_device ON key_packages("user", device, last_resort, id);

CREATE TABLE key_bundles (
    "user"              TEXT NOT NULL,
    device              TEXT NOT NULL,
    bundle              BYTEA NOT NULL,
    identity_key        BYTEA NOT NULL UNIQUE,
    delivery_token_hash BYTEA,
    kt_index            BIGINT NOT NULL,
    kt_key_package_hash BYTEA,
    PRIMARY KEY ("user", device),
    FOREIGN KEY ("user", device) REFERENCES devices("user", device) ON DELETE CASCADE
);

CREATE TABLE kt_leaves (
    idx       BIGINT PRIMARY KEY,          -- 0-based leaf index, dense
    leaf_hash BYTEA NOT NULL
);

-- Signed tree heads, one per tree size: every node serves the same head for a size.
CREATE TABLE kt_heads (
    tree_size BIGINT PRIMARY KEY,
    head      BYTEA NOT NULL
);

CREATE TABLE channels (
    id            BYTEA PRIMARY KEY,
    name          TEXT NOT NULL,
    owner         TEXT NOT NULL,
    mls_group_id  BYTEA NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX channels_by_owner ON channels(owner);

CREATE TABLE channel_members (
    channel_id BYTEA NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    "user"     TEXT NOT NULL,
    state      TEXT NOT NULL DEFAULT 'invited' CHECK (state IN ('invited', 'accepted')),
    PRIMARY KEY (channel_id, "user")
);
CREATE INDEX channel_members_by_user ON channel_members("user", channel_id);

CREATE TABLE blobs (
    sha256        BYTEA PRIMARY KEY,
    owner         TEXT NOT NULL,
    size          BIGINT NOT NULL,
    received      BIGINT NOT NULL,
    complete      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at_ms BIGINT NOT NULL,
    epoch         BIGINT NOT NULL DEFAULT 0    -- bumped when a failed hash check drops the bytes
);
CREATE INDEX blobs_by_owner ON blobs(owner);

-- Blob bytes in the database, so that every node serves every upload and download.
CREATE TABLE blob_chunks (
    sha256 BYTEA NOT NULL REFERENCES blobs(sha256) ON DELETE CASCADE,
    offset_bytes BIGINT NOT NULL,
    bytes  BYTEA NOT NULL,
    PRIMARY KEY (sha256, offset_bytes)
);

CREATE TABLE endpoints (
    "user"        TEXT NOT NULL,
    device        TEXT NOT NULL,
    addresses     TEXT NOT NULL,           -- newline-separated "ip:port"
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY ("user", device),
    FOREIGN KEY ("user", device) REFERENCES devices("user", device) ON DELETE CASCADE
);
CREATE INDEX endpoints_by_expiry ON endpoints(expires_at_ms);

CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
