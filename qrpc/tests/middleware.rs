//! qrpc's layers (auth, rate limit, audit) and tower's (timeout, concurrency limit) on a
//! real server, plus the layers alone over mock services.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use qrpc::Code;
use qrpc::middleware::Quota;
use qrpc::middleware::{
    AuditLayer, AuditRecord, AuthLayer, AuthPolicy, RateLimitLayer, RequireIdentity,
};
use tower::{Service, ServiceExt};

#[tokio::test]
async fn auth_refuses_protected_methods_until_the_connection_logs_in() {
    let policy = AuthPolicy::new().public_methods([LOGIN.id, ECHO.id]);
    let server = start_layered(
        TestService::default(),
        AuthLayer::new(RequireIdentity, policy),
    );
    let client = server.client().await;

    assert!(
        client.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.is_ok(),
        "public method"
    );
    let err = client
        .unary::<_, Msg>(&WHOAMI, &Msg::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Protected by default, including methods nobody listed.
    let err = unary_raw(&client, 999, Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    client
        .unary::<_, Msg>(&LOGIN, &login("alice"))
        .await
        .unwrap();
    let me: Msg = client
        .unary(&WHOAMI, &Msg::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.text, "alice");
    // Once authenticated, an unknown method is what it is (docs/wire-protocol.md §7): the
    // method table is hidden from anonymous peers only.
    let err = unary_raw(&client, 999, Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    // The connection is the session: another connection is not logged in.
    let other = server.client().await;
    let err = other
        .unary::<_, Msg>(&WHOAMI, &Msg::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn rate_limit_per_ip_exhausts_after_the_burst() {
    let quota = Quota::per_minute(NonZeroU32::new(5).unwrap());
    let server = start_layered(
        TestService::default(),
        RateLimitLayer::builder().per_ip(quota).build(),
    );
    let client = server.client().await;
    for _ in 0..5 {
        client.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.unwrap();
    }
    let err = client.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("retry in"), "{err}");
    // The limit is per IP, so a second connection from the same address is limited too.
    let other = server.client().await;
    assert_eq!(
        other
            .unary::<_, Msg>(&ECHO, &Msg::n(1))
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );
}

#[tokio::test]
async fn rate_limit_per_identity_and_per_method() {
    let limits = RateLimitLayer::builder()
        .per_identity(Quota::per_minute(NonZeroU32::new(3).unwrap()))
        .per_method(SLOW.id, Quota::per_minute(NonZeroU32::new(1).unwrap()))
        .build();
    let server = start_layered(TestService::default(), limits);
    let client = server.client().await;

    client.unary::<_, Msg>(&SLOW, &Msg::n(0)).await.unwrap();
    assert_eq!(
        client
            .unary::<_, Msg>(&SLOW, &Msg::n(0))
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );

    // Before login there is no identity limit; after it, three calls per identity.
    for _ in 0..5 {
        client.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.unwrap();
    }
    // The login call itself runs before the identity is bound, so it counts against the IP.
    client.unary::<_, Msg>(&LOGIN, &login("bob")).await.unwrap();
    for _ in 0..3 {
        client.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.unwrap();
    }
    let err = client.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("identity"), "{err}");
}

#[tokio::test]
async fn audit_records_method_peer_and_status() {
    let records: Arc<Mutex<Vec<AuditRecord>>> = Arc::default();
    let sink = records.clone();
    let server = start_layered(
        TestService::default(),
        AuditLayer::with_sink(move |r| sink.lock().unwrap().push(r.clone())),
    );
    let client = server.client().await;
    echo_then_fail_with_secrets(&client).await;
    let _ = unary_raw(&client, 4242, Default::default())
        .await
        .unwrap_err();

    let records = records.lock().unwrap().clone();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].method.unwrap().to_string(), "test.Svc/Echo");
    assert_eq!(records[0].code, Code::Ok);
    assert_eq!(records[1].code, Code::NotFound);
    assert_eq!(
        (records[2].method_id, records[2].method, records[2].code),
        (4242, None, Code::Unimplemented)
    );
    assert!(records.iter().all(|r| r.peer.ip().is_loopback()));
}

#[tokio::test]
async fn tower_timeout_ends_slow_calls_with_deadline_exceeded() {
    let server = start_layered(
        TestService::default(),
        tower::timeout::TimeoutLayer::new(Duration::from_millis(100)),
    );
    let client = server.client().await;
    let err = client
        .unary::<_, Msg>(&SLOW, &Msg::n(5_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(client.unary::<_, Msg>(&SLOW, &Msg::n(1)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_concurrency_limit_bounds_running_handlers() {
    let service = TestService::default();
    let observed = service.observed.clone();
    let server = start_layered(
        service,
        tower::ServiceBuilder::new()
            .layer(AuditLayer::new())
            .layer(tower::limit::ConcurrencyLimitLayer::new(2)),
    );
    let client = server.client().await;
    let calls = (0..10).map(|_| {
        let client = client.clone();
        async move { client.unary::<_, Msg>(&SLOW, &Msg::n(30)).await }
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    assert_eq!(observed.slow_finished.load(Ordering::SeqCst), 10);
    assert_eq!(observed.max_in_flight.load(Ordering::SeqCst), 2);
}

/// The layers alone, over a mock service and a detached connection: no network needed.
#[tokio::test]
async fn layers_work_over_mock_services() {
    let registry = qrpc::PushRegistry::new();
    let conn = qrpc::testing::detached_peer("10.0.0.1:5000".parse().unwrap(), registry.clone());
    let request = |method_id| {
        qrpc::ServerRequest::new(
            qrpc::testing::request_context(&conn, method_id, None, 1),
            (),
        )
    };
    let mock = tower::service_fn(|_req: qrpc::ServerRequest<()>| async {
        Ok::<_, qrpc::Status>("handled")
    });

    let mut auth = tower::Layer::layer(
        &AuthLayer::new(RequireIdentity, AuthPolicy::new().public(1)),
        mock,
    );
    assert_eq!(
        auth.ready().await.unwrap().call(request(1)).await.unwrap(),
        "handled"
    );
    let err = auth
        .ready()
        .await
        .unwrap()
        .call(request(2))
        .await
        .unwrap_err();
    assert_eq!(qrpc::Status::from_error(err).code(), Code::Unauthenticated);
    conn.bind_identity(qrpc::PeerIdentity::new("carol"));
    // Registered (a detached connection has no live push stream, so it is not "online").
    assert_eq!(registry.len(), 1);
    assert_eq!(
        auth.ready().await.unwrap().call(request(2)).await.unwrap(),
        "handled"
    );

    let layer = RateLimitLayer::builder()
        .per_ip(Quota::per_hour(NonZeroU32::new(2).unwrap()))
        .build();
    let mut limited = tower::Layer::layer(&layer, mock);
    for _ in 0..2 {
        limited
            .ready()
            .await
            .unwrap()
            .call(request(1))
            .await
            .unwrap();
    }
    let err = limited
        .ready()
        .await
        .unwrap()
        .call(request(1))
        .await
        .unwrap_err();
    assert_eq!(
        qrpc::Status::from_error(err).code(),
        Code::ResourceExhausted
    );
    conn.clear_identity();
    assert!(registry.is_empty());
}
