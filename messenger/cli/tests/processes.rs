//! Two `qpq` processes exchange messages through one server; bad input gets one clear line.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{Server, server};

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

/// Runs `qpq` for the profile in `dir` against `s`, with `stdin` as its input.
fn qpq(s: &Server, dir: &std::path::Path, passphrase: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qpq"))
        .arg("--server")
        .arg(s.running.addr.to_string())
        .arg("--pin")
        .arg(qrpc::tls::format_fingerprint(&s.running.fingerprint))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("QPQ_PASSPHRASE", passphrase)
        .env_remove("QPQ_CLI_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_talk_through_one_server() {
    let s = server().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let run =
        |dir: &std::path::Path, args: &[&str], stdin: &str| qpq(&s, dir, "store pass", args, stdin);
    // A confirmation that differs registers nothing (the name stays free).
    let differ = run(a.path(), &["register", "alice"], "alice pw\nalice wp\n");
    assert!(!differ.status.success());
    let said = String::from_utf8_lossy(&differ.stderr);
    assert!(said.contains("the two passwords differ"), "{said}");
    assert!(
        ok(&run(
            a.path(),
            &["register", "alice"],
            "alice pw\nalice pw\n"
        ))
        .contains("logged in as alice/cli")
    );
    ok(&run(b.path(), &["register", "bob"], "bob pw\nbob pw\n"));

    let sent = ok(&run(
        a.path(),
        &["send", "bob", "hello from another process", "--json"],
        "",
    ));
    let sent: serde_json::Value = serde_json::from_str(sent.trim()).unwrap();
    assert_eq!(sent["state"], "sent");

    // Alice is a stranger to Bob: her conversation is a request he accepts first.
    let read = ok(&run(b.path(), &["read"], ""));
    let line = read
        .lines()
        .find(|l| l.starts_with("? message request "))
        .unwrap_or_else(|| panic!("no request in {read}"));
    assert!(
        line.contains("from alice (alice, bob): `qpq accept "),
        "{line}"
    );
    let id = line.split_whitespace().nth(3).unwrap();
    assert!(ok(&run(b.path(), &["accept", id], "")).contains("accepted alice's invitation"));
    let read = ok(&run(b.path(), &["read", "--json"], ""));
    let lines: Vec<serde_json::Value> = read
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{read}");
    assert_eq!(lines[0]["body"], "hello from another process");
    assert_eq!(lines[0]["sender"], "alice/cli");
    assert_eq!(lines[0]["id"], sent["id"]);

    ok(&run(b.path(), &["send", "alice", "and back"], ""));
    let read = ok(&run(a.path(), &["read"], ""));
    assert!(read.contains("bob/cli: and back"), "{read}");
    // Read once: nothing is unread any more.
    let list = ok(&run(a.path(), &["conversations", "--json"], ""));
    let conv: serde_json::Value = serde_json::from_str(list.trim()).unwrap();
    assert_eq!(
        (conv["name"].as_str(), conv["unread"].as_u64()),
        (Some("bob"), Some(0))
    );
    assert!(ok(&run(a.path(), &["read"], "")).trim().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_one_clear_line_and_the_session_goes_on() {
    let s = server().await;
    let a = tempfile::tempdir().unwrap();
    ok(&qpq(
        &s,
        a.path(),
        "right",
        &["register", "alice"],
        "pw\npw\n",
    ));
    // The REPL, fed by a pipe: each bad line is one error, then the next command works.
    let out = ok(&qpq(
        &s,
        a.path(),
        "right",
        &[],
        "/frobnicate\n/dm nobody-at-all\n/attach /nonexistent/file.txt\n/reply\n/whoami\n",
    ));
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 4, "{out}");
    assert!(errors[0].contains("unknown command /frobnicate"), "{out}");
    assert!(errors[1].contains("nobody-at-all"), "{out}");
    assert!(
        errors[2].contains("cannot read /nonexistent/file.txt"),
        "{out}"
    );
    assert!(errors[3].contains("usage: /reply <id> <text>"), "{out}");
    assert!(out.contains("alice/cli"), "/whoami still answers: {out}");

    // A wrong store passphrase: one clear line, nothing opened.
    let wrong = qpq(&s, a.path(), "wrong", &["conversations"], "");
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("cannot be opened with this key (wrong passphrase?)"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
