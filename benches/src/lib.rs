//! Shared setup of the benchmarks: a qrpc echo server and a raw quinn echo server with the same
//! TLS (rustls + aws-lc-rs, pinned self-signed certificate) and transport settings.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use qrpc::tls::{ClientTls, SelfSigned};
use qrpc::{
    CallKind, Client, Handler, MethodInfo, RoutesBuilder, RpcService, Server, ServiceDescriptor,
    Status,
};

/// The benchmark message: opaque bytes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// The bytes echoed back.
    #[prost(bytes = "bytes", tag = "1")]
    pub data: Bytes,
}

/// The echo method.
pub const ECHO: MethodInfo = MethodInfo {
    id: 1,
    service: "bench.Echo",
    name: "Echo",
    kind: CallKind::Unary,
};

static DESCRIPTOR: ServiceDescriptor = ServiceDescriptor {
    name: "bench.Echo",
    methods: &[ECHO],
};

struct EchoService;

impl RpcService for EchoService {
    fn descriptor(&self) -> &'static ServiceDescriptor {
        &DESCRIPTOR
    }

    fn register(self, routes: &mut RoutesBuilder) {
        routes.add(
            ECHO,
            Handler::unary(|_ctx, req: Payload| async move { Ok::<_, Status>(req) }),
        );
    }
}

/// Concurrent streams allowed per connection, for both servers.
pub const MAX_STREAMS: u32 = 128;

/// Starts a qrpc echo server on loopback and connects a client to it.
pub async fn qrpc_pair() -> anyhow_free::Result<Client> {
    let cert = SelfSigned::generate(&["localhost"])?;
    let server = Server::builder()
        .tls(cert.server_tls())
        .configure(|c| c.max_concurrent_streams = MAX_STREAMS)
        .add_service(EchoService)
        .bind(loopback())?;
    let addr = server.local_addr()?;
    tokio::spawn(server.serve());
    Ok(Client::connect(addr, ClientTls::pinned(cert.fingerprint())).await?)
}

/// A raw quinn echo: one bidi stream per call, read to end, write back, finish.
pub struct RawQuinn {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl RawQuinn {
    /// Starts the raw echo server on loopback and connects to it.
    pub async fn pair() -> anyhow_free::Result<Self> {
        let cert = SelfSigned::generate(&["localhost"])?;
        let mut server_config = cert
            .server_tls()
            .quinn_server_config(&[qrpc::protocol::DEFAULT_ALPN.to_vec()])?;
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(MAX_STREAMS.into());
        server_config.transport_config(Arc::new(transport));
        let server = quinn::Endpoint::server(server_config, loopback())?;
        let addr = server.local_addr()?;
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            let Ok(data) = recv.read_to_end(usize::MAX).await else {
                                return;
                            };
                            if send.write_all(&data).await.is_ok() {
                                let _ = send.finish();
                            }
                        });
                    }
                });
            }
        });
        let client_config = ClientTls::pinned(cert.fingerprint())
            .quinn_client_config(&[qrpc::protocol::DEFAULT_ALPN.to_vec()])?;
        let mut endpoint = quinn::Endpoint::client(loopback())?;
        endpoint.set_default_client_config(client_config);
        let conn = endpoint.connect(addr, "localhost")?.await?;
        Ok(Self {
            conn,
            _endpoint: endpoint,
        })
    }

    /// One echo round trip.
    pub async fn echo(&self, data: &[u8]) -> anyhow_free::Result<Vec<u8>> {
        let (mut send, mut recv) = self.conn.open_bi().await?;
        send.write_all(data).await?;
        send.finish()?;
        Ok(recv.read_to_end(usize::MAX).await?)
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A minimal boxed-error result for setup code.
pub mod anyhow_free {
    /// Result with a boxed error.
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}
