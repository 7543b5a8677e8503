//! Connection lifecycle: TLS trust, push, identity, shutdown, reconnect and migration.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use qrpc::tls::ClientTls;
use qrpc::{Client, ClientError, Code, ConnectionState, PeerIdentity};

#[tokio::test]
async fn wrong_pinned_certificate_is_refused() {
    let server = start(TestService::default());
    let mut wrong = server.fingerprint;
    wrong[0] ^= 1;
    let err = Client::connect(server.addr, ClientTls::pinned(wrong))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Peer(_)), "{err:?}");
    // A certificate trusted as a root works when the name matches, and fails when it does not.
    let other_cert = cert();
    let err = Client::connect(
        server.addr,
        ClientTls::trust_certificate(other_cert.cert().clone(), "localhost").unwrap(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Peer(_)), "{err:?}");
}

#[tokio::test]
async fn root_trust_with_matching_name_connects() {
    let cert = cert();
    let server = qrpc::Server::builder()
        .tls(cert.server_tls())
        .add_service(TestService::default().into_methods())
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let server = run(server, cert.fingerprint());
    let tls = ClientTls::trust_certificate(cert.cert().clone(), "localhost").unwrap();
    let client = Client::connect(server.addr, tls).await.unwrap();
    assert!(client.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.is_ok());
    let bad_name = ClientTls::trust_certificate(cert.cert().clone(), "example.org").unwrap();
    assert!(Client::connect(server.addr, bad_name).await.is_err());
}

#[tokio::test]
async fn push_events_arrive_in_queue_order() {
    let server = start(TestService::default());
    let client = server.client().await;
    let mut events = client.push_events().unwrap();
    assert!(
        client.push_events().is_none(),
        "the push stream is taken once"
    );
    let queued: Msg = client
        .unary(&PUSH, &Msg::n(200))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(queued.n, 200);
    for i in 0..200 {
        let frame = events.recv().await.unwrap();
        assert_eq!(frame.event_type(), 7);
        let msg: Msg = prost::Message::decode(frame.payload().clone()).unwrap();
        assert_eq!(msg.n, i);
    }
}

#[tokio::test]
async fn a_client_that_never_reads_push_stays_bounded() {
    let server = start_with(TestService::default(), |c| {
        c.push_queue_capacity(8);
        c
    });
    let client = Client::builder(server.addr, server.tls())
        .configure(|c| {
            c.push_buffer(2);
        })
        .connect()
        .await
        .unwrap();
    // 2000 events of 32 KiB: 64 MiB if the server kept them all.
    let request = Msg {
        n: 2000,
        data: vec![0; 32 * 1024],
        ..Msg::default()
    };
    let queued: Msg = client.unary(&PUSH, &request).await.unwrap().into_inner();
    assert!(queued.n < 2000, "the queue must refuse events once full");
    // Nothing is read: round after round (each a round trip, giving the server's push writer
    // time to send what flow control lets through), at most a queue's worth fits again.
    for _ in 0..5 {
        let again: Msg = client.unary(&PUSH, &request).await.unwrap().into_inner();
        assert!(
            again.n <= 8,
            "queued {} more events while the client read nothing",
            again.n
        );
    }
    assert!(client.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.is_ok());
}

#[tokio::test]
async fn registry_reaches_a_connection_by_identity() {
    let server = start(TestService::default());
    let alice = server.client().await;
    let mut alice_events = alice.push_events().unwrap();
    alice
        .unary::<_, Msg>(
            &LOGIN,
            &Msg {
                text: "alice".into(),
                ..Msg::default()
            },
        )
        .await
        .unwrap();
    let id = PeerIdentity::new("alice");
    assert!(server.registry.is_online(&id));
    let delivery =
        server
            .registry
            .try_send_to(&id, 3, prost::Message::encode_to_vec(&Msg::n(77)).into());
    assert_eq!((delivery.queued, delivery.dropped), (1, 0));
    let frame = alice_events.recv().await.unwrap();
    assert_eq!(frame.event_type(), 3);
    alice.close();
    eventually(|| !server.registry.is_online(&id)).await;
}

/// An application keeps connection handles (a session table) and push senders past the end of
/// their connections; they must not keep a stopped server's address bound.
#[tokio::test]
async fn kept_connection_handles_do_not_hold_a_stopped_servers_address() {
    let service = TestService::default();
    let observed = service.observed.clone();
    let mut server = start(service);
    let addr = server.addr;
    let client = server.client().await;
    client
        .unary::<_, Msg>(&LOGIN, &login("erin"))
        .await
        .unwrap();
    let kept = observed.kept.lock().unwrap()[0].clone();
    let push = kept.push().clone();
    client.close();
    server.shutdown().await.unwrap();

    // The handles still answer, as for any ended connection.
    eventually(|| kept.is_closed()).await;
    assert!(push.try_send(3, bytes::Bytes::new()).is_err());
    assert!(push.send_unreliable(3, bytes::Bytes::new()).is_err());
    // The address is free once the closed connections have drained (three probe timeouts,
    // milliseconds on loopback).
    eventually(|| std::net::UdpSocket::bind(addr).is_ok()).await;
}

#[tokio::test]
async fn graceful_shutdown_completes_in_flight_calls() {
    let service = TestService::default();
    let observed = service.observed.clone();
    let mut server = start(service);
    let client = server.client().await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.unary::<_, Msg>(&SLOW, &Msg::n(300)).await }
    });
    // Shut down only once the call is running in its handler.
    observed.slow_start.notified().await;
    let serve = server.shutdown();
    let reply = call.await.unwrap().unwrap();
    assert_eq!(reply.get_ref().n, 300);
    tokio::time::timeout(Duration::from_secs(5), serve)
        .await
        .unwrap()
        .unwrap();
    // No new connections after shutdown.
    let refused = Client::builder(server.addr, server.tls())
        .configure(|c| {
            c.connect_timeout(Duration::from_millis(500));
        })
        .connect()
        .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn shutdown_grace_bounds_how_long_calls_may_run() {
    let service = TestService::default();
    let observed = service.observed.clone();
    let mut server = start_with(service, |c| {
        c.shutdown_grace(Duration::from_millis(200));
        c
    });
    let client = server.client().await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.unary::<_, Msg>(&SLOW, &Msg::n(60_000)).await }
    });
    observed.slow_start.notified().await;
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown waited for the minute-long call instead of its grace")
        .unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    // The call was cut by the expired grace (SHUTDOWN), not refused before it started.
    let disconnect = client.disconnects().borrow().clone().unwrap();
    assert_eq!(
        disconnect.application_code,
        Some(qrpc::protocol::close::SHUTDOWN.into_inner()),
        "{disconnect:?}"
    );
    assert_eq!(observed.slow_finished.load(Ordering::SeqCst), 0);
}

/// A method whose handler each test gives, for calls that span a shutdown.
const WAIT: qrpc::MethodInfo = qrpc::MethodInfo {
    id: 1,
    service: "test.Wait",
    name: "Wait",
    kind: qrpc::CallKind::Unary,
    idempotent: false,
};
static WAITER: qrpc::ServiceDescriptor = qrpc::ServiceDescriptor {
    name: "test.Wait",
    methods: &[WAIT],
};

/// A server with only `WAIT`, answered by `handler`, and a shutdown grace long enough that
/// only the handler decides when a call ends.
fn serve_wait(handler: qrpc::Handler) -> Running {
    let cert = cert();
    let bound = qrpc::Server::builder()
        .tls(cert.server_tls())
        .configure(|c| {
            c.shutdown_grace(Duration::from_secs(600));
        })
        .add_service(qrpc::Methods::new(&WAITER).route(WAIT, handler))
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    run(bound, cert.fingerprint())
}

#[tokio::test]
async fn handlers_see_the_shutdown_and_can_answer_before_the_grace() {
    let started = Arc::new(tokio::sync::Notify::new());
    let handler_started = Arc::clone(&started);
    let mut server = serve_wait(qrpc::Handler::unary(move |ctx, _m: Msg| {
        let started = Arc::clone(&handler_started);
        async move {
            started.notify_one();
            // A long poll: it ends when the server shuts down.
            ctx.peer().server_shutdown().await;
            Ok::<_, qrpc::Status>(Msg::n(7))
        }
    }));
    let client = server.client().await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.unary::<_, Msg>(&WAIT, &Msg::default()).await }
    });
    started.notified().await;
    // Without the signal this would wait out the 600 s grace.
    tokio::time::timeout(Duration::from_secs(20), server.shutdown())
        .await
        .expect("the long poll held the shutdown")
        .unwrap();
    assert_eq!(
        call.await.unwrap().unwrap().get_ref().n,
        7,
        "answered, not cut"
    );
}

/// While in-flight calls finish, a new connection is refused at once (CONNECTION_REFUSED), so
/// a reconnecting client backs off and tries again instead of waiting out its connect timeout
/// against a server that no longer answers handshakes.
#[tokio::test]
async fn a_draining_server_refuses_new_connections_at_once() {
    // The handler tells the test when it has seen the shutdown, then holds the drain open
    // until the test lets it go.
    let started = Arc::new(tokio::sync::Notify::new());
    let draining = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (start, seen, let_go) = (
        Arc::clone(&started),
        Arc::clone(&draining),
        Arc::clone(&release),
    );
    let mut server = serve_wait(qrpc::Handler::unary(move |ctx, _m: Msg| {
        let (start, seen, let_go) = (Arc::clone(&start), Arc::clone(&seen), Arc::clone(&let_go));
        async move {
            start.notify_one();
            ctx.peer().server_shutdown().await;
            seen.notify_one();
            let_go.notified().await;
            Ok::<_, qrpc::Status>(Msg::n(1))
        }
    }));
    let client = server.client().await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.unary::<_, Msg>(&WAIT, &Msg::default()).await }
    });
    started.notified().await;
    let serve = server.shutdown();
    draining.notified().await;

    let refused = Client::builder(server.addr, server.tls())
        .configure(|c| {
            c.connect_timeout(Duration::from_secs(120));
        })
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &refused,
            ClientError::Peer(quinn::ConnectionError::ConnectionClosed(close))
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
        ),
        "{refused:?}"
    );

    release.notify_one();
    assert_eq!(call.await.unwrap().unwrap().get_ref().n, 1);
    serve.await.unwrap();
}

#[tokio::test]
async fn client_reconnects_with_backoff_after_a_server_restart() {
    let cert = cert();
    let mut first = start_on("127.0.0.1:0".parse().unwrap(), &cert);
    let addr = first.addr;
    let client = Client::builder(addr, first.tls())
        .configure(|c| {
            c.reconnect_mut().initial_backoff(Duration::from_millis(20));
            c.reconnect_mut().max_backoff(Duration::from_millis(200));
        })
        .connect()
        .await
        .unwrap();
    client
        .unary::<_, Msg>(
            &LOGIN,
            &Msg {
                text: "dave".into(),
                ..Msg::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(*client.disconnects().borrow(), None);
    first.shutdown().await.unwrap();
    let mut state = client.state();
    state
        .wait_for(|s| matches!(s, ConnectionState::Reconnecting { .. }))
        .await
        .unwrap();
    // The graceful shutdown's close code reached the client before the state changed.
    let closed = client.disconnects().borrow().clone().unwrap();
    assert_eq!(
        closed.application_code,
        Some(qrpc::protocol::close::NO_ERROR.into_inner()),
        "{closed:?}"
    );

    let _second = start_on(addr, &cert);
    state
        .wait_for(|s| matches!(s, ConnectionState::Connected { generation: 2 }))
        .await
        .unwrap();
    let me: Msg = client
        .unary(&WHOAMI, &Msg::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.text, "", "a new connection is a new session");
}

#[tokio::test]
async fn reconnect_gives_up_after_max_attempts() {
    let mut server = start(TestService::default());
    let client = Client::builder(server.addr, server.tls())
        .configure(|c| {
            c.reconnect_mut().initial_backoff(Duration::from_millis(10));
            c.reconnect_mut().max_attempts(Some(2));
            c.connect_timeout(Duration::from_millis(300));
        })
        .connect()
        .await
        .unwrap();
    server.shutdown().await.unwrap();
    let mut state = client.state();
    state
        .wait_for(|s| matches!(s, ConnectionState::Closed { .. }))
        .await
        .unwrap();
    let err = client.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
}

#[tokio::test]
async fn connection_migrates_to_a_new_local_socket() {
    let server = start(TestService::default());
    let client = server.client().await;
    client
        .unary::<_, Msg>(
            &LOGIN,
            &Msg {
                text: "erin".into(),
                ..Msg::default()
            },
        )
        .await
        .unwrap();
    let before = client.call_service().local_addr().unwrap();
    client.rebind("127.0.0.1:0".parse().unwrap()).unwrap();
    let after = client.call_service().local_addr().unwrap();
    assert_ne!(before.port(), after.port());
    // Same connection (the session survives) over the new path.
    let me: Msg = client
        .unary(&WHOAMI, &Msg::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.text, "erin");
}

#[tokio::test]
async fn idle_timeout_closes_quiet_connections_and_keep_alive_prevents_it() {
    let server = start_with(TestService::default(), |c| {
        c.idle_timeout(Duration::from_millis(300));
        c
    });
    // A client without keep-alives, used once and then left idle until the server's idle
    // timeout closes it: each call waits out one idle period.
    let idle_out = || async {
        let quiet = Client::builder(server.addr, server.tls())
            .configure(|c| {
                c.keep_alive_interval(None);
                c.reconnect_mut().enabled(false);
            })
            .connect()
            .await
            .unwrap();
        quiet.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.unwrap();
        let mut state = quiet.state();
        tokio::time::timeout(
            Duration::from_secs(5),
            state.wait_for(|s| matches!(s, ConnectionState::Closed { .. })),
        )
        .await
        .unwrap()
        .unwrap();
    };
    let kept = Client::builder(server.addr, server.tls())
        .configure(|c| {
            c.keep_alive_interval(Some(Duration::from_millis(100)));
            c.reconnect_mut().enabled(false);
        })
        .connect()
        .await
        .unwrap();
    // Two idle periods pass, one after the other, and the client with keep-alives is still
    // connected.
    idle_out().await;
    idle_out().await;
    assert!(matches!(
        *kept.state().borrow(),
        ConnectionState::Connected { .. }
    ));
    assert!(kept.unary::<_, Msg>(&ECHO, &Msg::n(2)).await.is_ok());
}

/// A server whose process dies sends nothing; one started on its address with the same
/// stateless-reset secret answers the dead connection's next packet with a stateless reset,
/// so the client learns at once instead of after its idle timeout (30 s here).
#[test]
fn a_restarted_server_with_the_same_reset_secret_resets_dead_connections_at_once() {
    let cert = cert();
    let secret = [7u8; 32];
    // The first server runs on a runtime of its own, dropped without a word to its clients,
    // as a killed process would be.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (die_tx, die_rx) = std::sync::mpsc::channel::<()>();
    let first = {
        let tls = cert.server_tls();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let server = qrpc::Server::builder()
                    .tls(tls)
                    .configure(|c| {
                        c.stateless_reset_key(secret);
                    })
                    .add_service(TestService::default().into_methods())
                    .bind("127.0.0.1:0".parse().unwrap())
                    .unwrap();
                addr_tx.send(server.local_addr().unwrap()).unwrap();
                tokio::spawn(server.serve());
            });
            die_rx.recv().unwrap();
            // Tasks are dropped, not run to an end: no close frame leaves.
            drop(runtime);
        })
    };
    let addr = addr_rx.recv().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::builder(addr, ClientTls::pinned(cert.fingerprint()))
            .connect()
            .await
            .unwrap();
        client
            .unary::<_, Msg>(&WHOAMI, &Msg::default())
            .await
            .unwrap();
        die_tx.send(()).unwrap();
        first.join().unwrap();

        let server = qrpc::Server::builder()
            .tls(cert.server_tls())
            .configure(|c| {
                c.stateless_reset_key(secret);
            })
            .add_service(TestService::default().into_methods())
            .bind(addr)
            .unwrap();
        let _second = run(server, cert.fingerprint());
        // The next call's packets reach the new server, which resets the connection; the
        // client reconnects and the call (or the one after it) is answered.
        let mut disconnects = client.disconnects();
        let big = Msg {
            text: "x".repeat(200),
            ..Msg::default()
        };
        let call = client.unary::<_, Msg>(&ECHO, &big);
        let (_, reset) = tokio::join!(
            call,
            tokio::time::timeout(
                Duration::from_secs(5),
                disconnects.wait_for(|d| d.is_some())
            )
        );
        let reason = reset
            .expect("no reset within 5 s")
            .unwrap()
            .clone()
            .unwrap();
        assert!(reason.reason.contains("reset"), "{reason:?}");
        client
            .unary::<_, Msg>(&WHOAMI, &Msg::default())
            .await
            .unwrap();
    });
}

#[tokio::test]
async fn a_client_fails_over_to_the_services_other_addresses() {
    let cert = cert();
    let mut first = start_on("127.0.0.1:0".parse().unwrap(), &cert);
    let second = start_on("127.0.0.1:0".parse().unwrap(), &cert);
    let client = Client::builder(first.addr, first.tls())
        .configure(|c| {
            c.fallback_addresses(vec![second.addr]);
            c.reconnect_mut().initial_backoff(Duration::from_millis(10));
        })
        .connect()
        .await
        .unwrap();
    client
        .unary::<_, Msg>(&WHOAMI, &Msg::default())
        .await
        .unwrap();
    // The first node goes away: the first reconnect attempt goes to the second.
    first.shutdown().await.unwrap();
    let mut state = client.state();
    tokio::time::timeout(
        Duration::from_secs(5),
        state.wait_for(|s| matches!(s, ConnectionState::Connected { generation: 2 })),
    )
    .await
    .expect("no failover within 5 s")
    .unwrap();
    client
        .unary::<_, Msg>(&WHOAMI, &Msg::default())
        .await
        .unwrap();

    // A client whose first address is dead at start connects to the next one.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let late = Client::builder(dead_addr, second.tls())
        .configure(|c| {
            c.fallback_addresses(vec![second.addr]);
            c.connect_timeout(Duration::from_millis(500));
            c.zero_rtt(false);
        })
        .connect()
        .await
        .unwrap();
    late.unary::<_, Msg>(&WHOAMI, &Msg::default())
        .await
        .unwrap();
}
