//! The `qpq` binary and its session against a real server on loopback.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{server, session};

use std::time::Duration;

use qpq_cli::session::{CommandError, Output, Session};
use qpq_sdk::ClientEvent;
use zeroize::Zeroizing;

/// Runs `qpq demo` with `args`; its transcript, once it succeeded.
fn demo(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qpq"))
        .arg("demo")
        .args(args)
        .env_remove("QPQ_CLI_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn qpq_demo_runs_with_no_arguments_and_tells_the_story() {
    let text = demo(&[]);
    for expected in [
        "alice → bob: \"Hi Bob! Lunch today?\"",
        "[queued → sending → sent]",
        "read by alice",
        "bob has it from carol/tablet",
        "edited to \"Hello team!\"",
        "reacted 👍",
        "upload 100%",
        "identical to what alice sent",
        "carol is back",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // Carol, offline while two messages were sent, gets both, in order.
    let first = text.find("carol has").unwrap();
    let caught_up = &text[first..];
    let a = caught_up.find("Carol, the notes are up.").unwrap();
    let b = caught_up.find("See you all at 12:30!").unwrap();
    assert!(a < b, "{text}");
}

#[test]
fn qpq_demo_federated_shows_two_servers_delivering_to_each_other() {
    let text = demo(&["--federated"]);
    for expected in [
        "bob has \"Hello bob, from another server!\" from alice@a.demo.test/laptop",
        "alice has \"Hi alice! Federation works.\" from bob@b.demo.test/phone",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

async fn run(session: &mut Session, line: &str) -> Result<Output, CommandError> {
    let mut ask = |_: &str| Ok(Zeroizing::new("pw".to_owned()));
    let mut progress = |_| {};
    session.run_line(line, &mut ask, &mut progress).await
}

async fn ok(session: &mut Session, line: &str) -> String {
    match run(session, line).await {
        Ok(out) => out.lines.join("\n"),
        Err(e) => panic!("{line}: {e}"),
    }
}

async fn err(session: &mut Session, line: &str) -> String {
    match run(session, line).await {
        Ok(out) => panic!("{line} should fail, said {:?}", out.lines),
        Err(e) => e.to_string(),
    }
}

async fn next<T>(
    events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
    mut pick: impl FnMut(ClientEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(e) = events.recv().await
                && let Some(t) = pick(e)
            {
                return t;
            }
        }
    })
    .await
    .unwrap()
}

fn short_of(line: &str) -> String {
    line.split_whitespace().next().unwrap().to_owned()
}

#[tokio::test]
async fn the_session_runs_every_kind_of_command() {
    let s = server().await;
    let (mut alice, mut bob, mut carol) = (session(&s), session(&s), session(&s));
    assert!(
        ok(&mut alice, "/register alice")
            .await
            .contains("logged in as alice/cli")
    );
    ok(&mut bob, "/register bob").await;
    ok(&mut carol, "/register carol").await;
    assert_eq!(ok(&mut alice, "/whoami").await, "alice/cli");
    assert!(
        err(&mut alice, "hello?")
            .await
            .contains("no conversation open")
    );
    assert!(err(&mut alice, "/frob").await.contains("unknown command"));

    let mut bob_events = bob.client().subscribe();
    assert!(ok(&mut alice, "/dm bob").await.contains("── #bob ──"));
    // Bob has never talked to Alice: a message request he answers.
    next(&mut bob_events, |e| {
        matches!(e, ClientEvent::MessageRequest { .. }).then_some(())
    })
    .await;
    assert_eq!(
        ok(&mut bob, "/list").await.lines().count(),
        1,
        "not listed yet"
    );
    let requests = ok(&mut bob, "/requests").await;
    assert!(
        requests.contains("alice invites you to a direct conversation"),
        "{requests}"
    );
    let id = requests.split_whitespace().next().unwrap().to_owned();
    assert_eq!(id.len(), 8, "{requests}");
    assert!(
        err(&mut bob, "/accept ffffffffff")
            .await
            .contains("no message request")
    );
    assert!(
        ok(&mut bob, &format!("/accept {id}"))
            .await
            .contains("accepted: #alice is open")
    );
    assert_eq!(ok(&mut bob, "/requests").await, "no message requests");
    let hello = short_of(&ok(&mut alice, "hello bob").await);
    next(&mut bob_events, |e| {
        matches!(e, ClientEvent::MessageReceived(m) if !m.outgoing).then_some(())
    })
    .await;
    assert!(
        ok(&mut bob, "/list")
            .await
            .contains("alice (alice, bob) — 1 unread")
    );
    let opened = ok(&mut bob, "/open alice").await;
    assert!(
        opened.contains(&format!("{hello} alice/cli: hello bob")),
        "{opened}"
    );
    assert!(
        !ok(&mut bob, "/list").await.contains("unread"),
        "opening marks read"
    );
    let reply = short_of(&ok(&mut bob, &format!("/reply {hello} hi alice")).await);
    ok(&mut bob, &format!("/react {hello} 👍")).await;
    let mut alice_events = alice.client().subscribe();
    next(&mut alice_events, |e| {
        matches!(e, ClientEvent::ReactionChanged { .. }).then_some(())
    })
    .await;
    let history = ok(&mut alice, "/history").await;
    assert!(history.contains(&format!("↪{hello} hi alice")), "{history}");
    assert!(history.contains("[👍 bob]"), "{history}");
    ok(&mut alice, &format!("/edit {hello} hello, bob")).await;
    assert!(
        err(&mut alice, &format!("/edit {reply} mine now"))
            .await
            .contains("only the author")
    );
    assert!(
        err(&mut alice, "/delete zzzzzz")
            .await
            .contains("no message zzzzzz")
    );
    assert!(ok(&mut alice, "/search hello").await.contains("hello, bob"));
    assert!(
        ok(&mut alice, "/search nothing-like-this")
            .await
            .contains("nothing matches")
    );

    // A file goes both ways through /attach and /download, with progress.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, vec![b'x'; 300_000]).unwrap();
    let mut seen = Vec::new();
    let out = {
        let mut ask = |_: &str| Ok(Zeroizing::new(String::new()));
        let mut progress = |p: qpq_sdk::Progress| seen.push(p.done);
        alice
            .run_line(
                &format!("/attach {} the notes", file.display()),
                &mut ask,
                &mut progress,
            )
            .await
            .unwrap()
    };
    assert!(seen.last().copied().unwrap() > 300_000, "{seen:?}");
    let att = short_of(&out.lines[0]);
    next(&mut bob_events, |e| {
        matches!(e, ClientEvent::MessageReceived(m) if m.attachment.is_some()).then_some(())
    })
    .await;
    let saved = dir.path().join("copy.txt");
    assert!(
        ok(&mut bob, &format!("/download {att} {}", saved.display()))
            .await
            .contains("verified")
    );
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        std::fs::read(&file).unwrap()
    );
    assert!(
        err(&mut bob, &format!("/download {att} {}", saved.display()))
            .await
            .contains("exists")
    );

    // Groups.
    let mut carol_events = carol.client().subscribe();
    assert!(
        ok(&mut alice, "/group create team bob carol")
            .await
            .contains("created #team")
    );
    // Carol is a stranger to Alice: the group is a request she accepts.
    next(&mut carol_events, |e| {
        matches!(e, ClientEvent::MessageRequest { .. }).then_some(())
    })
    .await;
    let requests = ok(&mut carol, "/requests").await;
    assert!(requests.contains("group \"team\""), "{requests}");
    let id = requests.split_whitespace().next().unwrap().to_owned();
    ok(&mut carol, &format!("/accept {id}")).await;
    assert_eq!(ok(&mut alice, "/members").await, "alice, bob, carol");
    ok(&mut alice, "/rename the team").await;
    assert!(ok(&mut carol, "/open 1").await.contains("──"));
    assert!(
        err(&mut carol, "/open nowhere")
            .await
            .contains("no conversation \"nowhere\"")
    );
    assert!(ok(&mut carol, "/safety alice").await.contains("cli:"));
    assert!(
        ok(&mut carol, "/devices")
            .await
            .contains("cli  (this device)")
    );
    assert!(ok(&mut carol, "/status").await.contains("outbox"));
    assert!(ok(&mut carol, "/help").await.contains("Security"));
    let left = ok(&mut carol, "/leave").await;
    assert!(left.starts_with("left #"), "{left}");
    assert!(run(&mut carol, "/quit").await.unwrap().quit);
}
