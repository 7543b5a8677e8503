//! Blobs: encrypted attachments, content-addressed by SHA-256, uploaded in resumable chunks.
//!
//! Each chunk goes to the store with the progress in one transaction (the store refuses a
//! chunk that does not start where the stored bytes end, so two uploads of one blob cannot
//! interleave), and an interrupted upload resumes where it stopped, on any node. When the
//! last byte arrives the stored bytes are hashed; a mismatch drops them.

use futures::StreamExt;
use qpq_proto::v1::{self, blob_server::Blob};
use qrpc::{RequestContext, ResponseStream, Status, Streaming};
use sha2::Digest;

use crate::api::Api;
use crate::api::validate;
use crate::session::caller;
use crate::store::{Store, StoreError};

/// Largest chunk, both directions.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// SHA-256 of a blob's stored bytes, read back chunk by chunk.
async fn stored_sha256<S: Store>(store: &S, sha: &[u8], size: u64) -> Result<[u8; 32], Status> {
    let mut hasher = sha2::Sha256::new();
    let mut offset = 0u64;
    while offset < size {
        let chunk = store.read_blob(sha.to_vec(), offset).await?;
        if chunk.is_empty() {
            break;
        }
        offset += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok(hasher.finalize().into())
}

/// Where an interrupted upload resumes: only its owner may continue it, with the same size.
fn resume_point(row: &crate::store::BlobRow, me: &str, total: u64) -> Result<u64, Status> {
    if row.owner != me {
        return Err(Status::permission_denied(
            "another user is uploading this blob",
        ));
    }
    if row.size != total {
        return Err(Status::invalid_argument(
            "total_size differs from the interrupted upload",
        ));
    }
    Ok(row.received)
}

impl<S: Store> Blob for Api<S> {
    async fn upload_blob(
        &self,
        ctx: RequestContext,
        mut chunks: Streaming<v1::BlobChunk>,
    ) -> Result<v1::UploadBlobResponse, Status> {
        let me = caller(&ctx)?;
        self.check_write(&me)?;
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("upload: no chunk sent"))?;
        validate::exact_len("sha256", &first.sha256, 32)?;
        let sha = first.sha256.to_vec();
        let total = first.total_size;
        if total == 0 || total > self.state.limits.max_blob_bytes {
            return Err(Status::invalid_argument(format!(
                "total_size: 1 to {} bytes",
                self.state.limits.max_blob_bytes
            )));
        }
        self.state
            .plugins
            .check(|| crate::plugins::Event::BlobUpload {
                user: me.user.clone(),
                size: total,
            })
            .await?;
        if let Some(row) = self.state.store.blob(sha.clone()).await?
            && row.complete
        {
            // Content-addressed: the same bytes are already here.
            return Ok(v1::UploadBlobResponse {
                received: row.size,
                complete: true,
            });
        }
        // A second uploader of the blob passes the same owner and quota checks, and the store
        // takes each chunk only where the stored bytes end.
        let mut received = match self.state.store.blob(sha.clone()).await? {
            Some(row) if row.complete => {
                return Ok(v1::UploadBlobResponse {
                    received: row.size,
                    complete: true,
                });
            }
            Some(row) => resume_point(&row, &me.user, total)?,
            None => {
                match self
                    .state
                    .store
                    .begin_blob(
                        sha.clone(),
                        me.user.clone(),
                        total,
                        self.state.limits.blob_quota_bytes,
                        self.state.now_ms(),
                    )
                    .await
                {
                    Ok(()) => 0,
                    Err(StoreError::AlreadyExists) => {
                        // Created since we looked (by a claim released in between): the same
                        // checks as any resume apply.
                        let row = self
                            .state
                            .store
                            .blob(sha.clone())
                            .await?
                            .ok_or_else(|| Status::aborted("blob upload raced; retry"))?;
                        resume_point(&row, &me.user, total)?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };

        let mut next = Some(first);
        while let Some(chunk) = next {
            if !chunk.data.is_empty() {
                validate::max_len("data", chunk.data.len(), CHUNK_BYTES)?;
                if chunk.offset != received {
                    return Err(Status::failed_precondition(format!(
                        "offset: expected {received}, got {}",
                        chunk.offset
                    )));
                }
                let end = received.saturating_add(chunk.data.len() as u64);
                if end > total {
                    return Err(Status::invalid_argument("data runs past total_size"));
                }
                received = self
                    .state
                    .store
                    .append_blob(sha.clone(), received, chunk.data.to_vec())
                    .await?;
            }
            if received == total {
                break;
            }
            next = chunks.message().await?;
        }
        if received < total {
            return Ok(v1::UploadBlobResponse {
                received,
                complete: false,
            });
        }
        // The epoch the check is about: a concurrent upload that drops the bytes meanwhile
        // moves the blob to the next one, and this outcome then changes nothing.
        let epoch = self
            .state
            .store
            .blob(sha.clone())
            .await?
            .filter(|row| row.received == total && !row.complete)
            .map(|row| row.epoch)
            .ok_or_else(|| Status::aborted("another upload of this blob moved it; retry"))?;
        if stored_sha256(&self.state.store, &sha, total)
            .await?
            .as_slice()
            != sha.as_slice()
        {
            self.state.store.finish_blob(sha, epoch, false).await?;
            return Err(Status::data_loss(
                "uploaded bytes do not match sha256; upload again",
            ));
        }
        if !self
            .state
            .store
            .finish_blob(sha.clone(), epoch, true)
            .await?
        {
            // Complete already (another upload finished it), or moved on: what is stored now
            // decides.
            let complete = self
                .state
                .store
                .blob(sha)
                .await?
                .is_some_and(|row| row.complete);
            if !complete {
                return Err(Status::aborted(
                    "another upload of this blob changed it meanwhile; upload again",
                ));
            }
        }
        Ok(v1::UploadBlobResponse {
            received: total,
            complete: true,
        })
    }

    async fn download_blob(
        &self,
        ctx: RequestContext,
        request: v1::DownloadBlobRequest,
    ) -> Result<ResponseStream<v1::BlobChunk>, Status> {
        caller(&ctx)?;
        validate::exact_len("sha256", &request.sha256, 32)?;
        let row = self
            .state
            .store
            .blob(request.sha256.to_vec())
            .await?
            .filter(|r| r.complete)
            .ok_or_else(|| Status::not_found("no such blob"))?;
        if request.offset > row.size {
            return Err(Status::out_of_range("offset past the end of the blob"));
        }
        let sha = request.sha256.to_vec();
        let total = row.size;
        let state = std::sync::Arc::clone(&self.state);
        let stream = futures::stream::unfold(request.offset, move |offset| {
            let (sha, state) = (sha.clone(), std::sync::Arc::clone(&state));
            async move {
                if offset >= total {
                    return None;
                }
                match state.store.read_blob(sha.clone(), offset).await {
                    Ok(data) if !data.is_empty() => {
                        let next = offset + data.len() as u64;
                        let chunk = v1::BlobChunk {
                            sha256: sha.into(),
                            total_size: total,
                            offset,
                            data: data.into(),
                        };
                        Some((Ok(chunk), next))
                    }
                    Ok(_) => {
                        tracing::error!(offset, total, "a complete blob is missing bytes");
                        Some((Err(Status::internal("blob storage failure")), total))
                    }
                    Err(e) => Some((Err(Status::from(e)), total)),
                }
            }
        });
        Ok(stream.boxed())
    }
}
