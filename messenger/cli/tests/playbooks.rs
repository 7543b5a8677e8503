//! Every playbook under `examples/playbooks/` passes, and a failing one says which step.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

fn qpq(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_qpq"))
        .args(args)
        .env_remove("QPQ_CLI_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn every_example_playbook_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/playbooks");
    let mut ran = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = qpq(&["play", path.to_str().unwrap()]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}:\n{text}\n{}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.contains("playbook passed"), "{text}");
            ran += 1;
        }
    }
    assert!(ran >= 2, "found {ran} playbooks in {}", dir.display());
}

#[test]
fn an_unmet_expectation_fails_with_the_step_named() {
    let dir = tempfile::tempdir().unwrap();
    let book = dir.path().join("bad.yaml");
    std::fs::write(
        &book,
        "users: [alice, bob]\nsteps:\n  - dm: { from: alice, with: bob }\n  - send: { from: alice, to: bob, text: \"hello\" }\n  - expect_message: { user: bob, from: alice, text: \"goodbye\", within: 2s }\n",
    )
    .unwrap();
    let out = qpq(&["play", book.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("step 3 (expect_message bob ← alice: \"goodbye\")")
            && err.contains("not received within 2s"),
        "{err}"
    );
    let missing = qpq(&["play", "/nonexistent/book.yaml"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/book.yaml")
    );
}
