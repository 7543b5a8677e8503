-- quicproquo server schema, version 8: the signed tree head of each log size, kept, so that
-- a restart (or another node) serves the head already signed for a size instead of a new one.
CREATE TABLE kt_heads (
    tree_size INTEGER PRIMARY KEY,
    head      BLOB NOT NULL
);
