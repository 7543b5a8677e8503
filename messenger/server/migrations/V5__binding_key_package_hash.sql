-- quicproquo server schema, version 5: each key bundle keeps the last-resort key-package hash
-- that its key-transparency leaf was built with, so every proof rebuilds exactly that leaf
-- (NULL for bindings written before: their proofs use the current last-resort package).
ALTER TABLE key_bundles ADD COLUMN kt_key_package_hash BLOB;
