//! Attachments: encrypted, uploaded in resumable chunks with progress, verified on download.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use qpq_sdk::{ClientEvent, Progress};

#[tokio::test]
async fn a_5_mib_attachment_survives_a_server_restart_mid_upload() {
    let mut server = Server::start().await;
    let Pair {
        a_dir: _a_dir,
        b_dir: _b_dir,
        alice,
        bob,
        mut bob_events,
        dm,
    } = pair(&server).await;

    let file: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let upload = {
        let alice = alice.clone();
        let file = file.clone();
        let conversation = dm.id;
        tokio::spawn(async move {
            alice
                .conversation(&conversation)
                .unwrap()
                .send_attachment("photo.raw", "image/x-raw", "look", &file, |p| {
                    let _ = tx.send(p);
                })
                .await
        })
    };
    // After the first confirmed megabyte, the server goes away and comes back.
    let first = rx.recv().await.unwrap();
    assert!(first.done > 0 && first.done < first.total);
    server.restart().await;
    let id = upload.await.unwrap().unwrap().id();
    let mut seen = vec![first];
    while let Ok(p) = rx.try_recv() {
        seen.push(p);
    }
    assert!(
        seen.windows(2).all(|w| w[0].done <= w[1].done),
        "the upload resumed instead of starting over: {seen:?}"
    );
    assert_eq!(seen.last().unwrap().done, seen.last().unwrap().total);
    // The restart interrupted it: after reconnecting, the upload asked the server where it
    // stood (the same position reported twice) and went on from there.
    assert!(
        seen.windows(2).any(|w| w[0].done == w[1].done),
        "no resume observed: {seen:?}"
    );

    let got = next(&mut bob_events, |e| match e {
        ClientEvent::MessageReceived(m) if m.attachment.is_some() => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(got.id, id);
    assert_eq!(got.body, "look");
    let info = got.attachment.unwrap();
    assert_eq!(
        (info.name.as_str(), info.size),
        ("photo.raw", file.len() as u64)
    );
    let mut last = Progress { done: 0, total: 0 };
    let bytes = bob.download_attachment(&id, |p| last = p).await.unwrap();
    assert_eq!(bytes.as_slice(), file.as_slice());
    assert_eq!(last.done, last.total);

    // The server only ever held ciphertext: no stored chunk begins like the file.
    let db = rusqlite::Connection::open(server.dir.path().join("qpq.db")).unwrap();
    let mut chunks = db
        .prepare("SELECT bytes FROM blob_chunks WHERE offset_bytes = 0")
        .unwrap();
    let starts: Vec<Vec<u8>> = chunks
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!starts.is_empty());
    for stored in starts {
        assert_ne!(&stored[..64], &file[..64]);
    }
}

#[tokio::test]
async fn attachment_limits_and_unknown_messages_are_clear_errors() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = account(&server, dir.path(), "alice", "laptop").await;
    let bob_dir = tempfile::tempdir().unwrap();
    let _bob = account(&server, bob_dir.path(), "bob", "phone").await;
    let dm = alice.create_dm("bob").await.unwrap();
    // Alice's store again, with a 10-byte attachment limit.
    alice.close().await;
    let limited = {
        let mut l = qpq_sdk::ClientLimits::default();
        l.max_attachment_bytes = 10;
        server.client_with(dir.path(), l)
    };
    // The limit is inclusive: 11 bytes are refused before anything is encrypted or sent.
    let err = limited
        .conversation(&dm.id)
        .unwrap()
        .send_attachment("f", "", "", &[0; 11], |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most 10 bytes"), "{err}");
    let err = limited
        .download_attachment(&qpq_sdk::MessageId([1; 16]), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, qpq_sdk::SdkError::NotFound(_)), "{err}");
    let err = limited
        .conversation(&dm.id)
        .unwrap()
        .send_attachment("", "", "", b"x", |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, qpq_sdk::SdkError::InvalidArgument(_)),
        "{err}"
    );
}

/// A saved attachment is a new private file under a cleaned name; a name taken by a file or
/// by a planted link gets a number instead, and the link's target is left alone.
#[tokio::test]
async fn a_saved_attachment_never_writes_through_an_existing_file_or_link() {
    let server = Server::start().await;
    let mut p = pair(&server).await;
    let sent = p
        .alice
        .conversation(&p.dm.id)
        .unwrap()
        .send_attachment("../../notes.txt", "text/plain", "", b"secret plan", |_| {})
        .await
        .unwrap()
        .id();
    next(&mut p.bob_events, |e| match e {
        ClientEvent::MessageReceived(m) if m.id == sent => Some(()),
        _ => None,
    })
    .await;

    let downloads = tempfile::tempdir().unwrap();
    let first = p
        .bob
        .save_attachment(&sent, downloads.path(), |_| {})
        .await
        .unwrap();
    assert_eq!(first, downloads.path().join("notes.txt"));
    assert_eq!(std::fs::read(&first).unwrap(), b"secret plan");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let second = p
        .bob
        .save_attachment(&sent, downloads.path(), |_| {})
        .await
        .unwrap();
    assert_eq!(second, downloads.path().join("notes (1).txt"));

    #[cfg(unix)]
    {
        let victim = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(victim.path(), downloads.path().join("notes (2).txt")).unwrap();
        let third = p
            .bob
            .save_attachment(&sent, downloads.path(), |_| {})
            .await
            .unwrap();
        assert_eq!(third, downloads.path().join("notes (3).txt"));
        assert!(std::fs::read(victim.path()).unwrap().is_empty());
    }
    let err = p
        .bob
        .save_attachment(&qpq_sdk::MessageId([9; 16]), downloads.path(), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, qpq_sdk::SdkError::NotFound(_)), "{err}");
}
