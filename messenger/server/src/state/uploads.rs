//! Blob uploads in progress: one upload of a blob at a time.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::util::lock;

/// Blobs (by SHA-256) with an upload in progress.
#[derive(Default)]
pub(crate) struct Uploads(Mutex<HashSet<Vec<u8>>>);

impl Uploads {
    /// Claims the right to upload blob `sha256`; `None` while another upload of it runs.
    pub(crate) fn claim(self: &Arc<Self>, sha256: &[u8]) -> Option<UploadClaim> {
        lock(&self.0).insert(sha256.to_vec()).then(|| UploadClaim {
            uploads: Arc::clone(self),
            sha256: sha256.to_vec(),
        })
    }
}

/// The exclusive right to upload one blob; released on drop.
pub struct UploadClaim {
    uploads: Arc<Uploads>,
    sha256: Vec<u8>,
}

impl Drop for UploadClaim {
    fn drop(&mut self) {
        lock(&self.uploads.0).remove(&self.sha256);
    }
}
