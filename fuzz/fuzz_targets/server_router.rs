#![no_main]
//! Arbitrary bytes as the request of every messenger method, through the server's real
//! layers and router (qpq_server::InProcess), from an anonymous and a logged-in connection.
//! No input may panic, hang or be answered with `Internal`: bad input ends its own call.
//!
//! Input: byte 0 picks the method, byte 1 the caller (even: anonymous, odd: logged in), the
//! rest is the request payload (for client-streaming methods, the first message).
use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use qpq_server::InProcess;
use qpq_server::session::SessionInfo;
use qpq_server::store::{DeviceId, Store};

struct World {
    runtime: tokio::runtime::Runtime,
    server: InProcess,
    methods: Vec<qrpc::MethodInfo>,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = qpq_server::Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        // Limits are tested elsewhere; here they would only stop the fuzzer's calls early.
        let l = &mut config.limits;
        l.calls_per_second_per_ip = 1_000_000;
        l.logins_per_minute_per_ip = 1_000_000;
        l.logins_per_minute_per_account = 1_000_000;
        l.auth_attempts_per_connection = 1_000_000;
        l.resumes_per_minute_per_ip = 1_000_000;
        l.messages_per_second_per_user = 1_000_000;
        l.writes_per_second_per_user = 1_000_000;
        l.max_fetch_wait_ms = 1;
        let server = runtime.block_on(async {
            let server = InProcess::new(config).await.expect("server");
            let store = server.state.store();
            store.create_user("bob".into(), vec![1], 0).await.expect("user");
            store
                .register_device(DeviceId::new("bob", "phone"), String::new(), 0, true, 10)
                .await
                .expect("device");
            server
        });
        let methods = qpq_proto::descriptors()
            .iter()
            .flat_map(|d| d.methods.iter().copied())
            .collect();
        World {
            runtime,
            server,
            methods,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let [pick, who, payload @ ..] = data else { return };
    let w = world();
    let method = w.methods[usize::from(*pick) % w.methods.len()];
    let payload = Bytes::copy_from_slice(payload);
    w.runtime.block_on(async {
        let conn = w.server.connection("127.0.0.1:9".parse().expect("addr"));
        if who % 2 == 1 {
            w.server.state.sessions().bind(
                &conn,
                SessionInfo::new(DeviceId::new("bob", "phone"), u64::MAX, [7; 32]),
            );
        }
        let body = if method.kind.client_streams() {
            qrpc::RequestBody::new(
                Bytes::new(),
                Box::pin(futures::stream::iter(vec![Ok(payload)])),
            )
        } else {
            qrpc::RequestBody::unary(payload)
        };
        let call = w.server.call(&conn, method.id, body);
        match tokio::time::timeout(std::time::Duration::from_secs(5), call).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => assert_ne!(
                status.code(),
                qrpc::Code::Internal,
                "{method}: {}",
                status.message()
            ),
            Err(_) => panic!("{method} hung"),
        }
        w.server.state.sessions().end_connection(&conn);
    });
});
