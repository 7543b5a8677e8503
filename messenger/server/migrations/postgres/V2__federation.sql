-- Federation: the relay outbox (messages for users of other servers), per-destination retry
-- state and sending lease (one node sends to a destination at a time), the receiver's record
-- of relayed messages (idempotence beyond the queue), relay failures reported to senders, and
-- the peer log heads this server witnessed.

CREATE TABLE relay_outbox (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination      TEXT NOT NULL,
    sender_user      TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    sender_device    TEXT NOT NULL,
    recipient_user   TEXT NOT NULL,
    recipient_device TEXT NOT NULL,
    message_id       BYTEA NOT NULL,
    payload          BYTEA NOT NULL,
    created_at_ms    BIGINT NOT NULL,
    -- Held back by the destination (its limits) until then: this sender's later messages
    -- to the same device wait behind it, everything else goes on.
    hold_until_ms    BIGINT NOT NULL DEFAULT 0,
    UNIQUE (sender_user, sender_device, destination, recipient_user, recipient_device, message_id)
);
CREATE INDEX relay_outbox_by_destination ON relay_outbox(destination, id);
CREATE INDEX relay_outbox_by_pair ON relay_outbox(destination, sender_user, recipient_user, recipient_device, id);

CREATE TABLE relay_destinations (
    destination      TEXT PRIMARY KEY,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms  BIGINT NOT NULL DEFAULT 0,
    failing_since_ms BIGINT NOT NULL DEFAULT 0,
    lease_owner      TEXT NOT NULL DEFAULT '',
    lease_until_ms   BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE relay_seen (
    sender           TEXT NOT NULL,
    recipient_user   TEXT NOT NULL,
    recipient_device TEXT NOT NULL,
    message_id       BYTEA NOT NULL,
    expires_at_ms    BIGINT NOT NULL,
    PRIMARY KEY (sender, recipient_user, recipient_device, message_id)
);
CREATE INDEX relay_seen_by_expiry ON relay_seen(expires_at_ms);

CREATE TABLE relay_failures (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sender_user      TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    message_id       BYTEA NOT NULL,
    recipient_user   TEXT NOT NULL,
    recipient_device TEXT NOT NULL,
    reason           TEXT NOT NULL,
    retryable        BOOLEAN NOT NULL,
    failed_at_ms     BIGINT NOT NULL
);
CREATE INDEX relay_failures_by_sender ON relay_failures(sender_user, id);
CREATE INDEX relay_failures_by_age ON relay_failures(failed_at_ms);

CREATE TABLE witnessed_heads (
    domain    TEXT PRIMARY KEY,
    log_key   BYTEA NOT NULL,
    tree_size BIGINT NOT NULL,
    head      BYTEA NOT NULL
);
