//! Attachments: encrypted, uploaded in chunks before their message is queued, downloaded
//! and checked on demand.

use qpq_proto::v1;
use qrpc::Code;
use zeroize::Zeroizing;

use crate::error::{SdkError, SdkResult};
use crate::model::{AttachmentInfo, ConversationId, Message, MessageId, Progress};

use crate::client::QpqClient;
use crate::client::backoff;
use crate::client::futures_iter;
use crate::client::retryable;
use crate::send_queue::echo_state;

impl QpqClient {
    /// Sends a file: encrypts it under a fresh key, uploads the ciphertext as a blob in
    /// chunks (resuming after a disconnect, `progress` called as the server confirms bytes),
    /// then sends a message carrying the key to the conversation.
    pub(crate) async fn send_attachment(
        &self,
        conversation: &ConversationId,
        name: &str,
        mime: &str,
        caption: &str,
        data: &[u8],
        mut progress: impl FnMut(Progress) + Send,
    ) -> SdkResult<MessageId> {
        if data.len() as u64 > self.inner.limits.max_attachment_bytes {
            return Err(SdkError::InvalidArgument(format!(
                "attachment: at most {} bytes",
                self.inner.limits.max_attachment_bytes
            )));
        }
        if name.is_empty() || name.len() > 255 {
            return Err(SdkError::InvalidArgument("name: 1 to 255 bytes".into()));
        }
        if self.inner.store.conversation(conversation)?.is_none() {
            return Err(SdkError::NotFound(format!("conversation {conversation}")));
        }
        let sealed = qpq_core::attachment::encrypt(data);
        self.upload(&sealed.ciphertext, &sealed.sha256, &mut progress)
            .await?;
        let wire = v1::Attachment {
            blob_sha256: sealed.sha256.to_vec().into(),
            key: sealed.key.to_vec().into(),
            name: name.to_owned(),
            size: data.len() as u64,
            mime: mime.to_owned(),
            caption: caption.to_owned(),
        };
        let conversation = *conversation;
        let info = AttachmentInfo::from_wire(wire.clone());
        let caption = caption.to_owned();
        self.send_content(
            &conversation,
            v1::content::Body::Attachment(wire),
            move |id, me, sent_at_ms, nobody| {
                Some(Message {
                    body: caption,
                    attachment: Some(info),
                    ..Message::new(id, conversation, me, sent_at_ms, true, echo_state(nobody))
                })
            },
        )
    }

    /// Uploads a blob in calls of up to 1 MiB, each answered with the bytes the server holds,
    /// so an interrupted upload resumes where the server stopped.
    pub(crate) async fn upload(
        &self,
        ciphertext: &[u8],
        sha256: &[u8; 32],
        progress: &mut (impl FnMut(Progress) + Send),
    ) -> SdkResult<()> {
        const CHUNK: usize = 256 * 1024;
        const CALL: usize = 4 * CHUNK;
        let total = ciphertext.len() as u64;
        let chunk = |offset: u64, data: &[u8]| v1::BlobChunk {
            sha256: sha256.to_vec().into(),
            total_size: total,
            offset,
            data: data.to_vec().into(),
        };
        let mut offset: Option<u64> = Some(0);
        let mut failures = 0u32;
        loop {
            let Some(rpc) = self.transfer_session(&mut failures).await? else {
                offset = None;
                continue;
            };
            let blobs = v1::blob_client::BlobClient::new(rpc);
            // Without a known offset, ask: a call with no data answers how much is stored.
            let from = offset.unwrap_or(0);
            let call: Vec<v1::BlobChunk> = match offset {
                None => vec![chunk(0, &[])],
                Some(from) => {
                    let start = usize::try_from(from)
                        .unwrap_or(usize::MAX)
                        .min(ciphertext.len());
                    let end = (start + CALL).min(ciphertext.len());
                    ciphertext[start..end]
                        .chunks(CHUNK)
                        .scan(from, |at, piece| {
                            let c = chunk(*at, piece);
                            *at += piece.len() as u64;
                            Some(c)
                        })
                        .collect()
                }
            };
            let answer = blobs.upload_blob(futures_iter(call)).await;
            match answer {
                Ok(r) => {
                    failures = 0;
                    progress(Progress {
                        done: r.received,
                        total,
                    });
                    if r.complete {
                        return Ok(());
                    }
                    offset = Some(r.received);
                    let _ = from;
                }
                Err(status) => {
                    self.after_failed_attempt(status, &mut failures).await?;
                    offset = None;
                }
            }
        }
    }

    /// Downloads, verifies and decrypts the file of an attachment message; `progress` is called
    /// as bytes arrive. An interrupted download resumes where it stopped.
    pub async fn download_attachment(
        &self,
        id: &MessageId,
        mut progress: impl FnMut(Progress) + Send,
    ) -> SdkResult<Zeroizing<Vec<u8>>> {
        use futures::StreamExt;
        let wire = self
            .inner
            .store
            .attachment(id)?
            .ok_or_else(|| SdkError::NotFound(format!("attachment of message {id}")))?;
        let wire = AttachmentInfo::decode(&wire)?.wire;
        // The size comes from the sender: bounded, and the buffer grows as chunks arrive.
        let limit = self.inner.limits.max_attachment_bytes;
        if wire.size > limit {
            return Err(SdkError::Invalid(format!(
                "the attachment announces {} bytes, above this client's limit of {limit}",
                wire.size
            )));
        }
        let total = wire
            .size
            .checked_add(qpq_core::attachment::OVERHEAD as u64)
            .ok_or_else(|| SdkError::Invalid("attachment size out of range".into()))?;
        let mut data: Vec<u8> = Vec::new();
        let mut failures = 0u32;
        while (data.len() as u64) < total {
            let Some(rpc) = self.transfer_session(&mut failures).await? else {
                continue;
            };
            let blobs = v1::blob_client::BlobClient::new(rpc);
            let result: Result<(), qrpc::Status> = async {
                let mut stream = blobs
                    .download_blob(&v1::DownloadBlobRequest {
                        sha256: wire.blob_sha256.clone(),
                        offset: data.len() as u64,
                    })
                    .await?;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    // An empty chunk would let a server stall the download forever.
                    if chunk.offset != data.len() as u64
                        || chunk.data.is_empty()
                        || data.len() as u64 + chunk.data.len() as u64 > total
                    {
                        return Err(qrpc::Status::data_loss("blob chunk out of place"));
                    }
                    data.extend_from_slice(&chunk.data);
                    progress(Progress {
                        done: data.len() as u64,
                        total,
                    });
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) if (data.len() as u64) < total => {
                    return Err(SdkError::Invalid("blob shorter than announced".into()));
                }
                Ok(()) => {}
                Err(status) => self.after_failed_attempt(status, &mut failures).await?,
            }
        }
        qpq_core::attachment::decrypt(&wire.key, &wire.blob_sha256, &data)
            .map_err(|e| SdkError::Invalid(e.to_string()))
    }

    /// Downloads an attachment (as [`download_attachment`](Self::download_attachment)) and
    /// saves it in `dir` under the name its sender gave, with any directory part and control
    /// characters removed, as a new file only this user can read. An existing file, or a link
    /// planted under that name, is never written through: the name gets ` (1)`, ` (2)`, …
    /// instead. Returns the path written.
    pub async fn save_attachment(
        &self,
        id: &MessageId,
        dir: &std::path::Path,
        progress: impl FnMut(Progress) + Send,
    ) -> SdkResult<std::path::PathBuf> {
        let message = self
            .message(id)?
            .ok_or_else(|| SdkError::NotFound(format!("message {id}")))?;
        let info = message
            .attachment
            .ok_or_else(|| SdkError::NotFound(format!("attachment of message {id}")))?;
        let bytes = self.download_attachment(id, progress).await?;
        let name = attachment_file_name(&info.name);
        let mut parts = std::path::Path::new(&name).components();
        if !matches!(parts.next(), Some(std::path::Component::Normal(_))) || parts.next().is_some()
        {
            return Err(SdkError::Invalid(format!(
                "the attachment's name {name:?} is not a plain file name"
            )));
        }
        let (stem, extension) = match name.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => (stem.to_owned(), format!(".{ext}")),
            _ => (name.clone(), String::new()),
        };
        for n in 0..1000u32 {
            let candidate = if n == 0 {
                dir.join(&name)
            } else {
                dir.join(format!("{stem} ({n}){extension}"))
            };
            match qpq_core::files::create_new_private(&candidate, &bytes) {
                Ok(()) => return Ok(candidate),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(SdkError::Io(e)),
            }
        }
        Err(SdkError::InvalidArgument(format!(
            "{} holds 1000 files named like {name}; choose another folder",
            dir.display()
        )))
    }

    /// The session for one attempt of a transfer. A server that cannot be reached (or a
    /// session that cannot be resumed yet) counts as a failed attempt like a failed call:
    /// after it is waited out the answer is `None`, try again, until the attempts are used up.
    pub(crate) async fn transfer_session(
        &self,
        failures: &mut u32,
    ) -> SdkResult<Option<qrpc::Client>> {
        match self.inner.session().await {
            Ok(rpc) => Ok(Some(rpc)),
            Err(SdkError::Server(status)) => {
                tracing::debug!(%status, "no session for the transfer yet");
                self.after_failed_attempt(status, failures).await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// After a failed attempt of a transfer: `Ok` once another attempt may follow (the session
    /// resumed if the server no longer knew it, else a backoff waited out), or the error when
    /// it cannot be retried or the attempts are used up.
    pub(crate) async fn after_failed_attempt(
        &self,
        status: qrpc::Status,
        failures: &mut u32,
    ) -> SdkResult<()> {
        if !retryable(&status) || *failures >= self.inner.limits.transfer_attempts {
            return Err(status.into());
        }
        *failures += 1;
        if status.code() == Code::Unauthenticated {
            self.inner.resume().await?;
        } else {
            tokio::time::sleep(backoff(&self.inner.limits, *failures)).await;
        }
        Ok(())
    }
}

/// A file name for an attachment its sender named `name`, safe to create in a folder on any
/// platform: the last path component; control characters, bidirectional and other invisible
/// format characters, and the characters Windows reserves (`: < > " | ? *`) replaced by `_`;
/// no trailing dots or spaces; a `_` before a leading `.` (no hidden files: a `.bashrc` stays
/// visible and inert), a leading `-`, and Windows device names (`CON`, `COM1`, …); at most 200
/// bytes, shortened in the stem so that the extension stays; and never empty or only dots
/// (then `download`).
pub fn attachment_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_control() || is_invisible_format(c) || ":<>\"|?*".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect();
    let clean = clean.trim_end_matches(['.', ' ']);
    if clean.chars().all(|c| c == '.' || c == ' ') {
        return "download".to_owned();
    }
    let stem = clean.split('.').next().unwrap_or_default().trim_end();
    let guarded = if is_windows_device(stem) || clean.starts_with(['-', '.']) {
        format!("_{clean}")
    } else {
        clean.to_owned()
    };
    shorten(&guarded, 200)
}

/// `name` cut to at most `max` bytes on a character boundary, from the end of its stem: the
/// last extension (up to 16 bytes) is kept, so that a long name cannot hide what it is.
fn shorten(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let (stem, extension) = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() < 16 => (stem, &name[stem.len()..]),
        _ => (name, ""),
    };
    let mut end = max - extension.len();
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{extension}", &stem[..end])
}

/// Whether `stem` names a Windows device (`CON`, `PRN`, `AUX`, `NUL`, `CONIN$`, `CONOUT$`,
/// `COM0`–`COM9`, `LPT0`–`LPT9`, the superscript digits included), whatever its case.
fn is_windows_device(stem: &str) -> bool {
    let upper = stem.to_ascii_uppercase();
    if ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"].contains(&upper.as_str()) {
        return true;
    }
    let mut chars = upper.chars();
    let prefix: String = chars.by_ref().take(3).collect();
    let rest: Vec<char> = chars.collect();
    (prefix == "COM" || prefix == "LPT")
        && rest.len() == 1
        && rest
            .iter()
            .all(|c| c.is_ascii_digit() || "¹²³".contains(*c))
}

/// Characters that change how text around them is shown without showing themselves: the
/// bidirectional controls (an `invoice\u{202E}fdp.exe` that reads as "invoiceexe.pdf"), zero-width
/// characters and the byte-order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

#[cfg(test)]
mod tests {
    use super::attachment_file_name;

    #[test]
    fn attachment_names_lose_their_directories_and_control_characters() {
        assert_eq!(attachment_file_name("report.pdf"), "report.pdf");
        assert_eq!(attachment_file_name("../../etc/passwd"), "passwd");
        assert_eq!(attachment_file_name("C:\\Users\\x\\evil.exe"), "evil.exe");
        assert_eq!(attachment_file_name("a\nb\u{1b}[31m.txt"), "a_b_[31m.txt");
        assert_eq!(attachment_file_name(".."), "download");
        assert_eq!(attachment_file_name("dir/"), "download");
        assert_eq!(attachment_file_name(""), "download");
        let long = "é".repeat(300);
        assert_eq!(attachment_file_name(&long).len(), 200);
    }

    #[test]
    fn attachment_names_are_safe_on_windows_and_show_what_they_are() {
        // A drive-relative name would replace the folder it is joined to on Windows.
        assert_eq!(attachment_file_name("C:version.dll"), "C_version.dll");
        assert_eq!(attachment_file_name("notes.txt:hidden"), "notes.txt_hidden");
        assert_eq!(attachment_file_name("a<b>c\"d|e?f*g"), "a_b_c_d_e_f_g");
        assert_eq!(attachment_file_name("CON"), "_CON");
        assert_eq!(attachment_file_name("com1.txt"), "_com1.txt");
        assert_eq!(attachment_file_name("lpt9"), "_lpt9");
        assert_eq!(attachment_file_name("console.txt"), "console.txt");
        assert_eq!(attachment_file_name("abé"), "abé");
        assert_eq!(attachment_file_name("report. . "), "report");
        assert_eq!(attachment_file_name("..."), "download");
        assert_eq!(attachment_file_name("-rf"), "_-rf");
        assert_eq!(attachment_file_name(".bashrc"), "_.bashrc");
        assert_eq!(attachment_file_name("report.pdf/.gitconfig"), "_.gitconfig");
        assert_eq!(attachment_file_name("COM\u{b9}.txt"), "_COM\u{b9}.txt");
        assert_eq!(attachment_file_name("conout$"), "_conout$");
        assert_eq!(attachment_file_name("COM10"), "COM10");
        // A long name keeps its real extension.
        let long = format!("{}.exe", "A".repeat(300));
        let cut = attachment_file_name(&long);
        assert_eq!(cut.len(), 200);
        assert!(cut.ends_with("A.exe"), "{cut}");
        let tricky = format!("{}.exe_copy.pdf", "A".repeat(196));
        assert!(attachment_file_name(&tricky).ends_with(".pdf"));
        // An RTL override would show "invoiceexe.pdf".
        assert_eq!(
            attachment_file_name("invoice\u{202E}fdp.exe"),
            "invoice_fdp.exe"
        );
        assert_eq!(attachment_file_name("a\u{200B}b\u{2066}c"), "a_b_c");
        for hostile in [
            "C:version.dll",
            "..\\..\\x",
            "/etc/passwd",
            "\\\\server\\share\\f",
            "CON",
            "a\0b",
        ] {
            let name = attachment_file_name(hostile);
            let mut parts = std::path::Path::new(&name).components();
            assert!(
                matches!(parts.next(), Some(std::path::Component::Normal(_)))
                    && parts.next().is_none(),
                "{hostile:?} became {name:?}"
            );
        }
    }
}
