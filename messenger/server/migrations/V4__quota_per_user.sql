-- quicproquo server schema, version 4: per-sender queue quotas count the sending user (all its
-- devices together), not each device; sealed sends (no sender) share the '' bucket.
DELETE FROM queue_senders;
INSERT INTO queue_senders (user, device, sender, messages, bytes)
    SELECT user, device,
           CASE WHEN instr(sender, '/') > 0 THEN substr(sender, 1, instr(sender, '/') - 1)
                ELSE sender END AS quota_key,
           COUNT(*), SUM(LENGTH(payload))
    FROM queue GROUP BY user, device, quota_key;
