-- quicproquo server schema, version 1.

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_file BLOB NOT NULL,          -- OPAQUE registration record (no password material)
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE devices (
    user          TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    device        TEXT NOT NULL,
    label         TEXT NOT NULL DEFAULT '',
    created_at_ms INTEGER NOT NULL,
    next_seq      INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (user, device)
);

CREATE TABLE sessions (
    token_hash    BLOB PRIMARY KEY,       -- SHA-256 of the bearer token
    user          TEXT NOT NULL,
    device        TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    FOREIGN KEY (user, device) REFERENCES devices(user, device) ON DELETE CASCADE
);

CREATE TABLE queue (
    user           TEXT NOT NULL,
    device         TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    message_id     BLOB NOT NULL,
    payload        BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (user, device, seq),
    UNIQUE (user, device, message_id),
    FOREIGN KEY (user, device) REFERENCES devices(user, device) ON DELETE CASCADE
);

CREATE TABLE key_packages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user        TEXT NOT NULL,
    device      TEXT NOT NULL,
    key_package BLOB NOT NULL,
    last_resort INTEGER NOT NULL DEFAULT 0,
    FOREIGN KEY (user, device) REFERENCES devices(user, device) ON DELETE CASCADE
);
CREATE INDEX key_packages_by_device ON key_packages(user, device, last_resort, id);

CREATE TABLE key_bundles (
    user                TEXT NOT NULL,
    device              TEXT NOT NULL,
    bundle              BLOB NOT NULL,
    identity_key        BLOB NOT NULL,
    delivery_token_hash BLOB,
    kt_index            INTEGER NOT NULL,
    PRIMARY KEY (user, device),
    FOREIGN KEY (user, device) REFERENCES devices(user, device) ON DELETE CASCADE
);
CREATE INDEX key_bundles_by_identity ON key_bundles(identity_key);

CREATE TABLE kt_leaves (
    idx       INTEGER PRIMARY KEY,        -- 0-based leaf index, dense
    leaf_hash BLOB NOT NULL
);

CREATE TABLE channels (
    id            BLOB PRIMARY KEY,
    name          TEXT NOT NULL,
    owner         TEXT NOT NULL,
    mls_group_id  BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE channel_members (
    channel_id BLOB NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    user       TEXT NOT NULL,
    PRIMARY KEY (channel_id, user)
);

CREATE TABLE blobs (
    sha256        BLOB PRIMARY KEY,
    owner         TEXT NOT NULL,
    size          INTEGER NOT NULL,
    received      INTEGER NOT NULL,
    complete      INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX blobs_by_owner ON blobs(owner);

CREATE TABLE endpoints (
    user          TEXT NOT NULL,
    device        TEXT NOT NULL,
    addresses     TEXT NOT NULL,          -- newline-separated "ip:port"
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (user, device),
    FOREIGN KEY (user, device) REFERENCES devices(user, device) ON DELETE CASCADE
);

CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,               -- 'opaque_setup', 'kt_log_key'
    value BLOB NOT NULL
);
