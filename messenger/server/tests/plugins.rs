//! Plugins loaded by a real server (feature `plugins`): the example plugins built for
//! wasm32-wasip2 (`examples/plugins`; `.ci/run` builds them first) and a text fixture.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Account, Harness, enqueue_to, login, register};
use qpq_proto::v1;
use qpq_server::config::PluginConfig;
use qrpc::Code;

/// A built example plugin.
fn plugin(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/plugins/target/wasm32-wasip2/release")
        .join(format!("qpq_plugin_{name}.wasm"));
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --release --target wasm32-wasip2` in examples/plugins",
        path.display()
    );
    path
}

fn with(name: &str, config: &str, f: impl FnOnce(&mut PluginConfig)) -> PluginConfig {
    let mut plugin = PluginConfig::new(name, plugin(name));
    plugin.config = toml::from_str(config).unwrap();
    f(&mut plugin);
    plugin
}

async fn serve(plugins: Vec<PluginConfig>) -> Harness {
    common::start(|c| {
        c.plugins = plugins;
        c.limits.stranger_messages_per_minute_per_user = 1000;
        c.limits.messages_per_second_per_user = 1000;
    })
    .await
}

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn the_invite_plugin_admits_registrations_with_a_code_only() {
    let h = serve(vec![with(
        "invite",
        "codes = \"spring-2027, friends\"",
        |_| {},
    )])
    .await;
    let client = h.connect().await;
    let err = register(&client, "ada", PASSWORD).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("invite code"), "{err}");
    let err = qpq_proto::auth_flows::register_with_invite(&client, "ada", PASSWORD, Some("autumn"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("not valid"), "{err}");
    qpq_proto::auth_flows::register_with_invite(&client, "ada", PASSWORD, Some("friends"))
        .await
        .unwrap();
    login(&client, "ada", "laptop", PASSWORD).await.unwrap();
}

#[tokio::test]
async fn the_throttle_denies_the_21st_new_contact() {
    let h = serve(vec![with("throttle", "", |_| {})]).await;
    let ada = Account::create(&h, "ada", "laptop").await;
    let bob = Account::create(&h, "bob", "phone").await;
    // Twenty new contacts pass the plugin (their recipients do not exist: the store refuses
    // them after the plugin counted them).
    for n in 0..20u8 {
        let to = v1::DeviceRef {
            user: format!("stranger{n}"),
            device: "d".into(),
        };
        let result = ada.delivery().enqueue(&enqueue_to(&to, n, b"hi")).await;
        assert_ne!(
            result.as_ref().err().map(qrpc::Status::code),
            Some(Code::ResourceExhausted),
            "contact {n}: {result:?}"
        );
    }
    let to = v1::DeviceRef {
        user: "stranger20".into(),
        device: "d".into(),
    };
    let err = ada
        .delivery()
        .enqueue(&enqueue_to(&to, 20, b"hi"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("new contacts"), "{err}");
    // Someone ada already wrote to is no new contact; another sender has a budget of its own.
    let again = v1::DeviceRef {
        user: "stranger3".into(),
        device: "d".into(),
    };
    let result = ada.delivery().enqueue(&enqueue_to(&again, 30, b"hi")).await;
    assert_ne!(
        result.err().map(|e| e.code()),
        Some(Code::ResourceExhausted)
    );
    bob.delivery()
        .enqueue(&enqueue_to(&to, 31, b"hi"))
        .await
        .map(drop)
        .or_else(|e| {
            if e.code() == Code::ResourceExhausted {
                Err(e)
            } else {
                Ok(())
            }
        })
        .unwrap();
}

#[tokio::test]
async fn configuration_reaches_the_plugin() {
    let h = serve(vec![with(
        "misbehave",
        "mode = \"echo\"\nlimit = 3\n[nested]\nkey = \"value\"",
        |_| {},
    )])
    .await;
    let client = h.connect().await;
    register(&client, "ada", PASSWORD).await.unwrap();
    let err = login(&client, "ada", "laptop", PASSWORD).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "limit=3;mode=echo;nested.key=value");
}

#[tokio::test]
async fn a_plugin_that_loops_is_stopped_within_its_budget_while_others_are_served() {
    let h = serve(vec![with("misbehave", "mode = \"loop\"", |p| {
        p.time_budget_ms = 300;
    })])
    .await;
    let client = h.connect().await;
    register(&client, "ada", PASSWORD).await.unwrap();
    let looping = {
        let client = h.connect().await;
        tokio::spawn(async move {
            let start = Instant::now();
            let err = login(&client, "ada", "laptop", PASSWORD).await.unwrap_err();
            (err, start.elapsed())
        })
    };
    // Calls the plugin is not asked about go on (registrations here).
    let other = h.connect().await;
    register(&other, "bob", PASSWORD).await.unwrap();
    let (err, took) = looping.await.unwrap();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    // The plugin was restarted: the next call is answered by a fresh instance (it lets
    // "innocent" in).
    register(&other, "innocent", PASSWORD).await.unwrap();
    login(&other, "innocent", "laptop", PASSWORD).await.unwrap();
}

#[tokio::test]
async fn a_plugin_waiting_in_a_host_call_is_stopped_too() {
    // Sleeping is a WASI clock wait: no guest code runs, so only the overall deadline
    // (budget plus slack) stops it.
    let h = serve(vec![with("misbehave", "mode = \"sleep\"", |p| {
        p.time_budget_ms = 200;
    })])
    .await;
    let client = h.connect().await;
    register(&client, "ada", PASSWORD).await.unwrap();
    let start = Instant::now();
    let err = login(&client, "ada", "laptop", PASSWORD).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // The next call gets a fresh instance.
    register(&client, "innocent", PASSWORD).await.unwrap();
    login(&client, "innocent", "laptop", PASSWORD)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_plugin_that_grows_past_its_memory_limit_fails_its_call() {
    let h = serve(vec![with("misbehave", "mode = \"grow\"", |p| {
        p.memory_limit_mib = 8;
    })])
    .await;
    let client = h.connect().await;
    register(&client, "ada", PASSWORD).await.unwrap();
    let err = login(&client, "ada", "laptop", PASSWORD).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("misbehave"), "{err}");
}

#[tokio::test]
async fn a_failing_plugin_configured_to_fail_open_lets_the_call_through() {
    let h = serve(vec![with("misbehave", "mode = \"panic\"", |p| {
        p.fail_open = true;
    })])
    .await;
    let client = h.connect().await;
    register(&client, "ada", PASSWORD).await.unwrap();
    login(&client, "ada", "laptop", PASSWORD).await.unwrap();
}

#[tokio::test]
async fn a_plugin_for_another_api_version_is_refused_at_load() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/future-api.wat");
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.plugins = vec![PluginConfig::new("future", fixture)];
    let err = qpq_server::start(config).await.unwrap_err().to_string();
    assert!(err.contains("plugin future"), "{err}");
    assert!(err.contains("2.0.0"), "{err}");
    assert!(err.contains("supports 1.x"), "{err}");
}

#[tokio::test]
async fn a_reload_changes_behaviour_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.wasm");
    std::fs::copy(plugin("misbehave"), &path).unwrap();
    let mut policy = PluginConfig::new("policy", &path);
    policy.config = toml::from_str("mode = \"echo\"").unwrap();
    let h = serve(vec![policy]).await;
    let client = h.connect().await;
    register(&client, "ada", PASSWORD).await.unwrap();
    let err = login(&client, "ada", "laptop", PASSWORD).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // The operator installs another plugin under the same name and reloads.
    std::fs::copy(plugin("audit"), &path).unwrap();
    h.server.state().plugins().reload().await.unwrap();
    login(&client, "ada", "laptop", PASSWORD).await.unwrap();
    // A reload that fails changes nothing.
    std::fs::write(&path, b"not a component").unwrap();
    let err = h
        .server
        .state()
        .plugins()
        .reload()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("policy"), "{err}");
    assert_eq!(
        h.server.state().plugins().names(),
        vec!["policy".to_owned()]
    );
    login(&client, "ada", "laptop", PASSWORD).await.unwrap();
}

#[tokio::test]
async fn the_audit_plugin_allows_and_every_hook_reaches_it() {
    let h = serve(vec![with("audit", "", |_| {})]).await;
    let ada = Account::create(&h, "ada", "laptop").await;
    let bob = Account::create(&h, "bob", "phone").await;
    ada.delivery()
        .enqueue(&enqueue_to(&bob.me(), 1, b"hello"))
        .await
        .unwrap();
}
