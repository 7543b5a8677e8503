-- quicproquo server schema, version 3: running per-sender totals in each queue, so the
-- per-sender quota check on enqueue is one lookup instead of a scan of the sender's messages.
CREATE TABLE queue_senders (
    user     TEXT NOT NULL,
    device   TEXT NOT NULL,
    sender   TEXT NOT NULL,
    messages INTEGER NOT NULL,
    bytes    INTEGER NOT NULL,
    PRIMARY KEY (user, device, sender),
    FOREIGN KEY (user, device) REFERENCES devices(user, device) ON DELETE CASCADE
) WITHOUT ROWID;
INSERT INTO queue_senders (user, device, sender, messages, bytes)
    SELECT user, device, sender, COUNT(*), SUM(LENGTH(payload)) FROM queue
    GROUP BY user, device, sender;
DROP INDEX queue_by_sender;
