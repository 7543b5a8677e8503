-- quicproquo server schema, version 2: abuse controls.

-- Deduplication is scoped to the sender, and every queued message records who sent it
-- (user/device for a logged-in sender, '' for a sealed send), so per-sender quotas can count it.
CREATE TABLE queue_v2 (
    user           TEXT NOT NULL,
    device         TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    sender         TEXT NOT NULL DEFAULT '',
    message_id     BLOB NOT NULL,
    payload        BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (user, device, seq),
    UNIQUE (user, device, sender, message_id),
    FOREIGN KEY (user, device) REFERENCES devices(user, device) ON DELETE CASCADE
);
INSERT INTO queue_v2 (user, device, seq, sender, message_id, payload, received_at_ms)
    SELECT user, device, seq, '', message_id, payload, received_at_ms FROM queue;
DROP TABLE queue;
ALTER TABLE queue_v2 RENAME TO queue;
CREATE INDEX queue_by_sender ON queue(user, device, sender);

-- Running totals per queue, kept in the same transaction as every insert and delete, so
-- the byte and count limits need no scan.
ALTER TABLE devices ADD COLUMN queue_messages INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN queue_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE devices SET
    queue_messages = (SELECT COUNT(*) FROM queue q WHERE q.user = devices.user AND q.device = devices.device),
    queue_bytes = (SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM queue q WHERE q.user = devices.user AND q.device = devices.device);

-- A revoked device id stays revoked: it can never be registered again.
CREATE TABLE revoked_devices (
    user          TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    device        TEXT NOT NULL,
    revoked_at_ms INTEGER NOT NULL,
    PRIMARY KEY (user, device)
);

-- Who has written to whom: (user, peer) means `user` sent at least one message to `peer`.
-- A sender the recipient never wrote to and shares no channel with is a stranger.
CREATE TABLE contacts (
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    peer TEXT NOT NULL,
    PRIMARY KEY (user, peer)
) WITHOUT ROWID;

CREATE INDEX channel_members_by_user ON channel_members(user, channel_id);
CREATE INDEX sessions_by_expiry ON sessions(expires_at_ms);
CREATE INDEX endpoints_by_expiry ON endpoints(expires_at_ms);

-- One identity key belongs to one device. Earlier duplicates keep the first publisher.
DELETE FROM key_bundles WHERE rowid NOT IN (
    SELECT MIN(rowid) FROM key_bundles GROUP BY identity_key
);
DROP INDEX key_bundles_by_identity;
CREATE UNIQUE INDEX key_bundles_by_identity ON key_bundles(identity_key);
