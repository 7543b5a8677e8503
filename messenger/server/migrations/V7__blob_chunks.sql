-- quicproquo server schema, version 7: blob bytes live in the database, in the chunks they
-- were uploaded in, so that the store alone serves every upload and download (files under
-- <data_dir>/blobs from before are imported once at start).
CREATE TABLE blob_chunks (
    sha256       BLOB NOT NULL REFERENCES blobs(sha256) ON DELETE CASCADE,
    offset_bytes INTEGER NOT NULL,
    bytes        BLOB NOT NULL,
    PRIMARY KEY (sha256, offset_bytes)
);
-- A failed hash check drops a blob's bytes and starts its next epoch; an upload's check and its
-- outcome name the epoch they were about.
ALTER TABLE blobs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
