//! Commands run beside the terminal's loop: a command waiting on the network holds up
//! nothing else, and its outcome comes back as a report.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use qpq_cli::background::{Background, Report};
use qpq_cli::session::Session;
use qpq_sdk::QpqClient;
use zeroize::Zeroizing;

mod common;

use common::{server, session};

#[tokio::test]
async fn a_command_waiting_on_the_network_holds_up_nothing_else() {
    // A "server" that takes packets and never answers: logging in waits on it.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = QpqClient::builder()
        .server(silent.local_addr().unwrap())
        .pin([1; 32])
        .in_memory()
        .build()
        .unwrap();
    let session = Session::new(client, "cli");
    let mut background = Background::default();
    background.start(
        &session,
        "/login alice".into(),
        Some(Zeroizing::new("pw".into())),
    );
    background.start(&session, "/whoami".into(), None);
    assert_eq!(background.running(), 2);
    let first = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Report::Finished(done) = background.next().await {
                return done;
            }
        }
    })
    .await
    .expect("the quick command finished while the slow one waits");
    assert_eq!(first.line, "/whoami");
    let said = first.outcome.unwrap().lines.join("\n");
    assert!(said.contains("not logged in"), "{said}");
    assert_eq!(background.running(), 1, "the login still waits");
}

#[tokio::test]
async fn what_a_command_changed_of_the_session_is_carried_back() {
    let s = server().await;
    let (mut alice, bob) = (session(&s), session(&s));
    let mut background = Background::default();
    let pw = || Some(Zeroizing::new("pw".to_owned()));
    for (session, line) in [(&alice, "/register alice"), (&bob, "/register bob")] {
        background.start(session, line.into(), pw());
        let done = finished(&mut background).await;
        assert!(done.outcome.is_ok(), "{line}: {:?}", done.outcome);
        assert_eq!(done.current, None, "registering opens nothing");
    }
    background.start(&alice, "/dm bob".into(), None);
    let done = finished(&mut background).await;
    assert!(done.outcome.is_ok(), "{:?}", done.outcome);
    let opened = done.current.expect("/dm opens the conversation").unwrap();
    assert_eq!(
        alice.current(),
        None,
        "the terminal's session changes only when applied"
    );
    done.apply_to(&mut alice);
    assert_eq!(alice.current(), Some(opened));
}

async fn finished(background: &mut Background) -> qpq_cli::background::Finished {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Report::Finished(done) = background.next().await {
                return done;
            }
        }
    })
    .await
    .unwrap()
}
