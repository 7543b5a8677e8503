//! The TUI's screen, drawn on ratatui's test backend, and its key handling.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use qpq_cli::keys::KeyMap;
use qpq_cli::tui::{Intent, View, draw, handle_key};
use qpq_sdk::{ConversationId, Message, MessageId, SendState};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

fn message(n: u8, sender: &str, body: &str, outgoing: bool, state: SendState) -> Message {
    // Messages come from the SDK; build one through its public fields.
    let mut m: Message = serde_free_message(n, sender, body);
    m.outgoing = outgoing;
    m.state = state;
    m
}

fn serde_free_message(n: u8, sender: &str, body: &str) -> Message {
    Message {
        id: MessageId([n; 16]),
        conversation: ConversationId([1; 16]),
        sender: sender.into(),
        body: body.into(),
        reply_to: None,
        sent_at_ms: 1_796_043_909_000,
        received_at_ms: 1_796_043_909_000,
        outgoing: false,
        state: SendState::Received,
        edited: false,
        deleted: false,
        reactions: Vec::new(),
        read_by: Vec::new(),
        attachment: None,
    }
}

fn view() -> View {
    let mut replied = message(3, "bob/phone", "sure", false, SendState::Received);
    replied.reply_to = Some(MessageId([1; 16]));
    replied.reactions = vec![("alice".into(), "👍".into())];
    View {
        me: "alice/laptop".into(),
        connection: "Connected".into(),
        outbox: 1,
        conversations: vec![
            (ConversationId([1; 16]), "bob".into(), 0),
            (ConversationId([2; 16]), "team".into(), 3),
        ],
        selected: 0,
        members: vec!["alice".into(), "bob".into()],
        messages: vec![
            message(1, "alice/laptop", "lunch?", true, SendState::Sent),
            message(2, "alice/laptop", "queued one", true, SendState::Queued),
            replied,
            message(
                4,
                "alice/laptop",
                "doomed",
                true,
                SendState::Failed {
                    recoverable: false,
                    reason: "bob/phone: gone".into(),
                },
            ),
        ],
        typing: vec!["bob".into()],
        keys: KeyMap::new(&BTreeMap::new()).unwrap().describe(),
        ..View::default()
    }
}

fn screen(v: &View, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| draw(f, v)).unwrap();
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        for x in 0..w {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

#[test]
fn the_screen_shows_conversations_messages_states_and_the_status_bar() {
    let s = screen(&view(), 140, 20);
    for expected in [
        "alice/laptop · Connected · outbox 1",
        "f1: help",
        "Conversations",
        "team (3)",
        "bob — alice, bob",
        "lunch?",
        "sent ✓",
        "queued",
        "↪ 010101 \"lunch?\"",
        "[👍",
        "alice]",
        "FAILED: bob/phone: gone — ctrl-r sends it again",
        "bob typing…",
        "message or /command",
    ] {
        assert!(s.contains(expected), "missing {expected:?} in\n{s}");
    }
    assert!(!s.contains("bob (0)"), "no count when nothing is unread");
    assert!(!s.contains("message request"), "nothing to answer");
    let mut v = view();
    v.requests = 2;
    let s = screen(&v, 140, 20);
    assert!(s.contains("2 message requests (/requests)"), "{s}");
}

#[test]
fn a_key_transparency_alarm_is_loud_and_help_lists_the_keys() {
    let mut v = view();
    v.alarm = Some("bob/phone: two different logs".into());
    let s = screen(&v, 100, 24);
    assert!(
        s.contains("KEY TRANSPARENCY ALARM: bob/phone: two different logs"),
        "{s}"
    );
    v.show_help = true;
    let s = screen(&v, 100, 46);
    for expected in [
        "alt-down",
        "next conversation",
        "ctrl-r",
        "/group create",
        "Security",
    ] {
        assert!(s.contains(expected), "missing {expected:?} in\n{s}");
    }
}

#[test]
fn the_screen_survives_any_size() {
    let mut v = view();
    v.show_help = true;
    v.alarm = Some("x".into());
    v.log = vec!["one".into(), "two".into(), "three".into(), "four".into()];
    for (w, h) in [(1, 1), (2, 2), (10, 3), (20, 5), (40, 10), (300, 100)] {
        screen(&v, w, h);
    }
}

proptest::proptest! {
    #[test]
    fn resizing_never_panics(w in 1u16..200, h in 1u16..80, help in proptest::bool::ANY) {
        let mut v = view();
        v.show_help = help;
        screen(&v, w, h);
    }
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

#[test]
fn keys_edit_the_line_submit_it_and_move_between_conversations() {
    let keys = KeyMap::new(&BTreeMap::from([(
        "next_conversation".to_string(),
        "ctrl-n".to_string(),
    )]))
    .unwrap();
    let mut v = view();
    for c in "hi bob".chars() {
        handle_key(&mut v, &keys, key(KeyCode::Char(c)));
    }
    handle_key(&mut v, &keys, key(KeyCode::Left));
    handle_key(&mut v, &keys, key(KeyCode::Backspace));
    assert_eq!((v.input.as_str(), v.cursor), ("hi bb", 4));
    assert_eq!(
        handle_key(&mut v, &keys, key(KeyCode::Enter)),
        Intent::Submit("hi bb".into())
    );
    assert!(v.input.is_empty());
    assert_eq!(
        handle_key(
            &mut v,
            &keys,
            KeyEvent::new(KeyCode::Char('n'), KeyModifiers::CONTROL)
        ),
        Intent::Select(1)
    );
    assert_eq!(
        handle_key(
            &mut v,
            &keys,
            KeyEvent::new(KeyCode::Down, KeyModifiers::ALT)
        ),
        Intent::Redraw
    );

    // A password is masked on screen and handed over on Enter; Esc cancels.
    v.secret_prompt = Some("password".into());
    for c in "s3cret".chars() {
        handle_key(&mut v, &keys, key(KeyCode::Char(c)));
    }
    assert!(screen(&v, 60, 12).contains("••••••"));
    assert!(!screen(&v, 60, 12).contains("s3cret"));
    match handle_key(&mut v, &keys, key(KeyCode::Enter)) {
        Intent::Secret(p) => assert_eq!(p.as_str(), "s3cret"),
        other => panic!("{other:?}"),
    }
    v.secret_prompt = Some("password".into());
    handle_key(&mut v, &keys, key(KeyCode::Char('x')));
    handle_key(&mut v, &keys, key(KeyCode::Esc));
    assert!(v.secret_prompt.is_none() && v.input.is_empty());

    // F1 opens the help; any key closes it.
    handle_key(&mut v, &keys, key(KeyCode::F(1)));
    assert!(v.show_help);
    handle_key(&mut v, &keys, key(KeyCode::Char('q')));
    assert!(!v.show_help && v.input.is_empty());
    assert_eq!(
        handle_key(
            &mut v,
            &keys,
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
        ),
        Intent::Quit
    );
}

/// Compares a screen with `tests/snapshots/<name>.txt`; `UPDATE_SNAPSHOTS=1` rewrites it.
fn snapshot(name: &str, screen: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, screen).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_SNAPSHOTS=1 to create it)",
            path.display()
        )
    });
    assert!(
        want == screen,
        "{name} differs from {}:\n{screen}",
        path.display()
    );
}

#[test]
fn snapshots_of_the_main_screen_a_narrow_terminal_and_an_alarm() {
    snapshot("main", &screen(&view(), 100, 16));
    snapshot("narrow", &screen(&view(), 34, 14));
    let mut alarmed = view();
    alarmed.alarm = Some("bob/phone: the log shrank (a rollback)".into());
    snapshot("alarm", &screen(&alarmed, 100, 16));
}

#[test]
fn scripted_keys_switch_send_and_scroll() {
    let keys = KeyMap::new(&BTreeMap::new()).unwrap();
    let mut v = view();
    // Switch to the next conversation and back.
    assert_eq!(
        handle_key(
            &mut v,
            &keys,
            KeyEvent::new(KeyCode::Down, KeyModifiers::ALT)
        ),
        Intent::Select(1)
    );
    v.selected = 1;
    assert_eq!(
        handle_key(&mut v, &keys, KeyEvent::new(KeyCode::Up, KeyModifiers::ALT)),
        Intent::Select(0)
    );
    v.selected = 0;
    // Type and send.
    let mut intents = Vec::new();
    for c in "see you".chars() {
        intents.push(handle_key(&mut v, &keys, key(KeyCode::Char(c))));
    }
    assert!(
        intents.iter().all(|i| *i == Intent::Typed),
        "plain text announces typing"
    );
    assert_eq!(
        handle_key(&mut v, &keys, key(KeyCode::Enter)),
        Intent::Submit("see you".into())
    );
    // A long history: PageUp shows older messages, PageDown returns to the newest.
    v.messages = (1..=40)
        .map(|n| {
            message(
                n,
                "bob/phone",
                &format!("line {n}"),
                false,
                SendState::Received,
            )
        })
        .collect();
    let newest = screen(&v, 80, 14);
    assert!(
        newest.contains("line 40") && !newest.contains("line 30 "),
        "{newest}"
    );
    handle_key(&mut v, &keys, key(KeyCode::PageUp));
    handle_key(&mut v, &keys, key(KeyCode::PageUp));
    let older = screen(&v, 80, 14);
    assert!(
        older.contains("line 30") && !older.contains("line 40"),
        "{older}"
    );
    snapshot("scrolled", &older);
    handle_key(&mut v, &keys, key(KeyCode::PageDown));
    handle_key(&mut v, &keys, key(KeyCode::PageDown));
    assert_eq!(screen(&v, 80, 14), newest);
}
