//! One test per abuse the server must resist: a logged-in stranger is the normal attacker.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use prost::Message;
use qpq_proto::v1;
use qpq_server::InProcess;
use qpq_server::session::SessionInfo;
use qpq_server::store::{DeviceId, Store};
use qrpc::{Code, RequestBody, ResponseBody};

// 1. Queue flooding -------------------------------------------------------------------------

#[tokio::test]
async fn a_stranger_cannot_flood_a_queue_and_known_senders_still_get_through() {
    let h = start(|c| {
        c.limits.max_pending_per_stranger = 3;
        c.limits.max_pending_per_sender = 5;
    })
    .await;
    let bob = Account::create(&h, "bob", "phone").await;
    let alice = Account::create(&h, "alice", "phone").await;
    let mallory = Account::create(&h, "mallory", "pc").await;
    // Bob has written to Alice, so Alice is known to him; Mallory is a stranger.
    bob.delivery()
        .enqueue(&enqueue_to(&alice.me(), 1, b"hi"))
        .await
        .unwrap();

    for i in 0..3 {
        mallory
            .delivery()
            .enqueue(&enqueue_to(&bob.me(), i, b"spam"))
            .await
            .unwrap();
    }
    let err = mallory
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 3, b"spam"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("not written to you"), "{err}");

    // A known sender has the larger quota, untouched by Mallory's messages.
    for i in 0..5 {
        alice
            .delivery()
            .enqueue(&enqueue_to(&bob.me(), i, b"hello"))
            .await
            .unwrap();
    }
    let err = alice
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 5, b"hello"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(bob.depth().await, 8);

    // Acknowledged messages free the quota.
    let queued = bob
        .delivery()
        .fetch(&v1::FetchRequest {
            after_seq: 0,
            limit: 100,
        })
        .await
        .unwrap();
    bob.delivery()
        .ack(&v1::AckRequest {
            up_to_seq: queued.messages.last().unwrap().seq,
        })
        .await
        .unwrap();
    mallory
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 3, b"spam"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stranger_who_becomes_known_gets_the_larger_quota_at_once() {
    let h = start(|c| {
        c.limits.max_pending_per_stranger = 1;
        c.limits.max_pending_per_sender = 3;
    })
    .await;
    let bob = Account::create(&h, "bob", "phone").await;
    let mallory = Account::create(&h, "mallory", "pc").await;
    let eve = Account::create(&h, "eve", "pc").await;
    let send = |from: &Account, id: u8| {
        let delivery = from.delivery();
        let to = bob.me();
        async move { delivery.enqueue(&enqueue_to(&to, id, b"x")).await }
    };
    // Both are strangers to Bob: one message each, then refused (and the answer is remembered).
    for who in [&mallory, &eve] {
        send(who, 1).await.unwrap();
        assert_eq!(
            send(who, 2).await.unwrap_err().code(),
            Code::ResourceExhausted
        );
    }
    // Bob writes to Mallory: she is known from then on, with the larger quota.
    bob.delivery()
        .enqueue(&enqueue_to(&mallory.me(), 9, b"hello"))
        .await
        .unwrap();
    send(&mallory, 2).await.unwrap();
    send(&mallory, 3).await.unwrap();
    assert_eq!(
        send(&mallory, 4).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    // Bob invites Eve to a channel with him: once she accepts, the same.
    let channel = v1::channel_client::ChannelClient::new(bob.client.clone())
        .create_channel(&v1::CreateChannelRequest {
            name: "eve and bob".into(),
            members: vec!["eve".into()],
            mls_group_id: vec![1; 16].into(),
        })
        .await
        .unwrap()
        .channel_id;
    assert_eq!(
        send(&eve, 2).await.unwrap_err().code(),
        Code::ResourceExhausted,
        "an invitation not yet accepted is no membership"
    );
    // An answer naming another conversation's group is no answer to this channel.
    let err = v1::channel_client::ChannelClient::new(eve.client.clone())
        .answer_invitation(&v1::AnswerInvitationRequest {
            channel_id: channel.clone(),
            accept: true,
            mls_group_id: vec![2; 16].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    v1::channel_client::ChannelClient::new(eve.client.clone())
        .answer_invitation(&v1::AnswerInvitationRequest {
            channel_id: channel,
            accept: true,
            mls_group_id: vec![1; 16].into(),
        })
        .await
        .unwrap();
    send(&eve, 2).await.unwrap();
}

#[tokio::test]
async fn queue_bytes_message_size_and_device_count_are_bounded() {
    let h = start(|c| {
        c.limits.max_message_bytes = 1000;
        c.limits.max_queue_bytes = 2500;
        c.limits.max_devices_per_user = 2;
        // The whole queue's bound, not one sender's share of it, is under test.
        c.limits.max_queue_share_percent = 100;
    })
    .await;
    let bob = Account::create(&h, "bob", "phone").await;
    // Oversize message: refused before anything is stored; the limit itself is accepted.
    let err = bob
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 0, &[7; 1001]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for i in 1..=2 {
        bob.delivery()
            .enqueue(&enqueue_to(&bob.me(), i, &[7; 1000]))
            .await
            .unwrap();
    }
    // 2000 bytes queued: a third 1000-byte message would pass 2500.
    let err = bob
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 3, &[7; 1000]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    bob.delivery()
        .enqueue(&enqueue_to(&bob.me(), 4, &[7; 500]))
        .await
        .unwrap();

    let devices = v1::device_client::DeviceClient::new(bob.client.clone());
    devices
        .register_device(&v1::RegisterDeviceRequest {
            device: "laptop".into(),
            label: String::new(),
        })
        .await
        .unwrap();
    let err = devices
        .register_device(&v1::RegisterDeviceRequest {
            device: "tablet".into(),
            label: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn sending_is_rate_limited_per_user_across_devices() {
    let h = start(|c| c.limits.messages_per_second_per_user = 3).await;
    let bob = Account::create(&h, "bob", "phone").await;
    let devices = v1::device_client::DeviceClient::new(bob.client.clone());
    devices
        .register_device(&v1::RegisterDeviceRequest {
            device: "laptop".into(),
            label: String::new(),
        })
        .await
        .unwrap();
    let laptop = h.connect().await;
    login(&laptop, "bob", "laptop", "correct horse battery")
        .await
        .unwrap();
    let laptop = v1::delivery_client::DeliveryClient::new(laptop);
    // The burst is shared by both devices: a second device buys no extra allowance.
    bob.delivery()
        .enqueue(&enqueue_to(&bob.me(), 1, b"x"))
        .await
        .unwrap();
    bob.delivery()
        .enqueue(&enqueue_to(&bob.me(), 2, b"x"))
        .await
        .unwrap();
    laptop
        .enqueue(&enqueue_to(&bob.me(), 3, b"x"))
        .await
        .unwrap();
    let err = laptop
        .enqueue(&enqueue_to(&bob.me(), 4, b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("retry in"), "{err}");
}

// 2. Revocation ------------------------------------------------------------------------------

#[tokio::test]
async fn a_revoked_device_loses_its_connection_and_its_id_for_good() {
    let h = start(|_| {}).await;
    let bob = Account::create(&h, "bob", "phone").await;
    let devices = v1::device_client::DeviceClient::new(bob.client.clone());
    devices
        .register_device(&v1::RegisterDeviceRequest {
            device: "laptop".into(),
            label: String::new(),
        })
        .await
        .unwrap();
    let laptop = connect_once(&h).await;
    let r = login(&laptop, "bob", "laptop", "correct horse battery")
        .await
        .unwrap();
    let laptop_delivery = v1::delivery_client::DeliveryClient::new(laptop.clone());
    laptop_delivery
        .enqueue(&enqueue_to(&bob.me(), 1, b"before"))
        .await
        .unwrap();

    devices
        .revoke_device(&v1::RevokeDeviceRequest {
            device: "laptop".into(),
        })
        .await
        .unwrap();
    let closed = disconnected(&laptop).await;
    assert_eq!(closed.reason, "device_revoked");
    // Nothing more gets through the old connection, not even the public Enqueue path.
    let err = laptop_delivery
        .enqueue(&enqueue_to(&bob.me(), 2, b"after"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    // Its token is dead.
    let err = v1::auth_client::AuthClient::new(h.connect().await)
        .resume_session(&v1::ResumeSessionRequest {
            session_token: r.session_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Registering the same id again is refused: a revoked id cannot be revived.
    let err = devices
        .register_device(&v1::RegisterDeviceRequest {
            device: "laptop".into(),
            label: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(bob.depth().await, 1);
}

#[tokio::test]
async fn revocation_drops_push_registration_and_stops_calls_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::in_process(config(dir.path())).await;
    let store = server.state.store();
    store.create_user("bob".into(), vec![1], 0).await.unwrap();
    let laptop = DeviceId::new("bob", "laptop");
    store
        .register_device(laptop.clone(), String::new(), 0, true, 10)
        .await
        .unwrap();
    let conn = server.connection("127.0.0.1:5000".parse().unwrap());
    let info = SessionInfo::new(laptop.clone(), u64::MAX, [1; 32]);
    server.state.sessions().bind(&conn, info);
    // (A detached connection's push sender counts as closed, so count registrations.)
    assert_eq!(server.state.registry().len(), 1);
    let peek = v1::PeekRequest {}.encode_to_vec();
    let ok = server
        .call(&conn, 13, RequestBody::unary(peek.clone().into()))
        .await;
    assert!(ok.is_ok());

    server
        .state
        .sessions()
        .end_device(&laptop, qpq_server::session::EndReason::Revoked, None);
    assert_eq!(server.state.registry().len(), 0);
    assert!(server.state.sessions().is_empty());
    let err = server
        .call(&conn, 13, RequestBody::unary(peek.into()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

// 3. Password guessing -----------------------------------------------------------------------

#[tokio::test]
async fn login_attempts_are_limited_per_account_per_connection_and_resumes_per_address() {
    let h = start(|c| {
        c.limits.logins_per_minute_per_ip = 1000;
        c.limits.logins_per_minute_per_account = 3;
        c.limits.auth_attempts_per_connection = 4;
        c.limits.resumes_per_minute_per_ip = 2;
    })
    .await;
    let alice = Account::create(&h, "alice", "phone").await; // one login on alice
    // Guesses from fresh connections (and from a logged-in one) share alice's bucket.
    let mallory = Account::create(&h, "mallory", "pc").await;
    let err = login(&h.connect().await, "alice", "phone", "guess 1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = login(&mallory.client, "alice", "phone", "guess 2")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = login(&h.connect().await, "alice", "phone", "guess 3")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Another account is not affected.
    let bob = Account::create(&h, "bob", "phone").await;

    // One connection may make only so many attempts, whatever the accounts: a registration
    // is two (start and finish), so the third one is refused at its start.
    let conn = h.connect().await;
    register(&conn, "u1", "pw").await.unwrap();
    register(&conn, "u2", "pw").await.unwrap();
    let err = register(&conn, "u3", "pw").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("reconnect"), "{err}");

    // Resumes are limited per address.
    let resume = |token: Vec<u8>| {
        let h = &h;
        async move {
            v1::auth_client::AuthClient::new(h.connect().await)
                .resume_session(&v1::ResumeSessionRequest {
                    session_token: token.into(),
                })
                .await
        }
    };
    resume(bob.token.clone()).await.unwrap();
    resume(alice.token.clone()).await.unwrap();
    let err = resume(bob.token.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

// 4. Key-package draining --------------------------------------------------------------------

#[tokio::test]
async fn nobody_drains_another_users_key_packages() {
    let h = start(|c| c.limits.key_package_fetches_per_minute_per_pair = 2).await;
    let bob = Account::create(&h, "bob", "laptop").await;
    let mallory = Account::create(&h, "mallory", "pc").await;
    let alice = Account::create(&h, "alice", "phone").await;
    let (_, mls) = bob.mls_member().await;
    let kps: Vec<Bytes> = (0..5).map(|_| mls.key_package().unwrap().into()).collect();
    bob.keys()
        .upload_key_package(&v1::UploadKeyPackageRequest {
            key_packages: kps,
            last_resort: false,
        })
        .await
        .unwrap();
    let request = v1::FetchKeyPackageRequest {
        device: Some(bob.me()),
    };
    for _ in 0..2 {
        mallory.keys().fetch_key_package(&request).await.unwrap();
    }
    let err = mallory
        .keys()
        .fetch_key_package(&request)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Alice's allowance for Bob is her own, and Bob's supply is not exhausted.
    let got = alice.keys().fetch_key_package(&request).await.unwrap();
    assert!(!got.last_resort);
}

// 5. Endpoint disclosure ---------------------------------------------------------------------

#[tokio::test]
async fn endpoints_are_visible_only_to_channel_peers() {
    let h = start(|_| {}).await;
    let bob = Account::create(&h, "bob", "phone").await;
    let alice = Account::create(&h, "alice", "phone").await;
    let mallory = Account::create(&h, "mallory", "pc").await;
    v1::p2p_client::P2pClient::new(bob.client.clone())
        .publish_endpoint(&v1::PublishEndpointRequest {
            addresses: vec!["192.0.2.7:4433".into()],
            ttl_ms: 60_000,
        })
        .await
        .unwrap();
    // Alice puts Bob in a channel without asking him: that shows her nothing.
    let channel = v1::channel_client::ChannelClient::new(alice.client.clone())
        .create_channel(&v1::CreateChannelRequest {
            name: "friends".into(),
            members: vec!["bob".into()],
            mls_group_id: Default::default(),
        })
        .await
        .unwrap()
        .channel_id;
    let request = v1::ResolveEndpointRequest {
        device: Some(bob.me()),
    };
    let err = v1::p2p_client::P2pClient::new(alice.client.clone())
        .resolve_endpoint(&request)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "no consent, no address");
    // Bob accepts: now she is a channel peer.
    v1::channel_client::ChannelClient::new(bob.client.clone())
        .answer_invitation(&v1::AnswerInvitationRequest {
            channel_id: channel,
            accept: true,
            mls_group_id: Default::default(),
        })
        .await
        .unwrap();
    let seen = v1::p2p_client::P2pClient::new(alice.client.clone())
        .resolve_endpoint(&request)
        .await
        .unwrap();
    assert_eq!(seen.addresses, vec!["192.0.2.7:4433".to_string()]);
    let err = v1::p2p_client::P2pClient::new(mallory.client.clone())
        .resolve_endpoint(&request)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "indistinguishable from unpublished"
    );
    // The publisher's own devices see it.
    v1::p2p_client::P2pClient::new(bob.client.clone())
        .resolve_endpoint(&request)
        .await
        .unwrap();
}

#[tokio::test]
async fn only_members_change_a_channel_or_type_in_it_and_typing_is_limited() {
    let h = start(|c| c.limits.typing_per_minute_per_user = 2).await;
    let bob = Account::create(&h, "bob", "phone").await;
    let alice = Account::create(&h, "alice", "phone").await;
    let mallory = Account::create(&h, "mallory", "pc").await;
    let mut bob_events = bob.client.push_events().unwrap();
    let channels = |a: &Account| v1::channel_client::ChannelClient::new(a.client.clone());
    let id = channels(&alice)
        .create_channel(&v1::CreateChannelRequest {
            name: "pair".into(),
            members: vec!["bob".into()],
            mls_group_id: Default::default(),
        })
        .await
        .unwrap()
        .channel_id;
    // Bob hears about the channel, accepts, then hears Alice typing in it (an ephemeral
    // event).
    let frame = next_frame(&mut bob_events).await;
    assert!(matches!(
        frame.clone().decode::<v1::server_event_push::Event>(),
        Ok(v1::server_event_push::Event::Channel(_))
    ));
    let answer = |who: &Account, accept: bool| {
        let client = channels(who);
        let channel_id = id.clone();
        async move {
            client
                .answer_invitation(&v1::AnswerInvitationRequest {
                    channel_id,
                    accept,
                    mls_group_id: Default::default(),
                })
                .await
        }
    };
    answer(&bob, true).await.unwrap();
    let frame = next_frame(&mut bob_events).await;
    assert!(matches!(
        frame.clone().decode::<v1::server_event_push::Event>(),
        Ok(v1::server_event_push::Event::Channel(_))
    ));
    channels(&alice)
        .typing(&v1::TypingRequest {
            channel_id: id.clone(),
        })
        .await
        .unwrap();
    let frame = next_frame(&mut bob_events).await;
    assert!(v1::ephemeral_event_push::EVENT_TYPES.contains(&frame.event_type()));
    match frame
        .clone()
        .decode::<v1::ephemeral_event_push::Event>()
        .unwrap()
    {
        v1::ephemeral_event_push::Event::Typing(t) => {
            assert_eq!(
                (t.user.as_str(), t.channel_id.as_ref()),
                ("alice", id.as_ref())
            );
        }
    }
    // A stranger can neither type into it nor add itself.
    let err = channels(&mallory)
        .typing(&v1::TypingRequest {
            channel_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = channels(&mallory)
        .update_channel(&v1::UpdateChannelRequest {
            channel_id: id.clone(),
            add: vec!["mallory".into()],
            remove: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Only the owner invites or removes others.
    let update = |who: &Account, add: &[&str], remove: &[&str]| {
        let client = channels(who);
        let request = v1::UpdateChannelRequest {
            channel_id: id.clone(),
            add: add.iter().map(|u| (*u).to_owned()).collect(),
            remove: remove.iter().map(|u| (*u).to_owned()).collect(),
        };
        async move { client.update_channel(&request).await }
    };
    let err = update(&bob, &[], &["alice"]).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = update(&bob, &["mallory"], &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let members = update(&alice, &["mallory"], &[]).await.unwrap().members;
    assert_eq!(members, vec!["alice", "bob"], "mallory is only invited");
    // An invitee is no member: it cannot type, change the channel, or answer twice.
    let err = channels(&mallory)
        .typing(&v1::TypingRequest {
            channel_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        update(&mallory, &["eve"], &[]).await.unwrap_err().code(),
        Code::NotFound
    );
    answer(&mallory, false).await.unwrap();
    assert_eq!(
        answer(&mallory, true).await.unwrap_err().code(),
        Code::NotFound
    );
    let members = update(&alice, &["mallory"], &[]).await.unwrap().members;
    assert_eq!(members, vec!["alice", "bob"]);
    assert_eq!(
        answer(&mallory, true).await.unwrap().members,
        vec!["alice", "bob", "mallory"]
    );
    // The owner removes a member; a member removes itself.
    let members = update(&alice, &[], &["mallory"]).await.unwrap().members;
    assert_eq!(members, vec!["alice", "bob"]);
    // Typing is rate limited per user: the limit is 2 per minute and one is used.
    channels(&bob)
        .typing(&v1::TypingRequest {
            channel_id: id.clone(),
        })
        .await
        .unwrap();
    channels(&bob)
        .typing(&v1::TypingRequest {
            channel_id: id.clone(),
        })
        .await
        .unwrap();
    let err = channels(&bob)
        .typing(&v1::TypingRequest { channel_id: id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

// 6. FetchWait amplification -----------------------------------------------------------------

async fn in_process_with(users: &[(&str, &str)]) -> (tempfile::TempDir, InProcess) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.max_fetch_waits_per_connection = 2;
    let server = common::in_process(c).await;
    for (user, device) in users {
        let _ = server
            .state
            .store()
            .create_user((*user).into(), vec![1], 0)
            .await;
        server
            .state
            .store()
            .register_device(DeviceId::new(*user, *device), String::new(), 0, false, 10)
            .await
            .unwrap();
    }
    (dir, server)
}

fn logged_in(server: &InProcess, user: &str, device: &str, port: u16) -> qrpc::Peer {
    let conn = server.connection(([127, 0, 0, 1], port).into());
    let token: [u8; 32] = rand::random();
    server.state.sessions().bind(
        &conn,
        SessionInfo::new(DeviceId::new(user, device), u64::MAX, token),
    );
    conn
}

fn unary(message: &impl Message) -> RequestBody {
    RequestBody::unary(message.encode_to_vec().into())
}

fn decode<T: Message + Default>(r: qrpc::ServerResponse<ResponseBody>) -> T {
    match r.into_inner() {
        ResponseBody::Unary(bytes) => T::decode(bytes).unwrap(),
        _ => panic!("expected a unary response"),
    }
}

#[tokio::test]
async fn fetch_wait_wakes_only_past_its_position_and_is_capped_per_connection() {
    let (_dir, server) = in_process_with(&[("bob", "phone"), ("bob", "tab"), ("ann", "pc")]).await;
    let server = Arc::new(server);
    let bob = logged_in(&server, "bob", "phone", 1);
    let ann = logged_in(&server, "ann", "pc", 2);
    let send = |id: u8, to: &str| {
        unary(&enqueue_to(
            &v1::DeviceRef {
                user: "bob".into(),
                device: to.into(),
            },
            id,
            b"m",
        ))
    };
    // Bob waits for anything after seq 2.
    let waiting = {
        let server = Arc::clone(&server);
        let bob = bob.clone();
        tokio::spawn(async move {
            let r = server
                .call(
                    &bob,
                    12,
                    unary(&v1::FetchWaitRequest {
                        after_seq: 2,
                        limit: 10,
                        timeout_ms: 30_000,
                    }),
                )
                .await
                .unwrap();
            decode::<v1::FetchResponse>(r)
        })
    };
    // Wait until it is parked (its first query done).
    let parked = async {
        while server.state.fetch_wait_queries.load(Ordering::SeqCst) < 1
            || server.state.waiting_devices() < 1
        {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), parked)
        .await
        .unwrap();
    // Messages to another device, and messages at or before its position, cost nothing.
    for id in 1..=3 {
        server.call(&ann, 10, send(id, "tab")).await.unwrap();
    }
    server.call(&ann, 10, send(1, "phone")).await.unwrap();
    server.call(&ann, 10, send(2, "phone")).await.unwrap();
    assert_eq!(server.state.fetch_wait_queries.load(Ordering::SeqCst), 1);
    // Seq 3 is past it: one more query, and the answer.
    server.call(&ann, 10, send(3, "phone")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3]
    );
    assert_eq!(server.state.fetch_wait_queries.load(Ordering::SeqCst), 2);
    // The waiter map forgets a device nobody waits on.
    assert_eq!(server.state.waiting_devices(), 0);

    // At most two FetchWaits wait on one connection; the third is refused at once.
    let park = |conn: qrpc::Peer| {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            server
                .call(
                    &conn,
                    12,
                    unary(&v1::FetchWaitRequest {
                        after_seq: 100,
                        limit: 1,
                        timeout_ms: 30_000,
                    }),
                )
                .await
        })
    };
    let first = park(bob.clone());
    let second = park(bob.clone());
    let both_parked = async {
        while server.state.fetch_wait_queries.load(Ordering::SeqCst) < 4 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), both_parked)
        .await
        .unwrap();
    let err = server
        .call(
            &bob,
            12,
            unary(&v1::FetchWaitRequest {
                after_seq: 100,
                limit: 1,
                timeout_ms: 30_000,
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Another connection has its own allowance.
    let other = logged_in(&server, "bob", "phone", 3);
    let third = park(other);
    first.abort();
    second.abort();
    third.abort();
}

// 7. Identity confusion ----------------------------------------------------------------------

#[tokio::test]
async fn a_bundle_belongs_to_one_device_and_an_identity_key_to_one_bundle() {
    let h = start(|_| {}).await;
    let bob = Account::create(&h, "bob", "phone").await;
    let mallory = Account::create(&h, "mallory", "pc").await;
    let bobs = bob.publish_keys(&[]).await;
    // Mallory re-publishes Bob's signed bundle as hers.
    let err = mallory
        .keys()
        .upload_hybrid_key(&v1::UploadHybridKeyRequest {
            key_bundle: bobs.bundle.encode().into(),
            delivery_token: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // A second device of Bob's reusing the phone's identity key is refused too.
    let devices = v1::device_client::DeviceClient::new(bob.client.clone());
    devices
        .register_device(&v1::RegisterDeviceRequest {
            device: "tab".into(),
            label: String::new(),
        })
        .await
        .unwrap();
    let tab = h.connect().await;
    login(&tab, "bob", "tab", "correct horse battery")
        .await
        .unwrap();
    let reused = qpq_core::bundle::KeyBundle::new(
        &bobs.identity,
        qpq_core::kem::HybridSecretKey::generate().public(),
        "bob",
        "tab",
    )
    .unwrap();
    let err = v1::keys_client::KeysClient::new(tab)
        .upload_hybrid_key(&v1::UploadHybridKeyRequest {
            key_bundle: reused.encode().into(),
            delivery_token: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // The phone may re-publish (rotate its hybrid key) under its own identity.
    let rotated = qpq_core::bundle::KeyBundle::new(
        &bobs.identity,
        qpq_core::kem::HybridSecretKey::generate().public(),
        "bob",
        "phone",
    )
    .unwrap();
    bob.keys()
        .upload_hybrid_key(&v1::UploadHybridKeyRequest {
            key_bundle: rotated.encode().into(),
            delivery_token: Default::default(),
        })
        .await
        .unwrap();
    let who = v1::user_client::UserClient::new(mallory.client.clone())
        .resolve_identity(&v1::ResolveIdentityRequest {
            identity_key: bobs.identity.public().to_bytes().to_vec().into(),
        })
        .await
        .unwrap();
    assert_eq!((who.user.as_str(), who.device.as_str()), ("bob", "phone"));
}

// 8. Blob races ------------------------------------------------------------------------------

fn chunk(sha: &[u8], total: u64, offset: u64, data: &[u8]) -> Bytes {
    v1::BlobChunk {
        sha256: sha.to_vec().into(),
        total_size: total,
        offset,
        data: data.to_vec().into(),
    }
    .encode_to_vec()
    .into()
}

#[tokio::test]
async fn a_second_uploader_cannot_hijack_or_truncate_an_upload() {
    let (_dir, server) = in_process_with(&[("alice", "phone"), ("mallory", "pc")]).await;
    let server = Arc::new(server);
    let alice = logged_in(&server, "alice", "phone", 1);
    let mallory = logged_in(&server, "mallory", "pc", 2);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sha = qpq_server::util::sha256(&data);
    let total = data.len() as u64;
    let half = 150_000;

    // Alice sends the first half and keeps the call open.
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, qrpc::Status>>();
    tx.unbounded_send(Ok(chunk(&sha, total, 0, &data[..half])))
        .unwrap();
    let upload = {
        let server = Arc::clone(&server);
        let alice = alice.clone();
        tokio::spawn(async move {
            let body = RequestBody::new(Bytes::new(), Box::pin(rx));
            server.call(&alice, 50, body).await
        })
    };
    let progressed = async {
        loop {
            if let Some(row) = server.state.store().blob(sha.to_vec()).await.unwrap()
                && row.received == half as u64
            {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), progressed)
        .await
        .unwrap();

    // Mallory uploads the same hash meanwhile: refused, and nothing of Alice's is touched.
    let body = RequestBody::new(
        Bytes::new(),
        Box::pin(futures::stream::iter(vec![Ok(chunk(
            &sha, total, 0, b"junk",
        ))])),
    );
    let err = server.call(&mallory, 50, body).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // A second upload of Alice's own (another device, or a retry racing the first) cannot
    // write over what is stored either: the store takes a chunk only where the bytes end.
    let alice_again = logged_in(&server, "alice", "phone", 3);
    let body = RequestBody::new(
        Bytes::new(),
        Box::pin(futures::stream::iter(vec![Ok(chunk(
            &sha, total, 0, b"junk",
        ))])),
    );
    let err = server.call(&alice_again, 50, body).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");

    // Alice finishes; the blob verifies.
    tx.unbounded_send(Ok(chunk(&sha, total, half as u64, &data[half..])))
        .unwrap();
    drop(tx);
    let done: v1::UploadBlobResponse = decode(upload.await.unwrap().unwrap());
    assert!(done.complete);

    // An interrupted upload belongs to its owner: another user cannot continue it.
    let other: Vec<u8> = vec![9; 1000];
    let other_sha = qpq_server::util::sha256(&other);
    let body = RequestBody::new(
        Bytes::new(),
        Box::pin(futures::stream::iter(vec![Ok(chunk(
            &other_sha,
            1000,
            0,
            &other[..10],
        ))])),
    );
    let partial: v1::UploadBlobResponse = decode(server.call(&alice, 50, body).await.unwrap());
    assert_eq!((partial.received, partial.complete), (10, false));
    let body = RequestBody::new(
        Bytes::new(),
        Box::pin(futures::stream::iter(vec![Ok(chunk(
            &other_sha,
            1000,
            10,
            &other[10..],
        ))])),
    );
    let err = server.call(&mallory, 50, body).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

// 9. Deduplication scope ---------------------------------------------------------------------

#[tokio::test]
async fn one_sender_cannot_suppress_anothers_message_by_its_id() {
    let h = start(|_| {}).await;
    let bob = Account::create(&h, "bob", "phone").await;
    let alice = Account::create(&h, "alice", "phone").await;
    let mallory = Account::create(&h, "mallory", "pc").await;
    // Mallory guesses the id Alice will use and sends first.
    let squat = mallory
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 7, b"squat"))
        .await
        .unwrap();
    let real = alice
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 7, b"real message"))
        .await
        .unwrap();
    assert!(!real.duplicate);
    assert_ne!(squat.seq, real.seq);
    // A retry by Alice herself is still deduplicated.
    let retry = alice
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 7, b"real message"))
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.seq, real.seq);
    assert_eq!(bob.depth().await, 2);
}

// 10. Growth and logout ----------------------------------------------------------------------

/// A device revoked (or a token logged out) through another node whose poke never arrived:
/// the janitor finds the session gone from the store and ends it here too.
#[tokio::test]
async fn the_janitor_ends_live_sessions_whose_row_is_gone() {
    let (_dir, server) = in_process_with(&[("bob", "phone"), ("bob", "tab")]).await;
    let mut conns = Vec::new();
    for (device, token) in [("phone", [1u8; 32]), ("tab", [2u8; 32])] {
        let hash = qpq_server::util::sha256(&token);
        server
            .state
            .store()
            .create_session(
                hash.to_vec(),
                qpq_server::store::Session {
                    device: DeviceId::new("bob", device),
                    expires_at_ms: u64::MAX,
                },
            )
            .await
            .unwrap();
        let conn = server.connection(([127, 0, 0, 1], 9).into());
        server.state.sessions().bind(
            &conn,
            SessionInfo::new(DeviceId::new("bob", device), u64::MAX, hash),
        );
        conns.push(conn);
    }
    server.state.janitor_pass().await;
    assert_eq!(server.state.sessions().len(), 2, "both rows are there");
    // The phone is revoked elsewhere: its rows go, and no poke reaches this node.
    server
        .state
        .store()
        .revoke_device(DeviceId::new("bob", "phone"), 0)
        .await
        .unwrap();
    server.state.janitor_pass().await;
    assert_eq!(server.state.sessions().len(), 1);
    assert!(
        conns[0].identity().is_none(),
        "the phone's connection lost its session"
    );
    assert!(conns[1].identity().is_some(), "the tablet's stays");
}

#[tokio::test]
async fn the_janitor_deletes_expired_sessions_and_forgets_ended_ones() {
    let (_dir, server) = in_process_with(&[("bob", "phone")]).await;
    let phone = DeviceId::new("bob", "phone");
    for (token, expires) in [(1u8, 1), (2, u64::MAX)] {
        server
            .state
            .store()
            .create_session(
                vec![token; 32],
                qpq_server::store::Session {
                    device: phone.clone(),
                    expires_at_ms: expires,
                },
            )
            .await
            .unwrap();
    }
    let conn = logged_in(&server, "bob", "phone", 1);
    assert_eq!(server.state.sessions().len(), 1);
    let deleted = server.state.janitor_pass().await;
    assert_eq!(deleted, 1);
    assert!(
        server
            .state
            .store()
            .session(vec![1; 32])
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        server
            .state
            .store()
            .session(vec![2; 32])
            .await
            .unwrap()
            .is_some()
    );
    server.state.sessions().end_connection(&conn);
    server.state.janitor_pass().await;
    assert!(server.state.sessions().is_empty());

    // Rate-limit state of a key is forgotten once its bucket has refilled.
    let limiters = &server.state.limiters();
    limiters
        .check(
            &limiters.messages_per_user,
            &"bob".to_string(),
            1,
            "messages",
        )
        .unwrap();
    assert_eq!(limiters.keys(), 1);
    let forgotten = async {
        loop {
            server.state.janitor_pass().await;
            if limiters.keys() == 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), forgotten)
        .await
        .expect("an idle limiter key was never pruned");
}

#[tokio::test]
async fn logout_kills_the_token_everywhere() {
    let h = start(|_| {}).await;
    let bob = Account::create(&h, "bob", "phone").await;
    // A second connection resumed from the same token.
    let resumed = connect_once(&h).await;
    v1::auth_client::AuthClient::new(resumed.clone())
        .resume_session(&v1::ResumeSessionRequest {
            session_token: bob.token.clone().into(),
        })
        .await
        .unwrap();
    v1::auth_client::AuthClient::new(bob.client.clone())
        .logout(&v1::LogoutRequest {})
        .await
        .unwrap();
    let closed = disconnected(&resumed).await;
    assert_eq!(
        closed.application_code,
        Some(qpq_server::session::close::LOGGED_OUT.into_inner())
    );
    // This connection stays open, logged out; the token no longer resumes.
    let err = bob.delivery().peek(&v1::PeekRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = v1::auth_client::AuthClient::new(bob.client.clone())
        .resume_session(&v1::ResumeSessionRequest {
            session_token: bob.token.clone().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Logging in again works on the same connection.
    login(&bob.client, "bob", "phone", "correct horse battery")
        .await
        .unwrap();
    bob.delivery().peek(&v1::PeekRequest {}).await.unwrap();
}

/// Logs `user` in on `device` after registering it from `owner`'s session.
async fn another_device(h: &Harness, owner: &Account, device: &str) -> Account {
    v1::device_client::DeviceClient::new(owner.client.clone())
        .register_device(&v1::RegisterDeviceRequest {
            device: device.into(),
            label: device.into(),
        })
        .await
        .unwrap();
    let client = h.connect().await;
    let r = login(&client, &owner.user, device, "correct horse battery")
        .await
        .unwrap();
    Account {
        client,
        user: owner.user.clone(),
        device: device.into(),
        token: r.session_token.to_vec(),
    }
}

#[tokio::test]
async fn one_user_cannot_fill_a_queue_with_many_devices() {
    // The per-sender quota counts the sending user, whatever device sends.
    let h = start(|c| {
        c.limits.max_pending_per_sender = 4;
        c.limits.max_pending_per_stranger = 4;
    })
    .await;
    let bob = Account::create(&h, "bob", "phone").await;
    let first = Account::create(&h, "mallory", "d0").await;
    let mut devices = vec![first];
    for i in 1..4 {
        let d = another_device(&h, &devices[0], &format!("d{i}")).await;
        devices.push(d);
    }
    let mut accepted = 0;
    for (n, d) in devices.iter().enumerate() {
        for i in 0..4u8 {
            let id = u8::try_from(n).unwrap() * 16 + i;
            match d
                .delivery()
                .enqueue(&enqueue_to(&bob.me(), id, b"flood"))
                .await
            {
                Ok(_) => accepted += 1,
                Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e}"),
            }
        }
    }
    assert_eq!(accepted, 4, "four devices share one user's allowance");
    assert_eq!(bob.depth().await, 4);
}

#[tokio::test]
async fn one_user_fills_at_most_its_share_of_a_queue() {
    // 10 % of a 30-message queue is 3, below the per-sender limit of 1,000.
    let h = start(|c| {
        c.limits.max_queue_depth = 30;
        c.limits.max_queue_share_percent = 10;
    })
    .await;
    let bob = Account::create(&h, "bob", "phone").await;
    let alice = Account::create(&h, "alice", "phone").await;
    let carol = Account::create(&h, "carol", "phone").await;
    // Bob knows both, so the stranger quota is not what stops them.
    for who in [&alice, &carol] {
        bob.delivery()
            .enqueue(&enqueue_to(&who.me(), 1, b"hi"))
            .await
            .unwrap();
    }
    for i in 0..3 {
        alice
            .delivery()
            .enqueue(&enqueue_to(&bob.me(), i, b"x"))
            .await
            .unwrap();
    }
    let err = alice
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 3, b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // Carol's share is her own.
    carol
        .delivery()
        .enqueue(&enqueue_to(&bob.me(), 0, b"x"))
        .await
        .unwrap();
    assert_eq!(bob.depth().await, 4);
}

#[tokio::test]
async fn key_publishes_grow_the_log_only_with_news_and_are_limited_per_device() {
    let h = start(|c| c.limits.key_publishes_per_hour_per_device = 4).await;
    let bob = Account::create(&h, "bob", "phone").await;
    let size = || async {
        let head = bob
            .keys()
            .kt_head(&v1::KtHeadRequest {
                since_size: 0,
                ..Default::default()
            })
            .await
            .unwrap();
        qpq_core::kt::SignedTreeHead::decode(&head.tree_head)
            .unwrap()
            .tree_size
    };
    let (keys, mls) = bob.mls_member().await;
    assert_eq!(size().await, 1);
    // The same bundle again: no new leaf.
    let upload = v1::UploadHybridKeyRequest {
        key_bundle: keys.bundle.encode().into(),
        delivery_token: Default::default(),
    };
    bob.keys().upload_hybrid_key(&upload).await.unwrap();
    assert_eq!(size().await, 1, "an unchanged binding is not logged again");
    // Another identity for the same device is refused: identities never change.
    let other = qpq_core::bundle::KeyBundle::new(
        &qpq_core::identity::IdentityKey::generate(),
        keys.hybrid.public(),
        "bob",
        "phone",
    )
    .unwrap();
    let err = bob
        .keys()
        .upload_hybrid_key(&v1::UploadHybridKeyRequest {
            key_bundle: other.encode().into(),
            delivery_token: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // New last-resort packages are news, up to the hourly limit (4, two used above).
    for _ in 0..2 {
        bob.keys()
            .upload_key_package(&v1::UploadKeyPackageRequest {
                key_packages: vec![mls.last_resort_key_package().unwrap().into()],
                last_resort: true,
            })
            .await
            .unwrap();
    }
    assert_eq!(size().await, 3);
    let err = bob
        .keys()
        .upload_key_package(&v1::UploadKeyPackageRequest {
            key_packages: vec![mls.last_resort_key_package().unwrap().into()],
            last_resort: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert_eq!(size().await, 3);
}

#[tokio::test]
async fn channel_invitations_are_bounded_per_call_per_minute_and_per_owner() {
    let h = start(|c| {
        c.limits.max_channel_invites_per_call = 2;
        c.limits.channel_invites_per_minute_per_user = 3;
        c.limits.max_channels_per_user = 2;
    })
    .await;
    let bob = Account::create(&h, "bob", "phone").await;
    for u in ["u1", "u2", "u3"] {
        Account::create(&h, u, "pc").await;
    }
    let channels = v1::channel_client::ChannelClient::new(bob.client.clone());
    let create = |members: &[&str], name: &str| {
        let channels = channels.clone();
        let request = v1::CreateChannelRequest {
            name: name.into(),
            members: members.iter().map(|u| (*u).to_owned()).collect(),
            mls_group_id: Default::default(),
        };
        async move { channels.create_channel(&request).await }
    };
    let err = create(&["u1", "u2", "u3"], "too many").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let first = create(&["u1", "u2"], "a").await.unwrap().channel_id;
    // Two of three invitations this minute are used: two more are too many.
    let err = channels
        .update_channel(&v1::UpdateChannelRequest {
            channel_id: first.clone(),
            add: vec!["u3".into(), "u3".into()],
            remove: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    create(&[], "b").await.unwrap();
    let err = create(&[], "c").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("at most 2 channels"), "{err}");
}
