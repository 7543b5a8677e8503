-- quicproquo server schema, version 6: channel membership is an invitation the invitee
-- answers. Only accepted members count as members: for "known" senders, endpoint lookups,
-- typing and changes. Memberships from before were made without consent and stay invitations
-- (the owner's own stays accepted).
ALTER TABLE channel_members ADD COLUMN state TEXT NOT NULL DEFAULT 'invited'
    CHECK (state IN ('invited', 'accepted'));
UPDATE channel_members SET state = 'accepted'
    WHERE user = (SELECT owner FROM channels WHERE channels.id = channel_members.channel_id);
CREATE INDEX channels_by_owner ON channels(owner);
