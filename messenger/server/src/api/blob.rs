//! Blobs: encrypted attachments, content-addressed by SHA-256, uploaded in resumable chunks.
//!
//! Bytes go to `<data_dir>/blobs/partial/<sha256>` as they arrive, and the store records how
//! many are durable, so an interrupted upload resumes where it stopped. When the last byte
//! arrives the file is hashed; only a matching blob moves to `<data_dir>/blobs/<sha256>`.

use std::path::PathBuf;

use futures::StreamExt;
use qpq_proto::v1::{self, blob_server::Blob};
use qrpc::{RequestContext, ResponseStream, Status, Streaming};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::api::Api;
use crate::api::validate;
use crate::session::caller;
use crate::store::{Store, StoreError};
use crate::util::hex;

/// Largest chunk, both directions.
pub const CHUNK_BYTES: usize = 256 * 1024;

fn io_error(e: std::io::Error) -> Status {
    tracing::error!(error = %e, "blob storage I/O failed");
    Status::internal("blob storage failure")
}

impl<S> Api<S> {
    fn complete_path(&self, sha: &[u8]) -> PathBuf {
        self.state.blob_dir.join(hex(sha))
    }

    fn partial_path(&self, sha: &[u8]) -> PathBuf {
        self.state.blob_dir.join("partial").join(hex(sha))
    }
}

async fn file_sha256(path: &PathBuf) -> std::io::Result<[u8; 32]> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
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
        if let Some(row) = self.state.store.blob(sha.clone()).await?
            && row.complete
        {
            // Content-addressed: the same bytes are already here.
            return Ok(v1::UploadBlobResponse {
                received: row.size,
                complete: true,
            });
        }
        // One upload of a blob at a time: a second uploader can neither skip the owner and
        // quota checks nor write into the first one's file.
        let _claim = self.state.claim_upload(&sha).ok_or_else(|| {
            Status::aborted("another upload of this blob is in progress; retry later")
        })?;
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

        let partial = self.partial_path(&sha);
        if let Some(dir) = partial.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io_error)?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&partial)
            .await
            .map_err(io_error)?;
        // Bytes written after the last recorded progress (a crash in between) are discarded.
        file.set_len(received).await.map_err(io_error)?;
        file.seek(std::io::SeekFrom::Start(received))
            .await
            .map_err(io_error)?;

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
                file.write_all(&chunk.data).await.map_err(io_error)?;
                file.sync_data().await.map_err(io_error)?;
                received = end;
                self.state
                    .store
                    .blob_progress(sha.clone(), received, false)
                    .await?;
            }
            if received == total {
                break;
            }
            next = chunks.message().await?;
        }
        drop(file);
        if received < total {
            return Ok(v1::UploadBlobResponse {
                received,
                complete: false,
            });
        }
        if file_sha256(&partial).await.map_err(io_error)?.as_slice() != sha.as_slice() {
            let _ = tokio::fs::remove_file(&partial).await;
            self.state.store.blob_progress(sha, 0, false).await?;
            return Err(Status::data_loss(
                "uploaded bytes do not match sha256; upload again",
            ));
        }
        tokio::fs::rename(&partial, self.complete_path(&sha))
            .await
            .map_err(io_error)?;
        self.state.store.blob_progress(sha, total, true).await?;
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
        let mut file = tokio::fs::File::open(self.complete_path(&request.sha256))
            .await
            .map_err(io_error)?;
        file.seek(std::io::SeekFrom::Start(request.offset))
            .await
            .map_err(io_error)?;
        let sha = request.sha256.clone();
        let total = row.size;
        let stream = futures::stream::unfold((file, request.offset), move |(mut file, offset)| {
            let sha = sha.clone();
            async move {
                if offset >= total {
                    return None;
                }
                let mut buf = vec![
                    0u8;
                    CHUNK_BYTES
                        .min(usize::try_from(total - offset).unwrap_or(CHUNK_BYTES))
                ];
                match file.read_exact(&mut buf).await {
                    Ok(_) => {
                        let next = offset + buf.len() as u64;
                        let chunk = v1::BlobChunk {
                            sha256: sha,
                            total_size: total,
                            offset,
                            data: buf.into(),
                        };
                        Some((Ok(chunk), (file, next)))
                    }
                    Err(e) => Some((Err(io_error(e)), (file, total))),
                }
            }
        });
        Ok(stream.boxed())
    }
}
