//! The authorization matrix: every method of the schema, called through the server's real
//! layers and router, from five kinds of caller, with the status each must get.
//!
//! A method added to the schema without a row here fails `every_method_has_a_row`.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use common::config;
use prost::Message;
use qpq_core::mls::{MlsMember, Suite};
use qpq_proto::v1;
use qpq_server::InProcess;
use qpq_server::session::{EndReason, SessionInfo};
use qpq_server::store::{DeviceId, Store};
use qrpc::{Code, RequestBody};

/// The callers: a connection that never logged in; Bob's phone (the owner of every resource
/// the requests name); Mallory, another logged-in user; Bob's laptop, revoked while its
/// connection stays open; Bob's tablet, whose session has expired.
const COLUMNS: [&str; 5] = ["anonymous", "owner", "other", "revoked", "expired"];

/// What a caller must get: `Ok` or the error code.
type Expect = [Code; 5];

struct Row {
    method: u16,
    request: Box<dyn Fn(&Fixture) -> RequestBody>,
    expect: Expect,
}

/// A revoked or expired session must be exactly as powerful as none, so those two columns
/// repeat the anonymous one; the rows still state all five.
fn row(
    method: u16,
    request: impl Fn(&Fixture) -> RequestBody + 'static,
    anonymous: Code,
    owner: Code,
    other: Code,
) -> Row {
    Row {
        method,
        request: Box::new(request),
        expect: [anonymous, owner, other, anonymous, anonymous],
    }
}

fn unary(m: &impl Message) -> RequestBody {
    RequestBody::unary(m.encode_to_vec().into())
}

struct Fixture {
    bob: v1::DeviceRef,
    key_package: Vec<u8>,
    bundle: Vec<u8>,
    blob: Vec<u8>,
    counter: AtomicU32,
    /// Bob's channel (created during setup).
    channel: std::sync::OnceLock<Vec<u8>>,
}

impl Fixture {
    fn next(&self) -> u32 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    fn enqueue(&self) -> v1::EnqueueRequest {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&self.next().to_be_bytes());
        v1::EnqueueRequest {
            recipient: Some(self.bob.clone()),
            message_id: id.to_vec().into(),
            payload: b"ciphertext".to_vec().into(),
            delivery_token: Default::default(),
        }
    }

    fn channel(&self) -> Vec<u8> {
        self.channel.get().cloned().unwrap_or_else(|| vec![0; 16])
    }

    fn blob_chunk(&self) -> Bytes {
        v1::BlobChunk {
            sha256: qpq_server::util::sha256(&self.blob).to_vec().into(),
            total_size: self.blob.len() as u64,
            offset: 0,
            data: self.blob.clone().into(),
        }
        .encode_to_vec()
        .into()
    }
}

fn rows() -> Vec<Row> {
    use Code::*;
    vec![
        // Auth: reachable by everyone; these requests are malformed on purpose.
        row(
            1,
            |_| {
                unary(&v1::RegisterStartRequest {
                    user: "zed".into(),
                    ..Default::default()
                })
            },
            InvalidArgument,
            InvalidArgument,
            InvalidArgument,
        ),
        row(
            2,
            |_| {
                unary(&v1::RegisterFinishRequest {
                    user: "zed".into(),
                    ..Default::default()
                })
            },
            InvalidArgument,
            InvalidArgument,
            InvalidArgument,
        ),
        row(
            3,
            |_| {
                unary(&v1::LoginStartRequest {
                    user: "bob".into(),
                    device: "phone".into(),
                    ..Default::default()
                })
            },
            InvalidArgument,
            InvalidArgument,
            InvalidArgument,
        ),
        row(
            4,
            |_| {
                unary(&v1::LoginFinishRequest {
                    login_id: vec![0; 16].into(),
                    ..Default::default()
                })
            },
            InvalidArgument,
            InvalidArgument,
            InvalidArgument,
        ),
        row(
            5,
            |_| {
                unary(&v1::ResumeSessionRequest {
                    session_token: vec![0; 32].into(),
                })
            },
            Unauthenticated,
            Unauthenticated,
            Unauthenticated,
        ),
        row(6, |_| unary(&v1::LogoutRequest {}), Unauthenticated, Ok, Ok),
        // Delivery: a sender without a session needs the recipient's delivery token.
        row(10, |f| unary(&f.enqueue()), PermissionDenied, Ok, Ok),
        row(
            11,
            |_| {
                unary(&v1::FetchRequest {
                    after_seq: 0,
                    limit: 10,
                })
            },
            Unauthenticated,
            Ok,
            Ok,
        ),
        row(
            12,
            |_| {
                unary(&v1::FetchWaitRequest {
                    after_seq: 0,
                    limit: 10,
                    timeout_ms: 0,
                })
            },
            Unauthenticated,
            Ok,
            Ok,
        ),
        row(13, |_| unary(&v1::PeekRequest {}), Unauthenticated, Ok, Ok),
        row(
            14,
            |_| unary(&v1::AckRequest { up_to_seq: 0 }),
            Unauthenticated,
            Ok,
            Ok,
        ),
        row(
            15,
            |f| {
                unary(&v1::BatchEnqueueRequest {
                    messages: vec![f.enqueue()],
                })
            },
            Unauthenticated,
            Ok,
            Ok,
        ),
        // Keys: a key package or bundle names its device; nobody uploads another's.
        row(
            20,
            |f| {
                unary(&v1::UploadKeyPackageRequest {
                    key_packages: vec![f.key_package.clone().into()],
                    last_resort: false,
                })
            },
            Unauthenticated,
            Ok,
            PermissionDenied,
        ),
        row(
            21,
            |f| {
                unary(&v1::FetchKeyPackageRequest {
                    device: Some(f.bob.clone()),
                })
            },
            Unauthenticated,
            Ok,
            Ok,
        ),
        row(
            22,
            |f| {
                unary(&v1::UploadHybridKeyRequest {
                    key_bundle: f.bundle.clone().into(),
                    delivery_token: Default::default(),
                })
            },
            Unauthenticated,
            Ok,
            PermissionDenied,
        ),
        row(
            23,
            |f| {
                unary(&v1::FetchHybridKeyRequest {
                    device: Some(f.bob.clone()),
                })
            },
            Unauthenticated,
            Ok,
            Ok,
        ),
        row(
            24,
            |f| {
                unary(&v1::BatchFetchHybridKeysRequest {
                    devices: vec![f.bob.clone()],
                })
            },
            Unauthenticated,
            Ok,
            Ok,
        ),
        row(
            25,
            |_| {
                unary(&v1::KtHeadRequest {
                    since_size: 0,
                    ..Default::default()
                })
            },
            Unauthenticated,
            Ok,
            Ok,
        ),
        row(
            30,
            |f| {
                unary(&v1::CreateChannelRequest {
                    name: format!("c{}", f.next()),
                    members: vec![],
                    mls_group_id: Default::default(),
                })
            },
            Unauthenticated,
            Ok,
            Ok,
        ),
        // A channel is visible to its members only.
        row(
            31,
            |f| {
                unary(&v1::UpdateChannelRequest {
                    channel_id: f.channel().into(),
                    add: vec![],
                    remove: vec![],
                })
            },
            Unauthenticated,
            Ok,
            NotFound,
        ),
        row(
            32,
            |f| {
                unary(&v1::TypingRequest {
                    channel_id: f.channel().into(),
                })
            },
            Unauthenticated,
            Ok,
            NotFound,
        ),
        // Only an invitee answers; neither the owner nor a stranger has an invitation.
        row(
            33,
            |f| {
                unary(&v1::AnswerInvitationRequest {
                    channel_id: f.channel().into(),
                    accept: false,
                    mls_group_id: Default::default(),
                })
            },
            Unauthenticated,
            NotFound,
            NotFound,
        ),
        row(
            40,
            |_| unary(&v1::ResolveUserRequest { user: "bob".into() }),
            Unauthenticated,
            Ok,
            Ok,
        ),
        row(
            41,
            |_| {
                unary(&v1::ResolveIdentityRequest {
                    identity_key: vec![1; 32].into(),
                })
            },
            Unauthenticated,
            NotFound,
            NotFound,
        ),
        // Blobs are content-addressed capabilities: whoever knows the hash may fetch it.
        row(
            50,
            |f| {
                RequestBody::new(
                    Bytes::new(),
                    Box::pin(futures::stream::iter(vec![Result::Ok(f.blob_chunk())])),
                )
            },
            Unauthenticated,
            Ok,
            Ok,
        ),
        row(
            51,
            |f| {
                unary(&v1::DownloadBlobRequest {
                    sha256: qpq_server::util::sha256(&f.blob).to_vec().into(),
                    offset: 0,
                })
            },
            Unauthenticated,
            Ok,
            Ok,
        ),
        // Devices: every call acts on the caller's own user; "spare" is Bob's, not Mallory's.
        row(
            60,
            |f| {
                unary(&v1::RegisterDeviceRequest {
                    device: format!("d{}", f.next()),
                    label: String::new(),
                })
            },
            Unauthenticated,
            Ok,
            Ok,
        ),
        row(
            61,
            |_| unary(&v1::ListDevicesRequest {}),
            Unauthenticated,
            Ok,
            Ok,
        ),
        row(
            62,
            |_| {
                unary(&v1::RevokeDeviceRequest {
                    device: "spare".into(),
                })
            },
            Unauthenticated,
            Ok,
            NotFound,
        ),
        // P2P: Bob's address is visible to his own devices and channel peers only.
        row(70, |_| unary(&v1::HealthRequest {}), Ok, Ok, Ok),
        row(
            71,
            |_| {
                unary(&v1::PublishEndpointRequest {
                    addresses: vec!["192.0.2.1:1".into()],
                    ttl_ms: 1000,
                })
            },
            Unauthenticated,
            Ok,
            Ok,
        ),
        row(
            72,
            |f| {
                unary(&v1::ResolveEndpointRequest {
                    device: Some(f.bob.clone()),
                })
            },
            Unauthenticated,
            Ok,
            NotFound,
        ),
        // The caller's own relay failures.
        row(
            16,
            |_| unary(&v1::RelayFailuresRequest::default()),
            Unauthenticated,
            Ok,
            Ok,
        ),
        // The federation service is served on the federation protocol only (to pinned peer
        // servers): on a client connection no one reaches it, logged in or not.
        row(
            80,
            |_| unary(&v1::RelayEnqueueRequest::default()),
            Unimplemented,
            Unimplemented,
            Unimplemented,
        ),
        row(
            81,
            |_| unary(&v1::RelayBatchEnqueueRequest::default()),
            Unimplemented,
            Unimplemented,
            Unimplemented,
        ),
        row(
            82,
            |_| unary(&v1::ProxyFetchKeyPackageRequest::default()),
            Unimplemented,
            Unimplemented,
            Unimplemented,
        ),
        row(
            83,
            |_| unary(&v1::ProxyFetchHybridKeyRequest::default()),
            Unimplemented,
            Unimplemented,
            Unimplemented,
        ),
        row(
            84,
            |_| unary(&v1::ProxyResolveUserRequest::default()),
            Unimplemented,
            Unimplemented,
            Unimplemented,
        ),
        row(
            85,
            |_| unary(&v1::FederationHealthRequest::default()),
            Unimplemented,
            Unimplemented,
            Unimplemented,
        ),
        row(
            86,
            |_| unary(&v1::FederationKtHeadRequest::default()),
            Unimplemented,
            Unimplemented,
            Unimplemented,
        ),
        row(
            87,
            |_| unary(&v1::FederationCosignatureRequest::default()),
            Unimplemented,
            Unimplemented,
            Unimplemented,
        ),
    ]
}

#[test]
fn every_method_has_a_row() {
    let schema: BTreeSet<u16> = qpq_proto::descriptors()
        .iter()
        .flat_map(|d| d.methods.iter().map(|m| m.id))
        .collect();
    let covered: Vec<u16> = rows().iter().map(|r| r.method).collect();
    let unique: BTreeSet<u16> = covered.iter().copied().collect();
    assert_eq!(unique.len(), covered.len(), "a method has two rows");
    assert_eq!(unique, schema, "every method needs exactly one row");
}

async fn device(server: &InProcess, user: &str, device: &str) -> DeviceId {
    let _ = server
        .state
        .store()
        .create_user(user.into(), vec![1], 0)
        .await;
    let d = DeviceId::new(user, device);
    server
        .state
        .store()
        .register_device(d.clone(), String::new(), 0, false, 100)
        .await
        .unwrap();
    d
}

/// A fresh connection for one cell, with the session its column calls for.
fn caller(server: &InProcess, column: usize, port: u16) -> qrpc::Peer {
    let conn = server.connection(([127, 0, 0, 1], port).into());
    let token: [u8; 32] = rand::random();
    let sessions = server.state.sessions();
    match COLUMNS[column] {
        "anonymous" => {}
        "owner" => sessions.bind(
            &conn,
            SessionInfo::new(DeviceId::new("bob", "phone"), u64::MAX, token),
        ),
        "other" => sessions.bind(
            &conn,
            SessionInfo::new(DeviceId::new("mallory", "pc"), u64::MAX, token),
        ),
        "revoked" => {
            let laptop = DeviceId::new("bob", "laptop");
            sessions.bind(&conn, SessionInfo::new(laptop.clone(), u64::MAX, token));
            // Revocation ends the session; the connection object stays usable here, so calls
            // still arrive, as calls in flight would.
            sessions.end_device(&laptop, EndReason::Revoked, None);
        }
        "expired" => sessions.bind(
            &conn,
            SessionInfo::new(DeviceId::new("bob", "tab"), 1, token),
        ),
        other => panic!("unknown column {other}"),
    }
    conn
}

/// Creates "bob's" channel as `owner`, inviting `members`; returns its id.
async fn create_channel(
    server: &InProcess,
    owner: &qrpc::Peer,
    members: Vec<String>,
) -> bytes::Bytes {
    let created = server
        .call(
            owner,
            30,
            unary(&v1::CreateChannelRequest {
                name: "bob's".into(),
                members,
                mls_group_id: Default::default(),
            }),
        )
        .await
        .unwrap();
    let qrpc::ResponseBody::Unary(bytes) = created.into_inner() else {
        panic!("unary answer expected")
    };
    v1::CreateChannelResponse::decode(bytes).unwrap().channel_id
}

#[tokio::test]
async fn authorization_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.calls_per_second_per_ip = 100_000;
    // Federating, so that the federation service is there to be refused on client
    // connections (the tests/federation.rs peers check the federation protocol's side).
    c.federation.enabled = true;
    c.federation.peers = vec![qpq_server::config::FederationPeer {
        domain: "peer.test".into(),
        key_pin: "ab".repeat(32),
        address: Some("127.0.0.1:9".parse().unwrap()),
    }];
    let server = common::in_process(c).await;
    device(&server, "bob", "phone").await;
    device(&server, "bob", "laptop").await;
    device(&server, "bob", "tab").await;
    device(&server, "bob", "spare").await;
    device(&server, "mallory", "pc").await;
    server
        .state
        .store()
        .revoke_device(DeviceId::new("bob", "laptop"), 0)
        .await
        .unwrap();

    // Bob's published state: keys, key packages, an endpoint, a blob.
    let owner = caller(&server, 1, 1);
    let identity = qpq_core::identity::IdentityKey::generate();
    let bundle = qpq_core::bundle::KeyBundle::new(
        &identity,
        qpq_core::kem::HybridSecretKey::generate().public(),
        "bob",
        "phone",
    )
    .unwrap()
    .encode();
    let mls = MlsMember::create(
        rusqlite::Connection::open_in_memory().unwrap(),
        &qpq_core::identity::DeviceName::new("bob", "localhost", "phone")
            .unwrap()
            .encode(),
        &identity,
        Suite::XWing,
    )
    .unwrap();
    let fixture = Fixture {
        bob: v1::DeviceRef {
            user: "bob".into(),
            device: "phone".into(),
        },
        key_package: mls.key_package().unwrap(),
        bundle: bundle.clone(),
        blob: b"an encrypted attachment".to_vec(),
        counter: AtomicU32::new(0),
        channel: std::sync::OnceLock::new(),
    };
    let setup = [
        (
            22,
            unary(&v1::UploadHybridKeyRequest {
                key_bundle: bundle.into(),
                delivery_token: Default::default(),
            }),
        ),
        (
            20,
            unary(&v1::UploadKeyPackageRequest {
                key_packages: (0..4).map(|_| mls.key_package().unwrap().into()).collect(),
                last_resort: false,
            }),
        ),
        (
            71,
            unary(&v1::PublishEndpointRequest {
                addresses: vec!["192.0.2.7:4433".into()],
                ttl_ms: 600_000,
            }),
        ),
        (
            50,
            RequestBody::new(
                Bytes::new(),
                Box::pin(futures::stream::iter(vec![Ok(fixture.blob_chunk())])),
            ),
        ),
    ];
    for (method, body) in setup {
        server.call(&owner, method, body).await.unwrap();
    }
    let channel = create_channel(&server, &owner, vec![]).await;
    fixture.channel.set(channel.to_vec()).unwrap();

    let mut failures = Vec::new();
    let mut port = 10;
    for row in rows() {
        for (column, expected) in row.expect.iter().enumerate() {
            port += 1;
            let conn = caller(&server, column, port);
            let got = match server
                .call(&conn, row.method, (row.request)(&fixture))
                .await
            {
                Ok(_) => Code::Ok,
                Err(status) => status.code(),
            };
            if got != *expected {
                failures.push(format!(
                    "method {} as {}: expected {expected:?}, got {got:?}",
                    row.method, COLUMNS[column]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What Mallory may do in Bob's channel in each state of her membership: none, invited (not
/// yet answered), accepted, removed by the owner. Each cell runs on a fresh server.
#[tokio::test]
async fn channel_membership_states() {
    use Code::*;
    const OPS: [&str; 5] = ["typing", "invite", "remove owner", "endpoint", "accept"];
    let cases = [
        ("none", [NotFound, NotFound, NotFound, NotFound, NotFound]),
        ("invited", [NotFound, NotFound, NotFound, NotFound, Ok]),
        (
            "accepted",
            [Ok, PermissionDenied, PermissionDenied, Ok, NotFound],
        ),
        (
            "removed",
            [NotFound, NotFound, NotFound, NotFound, NotFound],
        ),
    ];
    let mut failures = Vec::new();
    for (state, expect) in cases {
        for (op, expected) in expect.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let mut c = config(dir.path());
            c.limits.calls_per_second_per_ip = 100_000;
            let server = common::in_process(c).await;
            device(&server, "bob", "phone").await;
            device(&server, "mallory", "pc").await;
            device(&server, "carol", "pc").await;
            let bob = caller(&server, 1, 1);
            let mallory = caller(&server, 2, 2);
            let call = |conn: &qrpc::Peer, method: u16, body: RequestBody| {
                let conn = conn.clone();
                let server = &server;
                async move {
                    match server.call(&conn, method, body).await {
                        Result::Ok(r) => Result::Ok(r),
                        Err(status) => Err(status.code()),
                    }
                }
            };
            call(
                &bob,
                71,
                unary(&v1::PublishEndpointRequest {
                    addresses: vec!["192.0.2.7:4433".into()],
                    ttl_ms: 600_000,
                }),
            )
            .await
            .unwrap();
            let members = if state == "none" {
                vec![]
            } else {
                vec!["mallory".to_owned()]
            };
            let channel = create_channel(&server, &bob, members).await;
            if matches!(state, "accepted" | "removed") {
                call(
                    &mallory,
                    33,
                    unary(&v1::AnswerInvitationRequest {
                        channel_id: channel.clone(),
                        accept: true,
                        mls_group_id: Default::default(),
                    }),
                )
                .await
                .unwrap();
            }
            if state == "removed" {
                call(
                    &bob,
                    31,
                    unary(&v1::UpdateChannelRequest {
                        channel_id: channel.clone(),
                        add: vec![],
                        remove: vec!["mallory".into()],
                    }),
                )
                .await
                .unwrap();
            }
            let update = |add: &str, remove: &str| v1::UpdateChannelRequest {
                channel_id: channel.clone(),
                add: [add]
                    .iter()
                    .filter(|u| !u.is_empty())
                    .map(|u| (*u).to_owned())
                    .collect(),
                remove: [remove]
                    .iter()
                    .filter(|u| !u.is_empty())
                    .map(|u| (*u).to_owned())
                    .collect(),
            };
            let (method, body) = match OPS[op] {
                "typing" => (
                    32,
                    unary(&v1::TypingRequest {
                        channel_id: channel.clone(),
                    }),
                ),
                "invite" => (31, unary(&update("carol", ""))),
                "remove owner" => (31, unary(&update("", "bob"))),
                "endpoint" => (
                    72,
                    unary(&v1::ResolveEndpointRequest {
                        device: Some(v1::DeviceRef {
                            user: "bob".into(),
                            device: "phone".into(),
                        }),
                    }),
                ),
                _ => (
                    33,
                    unary(&v1::AnswerInvitationRequest {
                        channel_id: channel.clone(),
                        accept: true,
                        mls_group_id: Default::default(),
                    }),
                ),
            };
            let got = match call(&mallory, method, body).await {
                Result::Ok(_) => Ok,
                Err(code) => code,
            };
            if got != *expected {
                failures.push(format!(
                    "{} as a {state} member: expected {expected:?}, got {got:?}",
                    OPS[op]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A revoking client that resets its stream right after the server stored the revocation
/// still cuts the revoked device off: ending its sessions does not depend on the caller.
#[tokio::test]
async fn a_revocation_completes_when_the_revoking_call_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::in_process(config(dir.path())).await;
    device(&server, "bob", "phone").await;
    device(&server, "bob", "laptop").await;
    let bind = |device: &str, port: u16| {
        let conn = server.connection(([127, 0, 0, 1], port).into());
        server.state.sessions().bind(
            &conn,
            SessionInfo::new(DeviceId::new("bob", device), u64::MAX, rand::random()),
        );
        conn
    };
    let (phone, laptop) = (bind("phone", 1), bind("laptop", 2));
    let list = || unary(&v1::ListDevicesRequest {});
    assert!(server.call(&laptop, 61, list()).await.is_ok());
    let mut call = Box::pin(server.call(
        &phone,
        62,
        unary(&v1::RevokeDeviceRequest {
            device: "laptop".into(),
        }),
    ));
    // Drive the call until the store has the revocation, then drop it (the stream reset).
    let revoked = async {
        loop {
            if let std::task::Poll::Ready(result) = futures::poll!(call.as_mut()) {
                result.unwrap();
                break;
            }
            let devices = server
                .state
                .store()
                .list_devices("bob".into())
                .await
                .unwrap();
            if devices.iter().all(|d| d.device != "laptop") {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), revoked)
        .await
        .expect("the revocation never reached the store");
    drop(call);
    let cut_off = async {
        loop {
            match server.call(&laptop, 61, list()).await {
                Err(status) if status.code() == Code::Unauthenticated => break,
                _ => tokio::task::yield_now().await,
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), cut_off)
        .await
        .expect("the revoked device kept a live session");
}
