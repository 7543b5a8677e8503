//! End-to-end flows over real QUIC with the generated clients.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use qpq_core::mls::{MlsMember, Suite};
use qpq_proto::v1::{
    self,
    server_event_push::{Event, Events},
};
use qrpc::Code;

#[tokio::test]
async fn register_login_and_wrong_password() {
    let h = start(|_| {}).await;
    let client = h.connect().await;
    register(&client, "alice", "s3cret password").await.unwrap();
    let err = register(&client, "alice", "other").await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    let ok = login(&client, "alice", "phone", "s3cret password")
        .await
        .unwrap();
    assert_eq!(ok.session_token.len(), 32);

    let other = h.connect().await;
    let err = login(&other, "alice", "phone", "wrong password")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = login(&other, "nobody", "phone", "whatever")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "unknown users fail the same way"
    );

    // Protected methods need the session; the logged-in connection has it.
    let err = v1::device_client::DeviceClient::new(other.clone())
        .list_devices(&v1::ListDevicesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let devices = v1::device_client::DeviceClient::new(client.clone())
        .list_devices(&v1::ListDevicesRequest {})
        .await
        .unwrap();
    assert_eq!(devices.devices.len(), 1);

    // The session resumes on a new connection with its token.
    let third = h.connect().await;
    let resumed = v1::auth_client::AuthClient::new(third.clone())
        .resume_session(&v1::ResumeSessionRequest {
            session_token: ok.session_token.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        (resumed.user.as_str(), resumed.device.as_str()),
        ("alice", "phone")
    );
    let err = v1::auth_client::AuthClient::new(h.connect().await)
        .resume_session(&v1::ResumeSessionRequest {
            session_token: vec![0; 32].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn unknown_users_get_indistinguishable_login_responses() {
    use opaque_ke::{ClientLogin, ClientLoginFinishParameters, CredentialResponse};
    let h = start(|_| {}).await;
    let client = h.connect().await;
    register(&client, "known", "pw").await.unwrap();
    let auth = v1::auth_client::AuthClient::new(client.clone());
    let mut sizes = Vec::new();
    // An unknown user's answer looks and behaves like a known user's with a wrong password: same
    // size, it parses, and only the password's owner can finish with it.
    for (user, password, finishes) in [
        ("known", &b"pw"[..], true),
        ("known", b"wrong", false),
        ("unknown", b"pw", false),
    ] {
        let mut rng = rand_core_06::OsRng;
        let start =
            ClientLogin::<qpq_proto::auth_flows::OpaqueSuite>::start(&mut rng, password).unwrap();
        let r = auth
            .login_start(&v1::LoginStartRequest {
                user: user.into(),
                device: "d".into(),
                credential_request: start.message.serialize().to_vec().into(),
            })
            .await
            .unwrap();
        sizes.push(r.credential_response.len());
        let response = CredentialResponse::deserialize(&r.credential_response).unwrap();
        let finished = start.state.finish(
            &mut rng,
            password,
            response,
            ClientLoginFinishParameters::default(),
        );
        assert_eq!(finished.is_ok(), finishes, "{user} with {password:?}");
    }
    assert!(sizes.iter().all(|s| *s == sizes[0]), "{sizes:?}");
}

#[tokio::test]
async fn enqueue_push_fetch_ack_between_two_users() {
    let h = start(|_| {}).await;
    let alice = Account::create(&h, "alice", "phone").await;
    let bob = Account::create(&h, "bob", "laptop").await;
    let mut bob_events = Events::new(bob.client.push_events().unwrap());

    let r = alice
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 1, b"ciphertext-1"))
        .await
        .unwrap();
    assert_eq!((r.seq, r.duplicate), (1, false));
    match next_event(&mut bob_events).await {
        Event::Message(n) => assert_eq!(n.seq, 1),
        other => panic!("unexpected event {other:?}"),
    }
    alice
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 2, b"ciphertext-2"))
        .await
        .unwrap();
    let fetched = bob
        .delivery()
        .fetch(&v1::FetchRequest {
            after_seq: 0,
            limit: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        fetched.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(&fetched.messages[0].payload[..], b"ciphertext-1");
    let peek = bob.delivery().peek(&v1::PeekRequest {}).await.unwrap();
    assert_eq!((peek.depth, peek.first_seq, peek.last_seq), (2, 1, 2));
    assert_eq!(
        bob.delivery()
            .ack(&v1::AckRequest { up_to_seq: 2 })
            .await
            .unwrap()
            .removed,
        2
    );
    assert_eq!(bob.depth().await, 0);
}

#[tokio::test]
async fn fetch_wait_wakes_on_enqueue_and_times_out_empty() {
    let h = start(|_| {}).await;
    let alice = Account::create(&h, "alice", "phone").await;
    let bob = Account::create(&h, "bob", "laptop").await;

    let started = Instant::now();
    let empty = bob
        .delivery()
        .fetch_wait(&v1::FetchWaitRequest {
            after_seq: 0,
            limit: 0,
            timeout_ms: 300,
        })
        .await
        .unwrap();
    assert!(empty.messages.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));

    let parked_before = h
        .server
        .state()
        .fetch_waits_parked
        .load(std::sync::atomic::Ordering::SeqCst);
    let waiting = tokio::spawn({
        let d = bob.delivery();
        async move {
            d.fetch_wait(&v1::FetchWaitRequest {
                after_seq: 0,
                limit: 0,
                timeout_ms: 30_000,
            })
            .await
        }
    });
    // Enqueue only once the call is parked (its first query done and found nothing), so
    // that the wake-up path is what answers it.
    let parked = async {
        while h
            .server
            .state()
            .fetch_waits_parked
            .load(std::sync::atomic::Ordering::SeqCst)
            <= parked_before
        {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), parked)
        .await
        .expect("the FetchWait call never parked");
    let queries = h
        .server
        .state()
        .fetch_wait_queries
        .load(std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    alice
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 7, b"wake up"))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.messages.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
    // Woken by the arrival: exactly one more query, not a poll loop.
    assert_eq!(
        h.server
            .state()
            .fetch_wait_queries
            .load(std::sync::atomic::Ordering::SeqCst),
        queries + 1
    );
}

#[tokio::test]
async fn duplicate_enqueue_is_stored_once_and_full_queue_is_refused() {
    let h = start(|c| c.limits.max_queue_depth = 3).await;
    let alice = Account::create(&h, "alice", "phone").await;
    let bob = Account::create(&h, "bob", "laptop").await;
    let first = alice
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 1, b"x"))
        .await
        .unwrap();
    let again = alice
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 1, b"x"))
        .await
        .unwrap();
    assert_eq!((again.seq, again.duplicate), (first.seq, true));
    alice
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 2, b"x"))
        .await
        .unwrap();
    alice
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 3, b"x"))
        .await
        .unwrap();
    let err = alice
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 4, b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(bob.depth().await, 3);

    // Batch enqueue answers per message: bob's full queue does not hold back carol's message.
    let carol = Account::create(&h, "carol", "tab").await;
    let results = alice
        .delivery()
        .batch_enqueue(&v1::BatchEnqueueRequest {
            messages: vec![
                enqueue_to(&carol.me(), 9, b"y"),
                enqueue_to(&bob.me(), 10, b"y"),
            ],
        })
        .await
        .unwrap()
        .results;
    assert_eq!(results.len(), 2);
    assert_eq!((results[0].code, results[0].seq), (0, 1));
    assert_eq!(results[1].code, Code::ResourceExhausted as u32);
    assert!(results[1].error.contains("full"), "{}", results[1].error);
    assert_eq!(carol.depth().await, 1);
    assert_eq!(bob.depth().await, 3);
}

#[tokio::test]
async fn sealed_enqueue_needs_the_delivery_token() {
    let h = start(|_| {}).await;
    let bob = Account::create(&h, "bob", "laptop").await;
    let token = [42u8; 32];
    bob.publish_keys(&token).await;

    // A connection that never logged in.
    let anonymous = v1::delivery_client::DeliveryClient::new(h.connect().await);
    let mut request = enqueue_to(&bob.me(), 1, b"sealed envelope");
    let err = anonymous.enqueue(&request).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    request.delivery_token = vec![41u8; 32].into();
    assert_eq!(
        anonymous.enqueue(&request).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    request.delivery_token = token.to_vec().into();
    assert_eq!(anonymous.enqueue(&request).await.unwrap().seq, 1);
    // Only enqueue is public: the anonymous connection cannot fetch anything.
    assert_eq!(
        anonymous
            .fetch(&v1::FetchRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn key_packages_run_out_then_last_resort_with_kt_proofs() {
    let h = start(|_| {}).await;
    let bob = Account::create(&h, "bob", "laptop").await;
    let alice = Account::create(&h, "alice", "phone").await;
    let (
        PublishedKeys {
            identity,
            hybrid,
            bundle,
        },
        mls,
    ) = bob.mls_member().await;
    let kps: Vec<_> = (0..2).map(|_| mls.key_package().unwrap().into()).collect();
    let stored = bob
        .keys()
        .upload_key_package(&v1::UploadKeyPackageRequest {
            key_packages: kps,
            last_resort: false,
        })
        .await
        .unwrap();
    assert_eq!(stored.stored, 2);
    bob.keys()
        .upload_key_package(&v1::UploadKeyPackageRequest {
            key_packages: vec![mls.last_resort_key_package().unwrap().into()],
            last_resort: true,
        })
        .await
        .unwrap();

    // A key package naming someone else is refused, and so is one naming this device whose
    // leaf signs with another key than the device's published identity key.
    for (name, key) in [
        (alice.device_name(), &identity),
        (b"bob/laptop".to_vec(), &identity),
        (
            bob.device_name(),
            &qpq_core::identity::IdentityKey::generate(),
        ),
    ] {
        let forged = MlsMember::create(
            rusqlite::Connection::open_in_memory().unwrap(),
            &name,
            key,
            Suite::XWing,
        )
        .unwrap();
        let err = bob
            .keys()
            .upload_key_package(&v1::UploadKeyPackageRequest {
                key_packages: vec![forged.key_package().unwrap().into()],
                last_resort: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    }
    // Key packages before the key bundle are refused: there is no identity to check them by.
    let carol = Account::create(&h, "carol", "pc").await;
    let early = MlsMember::create(
        rusqlite::Connection::open_in_memory().unwrap(),
        &carol.device_name(),
        &identity,
        Suite::XWing,
    )
    .unwrap();
    let err = carol
        .keys()
        .upload_key_package(&v1::UploadKeyPackageRequest {
            key_packages: vec![early.key_package().unwrap().into()],
            last_resort: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");

    let request = v1::FetchKeyPackageRequest {
        device: Some(bob.me()),
    };
    let keys = alice.keys();
    let a = keys.fetch_key_package(&request).await.unwrap();
    let b = keys.fetch_key_package(&request).await.unwrap();
    assert!(!a.last_resort && !b.last_resort);
    assert_ne!(
        a.key_package, b.key_package,
        "one-time packages are consumed"
    );
    let c = keys.fetch_key_package(&request).await.unwrap();
    let d = keys.fetch_key_package(&request).await.unwrap();
    assert!(c.last_resort && d.last_resort);
    assert_eq!(c.key_package, d.key_package);

    // The answer's key-transparency proof verifies against the signed head.
    let fetched = alice
        .keys()
        .fetch_hybrid_key(&v1::FetchHybridKeyRequest {
            device: Some(bob.me()),
        })
        .await
        .unwrap();
    let proof = fetched.proof.unwrap();
    let head = qpq_core::kt::SignedTreeHead::decode(&proof.tree_head).unwrap();
    head.verify(&h.server.kt_public).unwrap();
    let inclusion = qpq_core::kt::InclusionProof::decode(&proof.inclusion_proof).unwrap();
    let binding = qpq_core::kt::KeyBinding {
        user: "bob".into(),
        domain: "localhost".into(),
        device: "laptop".into(),
        identity_key: identity.public().to_bytes(),
        hybrid_key_hash: hybrid.public().hash(),
        key_package_hash: qpq_server::util::sha256(&c.key_package),
    };
    inclusion.verify(&binding.leaf_hash(), &head.root).unwrap();
    assert_eq!(
        qpq_core::bundle::KeyBundle::decode(&fetched.key_bundle).unwrap(),
        bundle
    );
}

#[tokio::test]
async fn ten_mib_blob_with_a_resumed_upload() {
    use sha2::Digest;
    let h = start(|_| {}).await;
    let alice = Account::create(&h, "alice", "phone").await;
    let blob = v1::blob_client::BlobClient::new(alice.client.clone());
    let data: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let sha: Vec<u8> = sha2::Sha256::digest(&data).to_vec();
    let total = data.len() as u64;
    let chunks = |from: usize, to: usize| -> Vec<v1::BlobChunk> {
        data[from..to]
            .chunks(256 * 1024)
            .enumerate()
            .map(|(i, c)| v1::BlobChunk {
                sha256: sha.clone().into(),
                total_size: total,
                offset: (from + i * 256 * 1024) as u64,
                data: c.to_vec().into(),
            })
            .collect()
    };
    // Upload the first 4 MiB, then stop: the upload is interrupted.
    let first = blob
        .upload_blob(futures::stream::iter(chunks(0, 4 * 1024 * 1024)))
        .await
        .unwrap();
    assert_eq!((first.received, first.complete), (4 * 1024 * 1024, false));
    // Resuming at the wrong offset is refused with the right one in the message.
    let wrong = blob
        .upload_blob(futures::stream::iter(chunks(0, 1024 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    assert!(wrong.message().contains("4194304"), "{wrong}");
    let done = blob
        .upload_blob(futures::stream::iter(chunks(4 * 1024 * 1024, data.len())))
        .await
        .unwrap();
    assert_eq!((done.received, done.complete), (total, true));

    let mut down = blob
        .download_blob(&v1::DownloadBlobRequest {
            sha256: sha.clone().into(),
            offset: 0,
        })
        .await
        .unwrap();
    let mut got = Vec::with_capacity(data.len());
    while let Some(chunk) = down.message().await.unwrap() {
        got.extend_from_slice(&chunk.data);
    }
    assert_eq!(sha2::Sha256::digest(&got).to_vec(), sha);

    // A blob whose bytes do not match its hash is refused.
    let bad = vec![v1::BlobChunk {
        sha256: vec![9; 32].into(),
        total_size: 3,
        offset: 0,
        data: b"abc".to_vec().into(),
    }];
    assert_eq!(
        blob.upload_blob(futures::stream::iter(bad))
            .await
            .unwrap_err()
            .code(),
        Code::DataLoss
    );
}

#[tokio::test]
async fn blob_size_and_quota_limits() {
    let h = start(|c| {
        c.limits.max_blob_bytes = 1000;
        c.limits.blob_quota_bytes = 1500;
    })
    .await;
    let alice = Account::create(&h, "alice", "phone").await;
    let blob = v1::blob_client::BlobClient::new(alice.client.clone());
    let upload = |sha: u8, size: u64| {
        let blob = blob.clone();
        async move {
            blob.upload_blob(futures::stream::iter(vec![v1::BlobChunk {
                sha256: vec![sha; 32].into(),
                total_size: size,
                offset: 0,
                data: Default::default(),
            }]))
            .await
        }
    };
    assert_eq!(
        upload(1, 1001).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert!(!upload(2, 1000).await.unwrap().complete);
    assert_eq!(
        upload(3, 600).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
}

#[tokio::test]
async fn revoking_a_device_ends_its_session() {
    let h = start(|_| {}).await;
    let phone = Account::create(&h, "erin", "phone").await;
    // A second device must be registered by a logged-in one before it can log in.
    let laptop_client = h.connect().await;
    let err = login(&laptop_client, "erin", "laptop", "correct horse battery")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let devices = v1::device_client::DeviceClient::new(phone.client.clone());
    devices
        .register_device(&v1::RegisterDeviceRequest {
            device: "laptop".into(),
            label: "work".into(),
        })
        .await
        .unwrap();
    login(&laptop_client, "erin", "laptop", "correct horse battery")
        .await
        .unwrap();
    let laptop_delivery = v1::delivery_client::DeliveryClient::new(laptop_client.clone());
    laptop_delivery.peek(&v1::PeekRequest {}).await.unwrap();

    devices
        .revoke_device(&v1::RevokeDeviceRequest {
            device: "laptop".into(),
        })
        .await
        .unwrap();
    // The laptop's connection is closed at once with the documented code.
    let closed = disconnected(&laptop_client).await;
    assert_eq!(
        closed.application_code,
        Some(qpq_server::session::close::SESSION_REVOKED.into_inner())
    );
    assert_eq!(closed.reason, "device_revoked");
    // The client reconnects, unauthenticated.
    let err = laptop_delivery.peek(&v1::PeekRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let listed = devices
        .list_devices(&v1::ListDevicesRequest {})
        .await
        .unwrap();
    assert_eq!(
        listed
            .devices
            .iter()
            .map(|d| d.device.as_str())
            .collect::<Vec<_>>(),
        vec!["phone"]
    );
    // Its queue is gone: messages to it are refused.
    let err = phone
        .delivery()
        .enqueue(&enqueue_to(
            &v1::DeviceRef {
                user: "erin".into(),
                device: "laptop".into(),
            },
            1,
            b"x",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn channels_users_and_p2p() {
    let clock = qpq_server::Clock::manual();
    let h = start_with_clock(|_| {}, clock.clone()).await;
    let alice = Account::create(&h, "alice", "phone").await;
    let bob = Account::create(&h, "bob", "laptop").await;
    let mut bob_events = Events::new(bob.client.push_events().unwrap());
    let channel = v1::channel_client::ChannelClient::new(alice.client.clone())
        .create_channel(&v1::CreateChannelRequest {
            name: "team".into(),
            members: vec!["bob".into()],
            mls_group_id: vec![1; 16].into(),
        })
        .await
        .unwrap();
    match next_event(&mut bob_events).await {
        Event::Channel(u) => assert_eq!(u.channel_id, channel.channel_id),
        other => panic!("unexpected {other:?}"),
    }
    // Bob accepts the invitation: from now on they are channel peers.
    v1::channel_client::ChannelClient::new(bob.client.clone())
        .answer_invitation(&v1::AnswerInvitationRequest {
            channel_id: channel.channel_id.clone(),
            accept: true,
            mls_group_id: vec![1; 16].into(),
        })
        .await
        .unwrap();
    let err = v1::channel_client::ChannelClient::new(alice.client.clone())
        .create_channel(&v1::CreateChannelRequest {
            name: "x".into(),
            members: vec!["ghost".into()],
            mls_group_id: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let PublishedKeys { identity, .. } = bob.publish_keys(&[]).await;
    let users = v1::user_client::UserClient::new(alice.client.clone());
    let resolved = users
        .resolve_user(&v1::ResolveUserRequest { user: "bob".into() })
        .await
        .unwrap();
    assert_eq!(resolved.devices.len(), 1);
    assert_eq!(
        &resolved.devices[0].identity_key[..],
        identity.public().to_bytes()
    );
    let back = users
        .resolve_identity(&v1::ResolveIdentityRequest {
            identity_key: identity.public().to_bytes().to_vec().into(),
        })
        .await
        .unwrap();
    assert_eq!(
        (back.user.as_str(), back.device.as_str()),
        ("bob", "laptop")
    );

    let p2p = v1::p2p_client::P2pClient::new(bob.client.clone());
    assert_eq!(
        p2p.health(&v1::HealthRequest {}).await.unwrap().status,
        "ok"
    );
    // A minute-long lifetime: found until the server's clock has moved a minute on.
    p2p.publish_endpoint(&v1::PublishEndpointRequest {
        addresses: vec!["127.0.0.1:4000".into()],
        ttl_ms: 60_000,
    })
    .await
    .unwrap();
    let alice_p2p = v1::p2p_client::P2pClient::new(alice.client.clone());
    let found = alice_p2p
        .resolve_endpoint(&v1::ResolveEndpointRequest {
            device: Some(bob.me()),
        })
        .await
        .unwrap();
    assert_eq!(found.addresses, vec!["127.0.0.1:4000".to_owned()]);
    // A 10 s lifetime replaces it: resolving shows the replacement until it expires, then
    // NotFound.
    p2p.publish_endpoint(&v1::PublishEndpointRequest {
        addresses: vec!["127.0.0.1:4001".into()],
        ttl_ms: 10_000,
    })
    .await
    .unwrap();
    let lookup = v1::ResolveEndpointRequest {
        device: Some(bob.me()),
    };
    let resolve = || alice_p2p.resolve_endpoint(&lookup);
    clock.advance(Duration::from_millis(9_999));
    assert_eq!(
        resolve().await.unwrap().addresses,
        vec!["127.0.0.1:4001".to_owned()]
    );
    clock.advance(Duration::from_millis(1));
    let err = resolve().await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "endpoints expire");
}

#[tokio::test]
async fn logged_in_senders_are_not_held_to_the_sealed_send_limit() {
    let h = start(|c| c.limits.sealed_enqueues_per_second_per_ip = 2).await;
    let alice = Account::create(&h, "alice", "phone").await;
    let bob = Account::create(&h, "bob", "laptop").await;
    for i in 0..10 {
        alice
            .delivery()
            .enqueue(&enqueue_to(&bob.me(), i, b"x"))
            .await
            .unwrap();
    }
    // Sealed sends from one address are limited.
    bob.publish_keys(&[5; 32]).await;
    let anonymous = v1::delivery_client::DeliveryClient::new(h.connect().await);
    let mut codes = Vec::new();
    for i in 20..25 {
        let mut r = enqueue_to(&bob.me(), i, b"sealed");
        r.delivery_token = vec![5; 32].into();
        codes.push(
            anonymous
                .enqueue(&r)
                .await
                .map(|_| Code::Ok)
                .unwrap_or_else(|e| e.code()),
        );
    }
    assert_eq!(&codes[..2], &[Code::Ok, Code::Ok]);
    assert!(codes[2..].contains(&Code::ResourceExhausted), "{codes:?}");
}

#[tokio::test]
async fn an_expired_session_is_closed_and_loses_access() {
    let clock = qpq_server::Clock::manual();
    let h = start_with_clock(|c| c.limits.session_ttl_secs = 60, clock.clone()).await;
    let alice = Account::create(&h, "alice", "phone").await;
    clock.advance(Duration::from_secs(59));
    alice.delivery().peek(&v1::PeekRequest {}).await.unwrap();
    // At expiry the server closes the connection with the documented code.
    clock.advance(Duration::from_secs(1));
    let closed = disconnected(&alice.client).await;
    assert_eq!(
        closed.application_code,
        Some(qpq_server::session::close::SESSION_EXPIRED.into_inner())
    );
    assert_eq!(closed.reason, "expired");
    // The client reconnects, unauthenticated.
    let err = alice
        .delivery()
        .peek(&v1::PeekRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // The token is refused too, and logging in again works.
    let err = v1::auth_client::AuthClient::new(h.connect().await)
        .resume_session(&v1::ResumeSessionRequest {
            session_token: alice.token.clone().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    login(&alice.client, "alice", "phone", "correct horse battery")
        .await
        .unwrap();
    alice.delivery().peek(&v1::PeekRequest {}).await.unwrap();
}

#[tokio::test]
async fn fetch_is_capped_and_login_attempts_are_rate_limited() {
    let h = start(|c| {
        c.limits.max_fetch = 3;
        c.limits.logins_per_minute_per_ip = 4;
    })
    .await;
    // Account::create uses a registration (start and finish) and a login: three of the four.
    let alice = Account::create(&h, "alice", "phone").await;
    for i in 0..5 {
        alice
            .delivery()
            .enqueue(&enqueue_to(&alice.me(), i, b"m"))
            .await
            .unwrap();
    }
    let page = alice
        .delivery()
        .fetch(&v1::FetchRequest {
            after_seq: 0,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(
        page.messages.len(),
        3,
        "the server caps a page at max_fetch"
    );

    let other = h.connect().await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(
            login(&other, "alice", "phone", "wrong")
                .await
                .unwrap_err()
                .code(),
        );
    }
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
}

#[tokio::test]
async fn kt_heads_are_consistent_and_proofs_rebuild_the_leaf() {
    let h = start(|_| {}).await;
    let alice = Account::create(&h, "alice", "phone").await;
    let bob = Account::create(&h, "bob", "laptop").await;
    alice.publish_keys(&[]).await;
    let keys = alice.keys();
    let first = keys
        .kt_head(&v1::KtHeadRequest {
            since_size: 0,
            ..Default::default()
        })
        .await
        .unwrap();
    let log_key = qpq_core::identity::IdentityPublic::from_bytes(&first.log_key).unwrap();
    assert_eq!(log_key, h.server.kt_public);
    let mut monitor = qpq_core::kt::LogMonitor::new(log_key);
    let head = qpq_core::kt::SignedTreeHead::decode(&first.tree_head).unwrap();
    assert!(first.consistency_proof.is_empty(), "no proof from size 0");
    // The first head is trusted on first use; no proof is needed.
    let none = qpq_core::kt::ConsistencyProof {
        old_size: 0,
        new_size: head.tree_size,
        path: Vec::new(),
    };
    monitor.advance(&head, &none).unwrap();
    let published = bob.publish_keys(&[]).await;
    let later = keys
        .kt_head(&v1::KtHeadRequest {
            since_size: head.tree_size,
            ..Default::default()
        })
        .await
        .unwrap();
    let new_head = qpq_core::kt::SignedTreeHead::decode(&later.tree_head).unwrap();
    assert!(new_head.tree_size > head.tree_size);
    let proof = qpq_core::kt::ConsistencyProof::decode(&later.consistency_proof).unwrap();
    monitor.advance(&new_head, &proof).unwrap();
    // The key answer's proof carries what rebuilds the binding's leaf.
    let fetched = keys
        .fetch_hybrid_key(&v1::FetchHybridKeyRequest {
            device: Some(bob.me()),
        })
        .await
        .unwrap();
    let kt = fetched.proof.unwrap();
    let binding = qpq_core::kt::KeyBinding {
        user: "bob".into(),
        domain: "localhost".into(),
        device: "laptop".into(),
        identity_key: published.identity.public().to_bytes(),
        hybrid_key_hash: published.hybrid.public().hash(),
        key_package_hash: kt.key_package_hash.as_ref().try_into().unwrap(),
    };
    let inclusion = qpq_core::kt::InclusionProof::decode(&kt.inclusion_proof).unwrap();
    monitor.verify_binding(&binding, &inclusion).unwrap();
    // A head the client has not seen is refused as a starting point.
    let err = keys
        .kt_head(&v1::KtHeadRequest {
            since_size: 1 << 40,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
}
