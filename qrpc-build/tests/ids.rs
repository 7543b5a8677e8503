//! Build-time checks of method ids and push channels, on generated code written to temp dirs.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;

fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qrpc-build-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("out")).unwrap();
    dir
}

fn compile(name: &str, source: &str) -> Result<PathBuf, qrpc_build::Error> {
    let dir = workdir(name);
    std::fs::write(dir.join("svc.proto"), source).unwrap();
    qrpc_build::configure()
        .out_dir(dir.join("out"))
        .emit_rerun_if_changed(false)
        .compile(&[dir.join("svc.proto")], &[&dir])?;
    Ok(dir)
}

const HEADER: &str =
    "syntax = \"proto3\";\npackage t.v1;\nimport \"qrpc/options.proto\";\nmessage M {}\n";

#[test]
fn duplicate_id_names_file_service_and_both_methods() {
    let src = format!(
        "{HEADER}service S {{\n rpc A(M) returns (M) {{ option (qrpc.method_id) = 7; }}\n rpc B(M) returns (M) {{ option (qrpc.method_id) = 7; }}\n}}\n"
    );
    let err = compile("dup", &src).unwrap_err().to_string();
    assert!(err.contains("duplicate method id 7"), "{err}");
    assert!(
        err.contains("svc.proto: t.v1.S.A") && err.contains("svc.proto: t.v1.S.B"),
        "{err}"
    );
}

#[test]
fn duplicate_id_across_services_is_rejected() {
    let src = format!(
        "{HEADER}service S {{ rpc A(M) returns (M) {{ option (qrpc.method_id) = 1; }} }}\nservice T {{ rpc B(M) returns (M) {{ option (qrpc.method_id) = 1; }} }}\n"
    );
    let err = compile("dup2", &src).unwrap_err().to_string();
    assert!(
        err.contains("t.v1.S.A") && err.contains("t.v1.T.B"),
        "{err}"
    );
}

#[test]
fn missing_id_is_an_error_naming_the_method() {
    let src = format!("{HEADER}service S {{ rpc NoId(M) returns (M); }}\n");
    let err = compile("missing", &src).unwrap_err().to_string();
    assert!(
        err.contains("svc.proto: method t.v1.S.NoId has no method id"),
        "{err}"
    );
}

#[test]
fn out_of_range_ids_are_rejected() {
    for bad in [0u32, 65536] {
        let src = format!(
            "{HEADER}service S {{ rpc A(M) returns (M) {{ option (qrpc.method_id) = {bad}; }} }}\n"
        );
        let err = compile(&format!("range{bad}"), &src)
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside 1..=65535"), "{err}");
    }
}

#[test]
fn reordering_methods_keeps_ids_and_comments_become_docs() {
    let a = format!(
        "{HEADER}// The service.\nservice S {{\n // First method.\n rpc A(M) returns (M) {{ option (qrpc.method_id) = 10; }}\n rpc B(M) returns (M) {{ option (qrpc.method_id) = 20; }}\n}}\n"
    );
    let b = format!(
        "{HEADER}service S {{\n rpc B(M) returns (M) {{ option (qrpc.method_id) = 20; }}\n // First method.\n rpc A(M) returns (M) {{ option (qrpc.method_id) = 10; }}\n}}\n"
    );
    let code_a =
        std::fs::read_to_string(compile("order-a", &a).unwrap().join("out/t.v1.rs")).unwrap();
    let code_b =
        std::fs::read_to_string(compile("order-b", &b).unwrap().join("out/t.v1.rs")).unwrap();
    // Each method keeps its own id whatever the order: A is 10 and B is 20 in both files.
    let constant = |code: &str, name: &str| -> String {
        let start = code
            .find(&format!("pub const {name}: ::qrpc::codegen::MethodInfo"))
            .unwrap_or_else(|| panic!("no constant {name} in:\n{code}"));
        let end = start + code[start..].find("};").unwrap();
        code[start..end].to_owned()
    };
    for code in [&code_a, &code_b] {
        let a = constant(code, "A");
        let b = constant(code, "B");
        assert!(a.contains("id: 10u16") && a.contains("name: \"A\""), "{a}");
        assert!(b.contains("id: 20u16") && b.contains("name: \"B\""), "{b}");
        assert!(code.contains("/// First method."), "{code}");
    }
    assert!(code_a.contains("/// The service."));
}

#[test]
fn push_channel_must_be_a_oneof_of_messages() {
    let src = format!(
        "{HEADER}message Bad {{ option (qrpc.push_channel) = true; oneof e {{ string text = 1; }} }}\n"
    );
    let err = compile("push", &src).unwrap_err().to_string();
    assert!(
        err.contains("push channel t.v1.Bad: event `text` must be a message"),
        "{err}"
    );
}

#[test]
fn syntax_errors_are_reported_with_the_file() {
    let err = compile("syntax", "syntax = \"proto3\"; message {")
        .unwrap_err()
        .to_string();
    assert!(err.contains("svc.proto"), "{err}");
}

#[test]
fn idempotency_level_marks_methods_idempotent_and_streamed_requests_cannot_be() {
    let src = format!(
        "{HEADER}service S {{\n rpc Get(M) returns (M) {{ option (qrpc.method_id) = 1; option idempotency_level = IDEMPOTENT; }}\n rpc Look(M) returns (stream M) {{ option (qrpc.method_id) = 2; option idempotency_level = NO_SIDE_EFFECTS; }}\n rpc Put(M) returns (M) {{ option (qrpc.method_id) = 3; }}\n}}\n"
    );
    let code = std::fs::read_to_string(compile("idem", &src).unwrap().join("out/t.v1.rs")).unwrap();
    let constant = |name: &str| -> String {
        let start = code
            .find(&format!("pub const {name}: ::qrpc::codegen::MethodInfo"))
            .unwrap_or_else(|| panic!("no constant {name} in:\n{code}"));
        let end = start + code[start..].find("};").unwrap();
        code[start..end].to_owned()
    };
    assert!(constant("GET").contains("idempotent: true"));
    assert!(constant("LOOK").contains("idempotent: true"));
    assert!(constant("PUT").contains("idempotent: false"));

    let streamed = format!(
        "{HEADER}service S {{ rpc Up(stream M) returns (M) {{ option (qrpc.method_id) = 1; option idempotency_level = IDEMPOTENT; }} }}\n"
    );
    let err = compile("idem-stream", &streamed).unwrap_err().to_string();
    assert!(
        err.contains("svc.proto: method t.v1.S.Up streams its request and cannot be idempotent"),
        "{err}"
    );
}

#[test]
fn unreliable_channels_are_marked_and_channels_of_a_package_cannot_share_event_types() {
    let src = format!(
        "{HEADER}message Typing {{}}\nmessage Note {{}}\nmessage Ephemeral {{ option (qrpc.push_channel) = true; option (qrpc.unreliable) = true; oneof e {{ Typing typing = 5; }} }}\nmessage Events {{ option (qrpc.push_channel) = true; oneof e {{ Note note = 1; }} }}\n"
    );
    let code =
        std::fs::read_to_string(compile("unreliable", &src).unwrap().join("out/t.v1.rs")).unwrap();
    let module = |name: &str| -> String {
        let start = code
            .find(&format!("pub mod {name}"))
            .unwrap_or_else(|| panic!("no module {name} in:\n{code}"));
        code[start..].to_owned()
    };
    let ephemeral = module("ephemeral_push");
    assert!(
        ephemeral.contains("const UNRELIABLE: bool = true;"),
        "{ephemeral}"
    );
    assert!(
        ephemeral.contains("pub const EVENT_TYPES: &[u16] = &[TYPING];"),
        "{ephemeral}"
    );
    let events = module("events_push");
    assert!(
        events.contains("const UNRELIABLE: bool = false;"),
        "{events}"
    );

    let clash = format!(
        "{HEADER}message Typing {{}}\nmessage Ephemeral {{ option (qrpc.push_channel) = true; oneof e {{ Typing typing = 1; }} }}\nmessage Events {{ option (qrpc.push_channel) = true; oneof e {{ Typing other = 1; }} }}\n"
    );
    let err = compile("clash", &clash).unwrap_err().to_string();
    assert!(
        err.contains("event type 1 of package t.v1 is used by both Ephemeral and Events"),
        "{err}"
    );
}

#[test]
fn output_is_formatted_and_prost_config_hooks_apply() {
    let dir = workdir("hook");
    let src = format!(
        "{HEADER}// The service.\nservice S {{ rpc A(M) returns (M) {{ option (qrpc.method_id) = 1; }} }}\n"
    );
    std::fs::write(dir.join("svc.proto"), src).unwrap();
    qrpc_build::configure()
        .out_dir(dir.join("out"))
        .emit_rerun_if_changed(false)
        .prost_config(|config| {
            config.type_attribute(".t.v1.M", "#[derive(Eq, Hash)]");
        })
        .compile(&[dir.join("svc.proto")], &[&dir])
        .unwrap();
    let code = std::fs::read_to_string(dir.join("out/t.v1.rs")).unwrap();
    assert!(code.contains("#[derive(Eq, Hash)]"), "{code}");
    // One item per line, indented, as rustfmt would: not one long token line.
    assert!(code.contains("\npub mod s_server {\n"), "{code}");
    assert!(code.contains("\n    pub trait S:"), "{code}");
    assert!(code.lines().all(|l| l.len() < 200), "{code}");
}

#[test]
fn a_method_named_like_anothers_metadata_twin_is_rejected() {
    let src = format!(
        "{HEADER}service S {{\n rpc Say(M) returns (M) {{ option (qrpc.method_id) = 1; }}\n rpc SayWithMetadata(M) returns (M) {{ option (qrpc.method_id) = 2; }}\n}}\n"
    );
    let err = compile("twin", &src).unwrap_err().to_string();
    assert!(
        err.contains(
            "t.v1.S.Say and t.v1.S.SayWithMetadata would both generate `say_with_metadata`"
        ),
        "{err}"
    );
    // A server-streaming method has no twin: no clash.
    let src = format!(
        "{HEADER}service S {{\n rpc Say(M) returns (stream M) {{ option (qrpc.method_id) = 1; }}\n rpc SayWithMetadata(M) returns (M) {{ option (qrpc.method_id) = 2; }}\n}}\n"
    );
    assert!(compile("twin-stream", &src).is_ok());
}
