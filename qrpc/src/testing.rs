//! Building blocks for testing layers, handlers and whole services without a network: a
//! connection not backed by QUIC and a call context on it. Drive a service with
//! `tower::ServiceExt::oneshot(ServerRequest::new(ctx, RequestBody::unary(bytes)))`, or a whole server
//! with [`Server::into_service`](crate::Server::into_service).
//!
//! ```
//! # use qrpc::{PushRegistry, testing};
//! let connection = testing::detached_peer("10.0.0.1:5000".parse().unwrap(), PushRegistry::new());
//! let ctx = testing::request_context(&connection, 1, None, 7);
//! assert_eq!((ctx.method_id(), ctx.request_id()), (1, 7));
//! ```

use std::net::SocketAddr;

use crate::context::{Peer, RequestContext};
use crate::method::MethodInfo;
use crate::push::PushRegistry;

/// A connection from `remote` that is not backed by QUIC. Its push sender reports
/// [`PushError::Closed`](crate::PushError::Closed); binding an identity registers it in
/// `registry` like a real connection; it never closes and never sees a server shutdown.
pub fn detached_peer(remote: SocketAddr, registry: PushRegistry) -> Peer {
    Peer::detached(remote, registry)
}

/// The context of a call of `method_id` (described by `method` when the server has it) with
/// `request_id`, on `connection`.
pub fn request_context(
    connection: &Peer,
    method_id: u16,
    method: Option<MethodInfo>,
    request_id: u32,
) -> RequestContext {
    RequestContext::new(connection.clone(), method_id, method, request_id)
}

/// A minimal qrpc client over WebTransport, for tests and benchmarks of a server's browser
/// path without a browser (features `testing` and `webtransport`): raw frames on the streams a
/// page would open. Not a stable API; pages use the TypeScript client.
#[cfg(feature = "webtransport")]
pub mod web {
    use std::sync::atomic::{AtomicU32, Ordering};

    use bytes::{Bytes, BytesMut};
    use web_transport_quinn::{ClientBuilder, ClientError, Session, http};

    use crate::extension::EXTENSION_STATUS;
    use crate::frame::{DEFAULT_MAX_PAYLOAD, PushFrame, RequestFrame, ResponseFrame};
    use crate::status::{Code, Status};

    /// A push event as it arrived.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct WebPush {
        /// The event's type.
        pub event_type: u16,
        /// The encoded event.
        pub payload: Bytes,
    }

    fn web_push(frame: PushFrame) -> WebPush {
        WebPush {
            event_type: frame.event_type,
            payload: frame.payload,
        }
    }

    /// A WebTransport session to a qrpc server.
    #[derive(Debug)]
    pub struct WebClient {
        session: Session,
        next_request: AtomicU32,
    }

    impl WebClient {
        /// Opens a session at `url` (`https://127.0.0.1:PORT/qrpc`), trusting the server's
        /// certificate by one of `hashes` (SHA-256 of the DER certificate) as a page does, and
        /// sending `origin` as a page's browser does (`None`: a program's request).
        pub async fn connect(
            url: &str,
            hashes: &[[u8; 32]],
            origin: Option<&str>,
        ) -> Result<Self, ClientError> {
            let url = url::Url::parse(url)
                .map_err(|e| ClientError::InvalidDnsName(format!("{url}: {e}")))?;
            let client = ClientBuilder::new()
                .with_server_certificate_hashes(hashes.iter().map(|h| h.to_vec()).collect())?;
            let mut request = web_transport_quinn::proto::ConnectRequest::new(url);
            if let Some(origin) = origin {
                let value = http::HeaderValue::from_str(origin)
                    .map_err(|e| ClientError::InvalidDnsName(e.to_string()))?;
                request = request.with_header(http::header::ORIGIN, value);
            }
            let session = client.connect(request).await?;
            Ok(Self {
                session,
                next_request: AtomicU32::new(1),
            })
        }

        /// The session.
        pub fn session(&self) -> &Session {
            &self.session
        }

        /// Opens a client-streaming or bidi call of `method_id`: its empty opening frame is
        /// sent, then each [`send`](WebCall::send) is one message.
        pub async fn open_streaming(&self, method_id: u16) -> Result<WebCall, Status> {
            let mut call = self.open(method_id).await?;
            call.send(Bytes::new()).await?;
            Ok(call)
        }

        /// Opens a call of `method_id`; its first [`send`](WebCall::send) is the opening
        /// frame (a unary or server-streaming call's request).
        pub async fn open(&self, method_id: u16) -> Result<WebCall, Status> {
            let (send, recv) = self
                .session
                .open_bi()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            Ok(WebCall {
                send,
                recv,
                method_id,
                request_id: self.next_request.fetch_add(1, Ordering::Relaxed),
                buf: BytesMut::new(),
                ended: false,
            })
        }

        /// One unary call.
        pub async fn unary(&self, method_id: u16, request: Bytes) -> Result<Bytes, Status> {
            let mut call = self.open(method_id).await?;
            call.send(request).await?;
            call.finish();
            match call.next().await {
                Some(result) => result,
                None => Err(Status::internal("the call ended without a response")),
            }
        }

        /// Every response of a server-streaming call.
        pub async fn server_streaming(
            &self,
            method_id: u16,
            request: Bytes,
        ) -> Result<Vec<Bytes>, Status> {
            let mut call = self.open(method_id).await?;
            call.send(request).await?;
            call.finish();
            call.collect().await
        }

        /// The response of a client-streaming call that sends `requests`.
        pub async fn client_streaming(
            &self,
            method_id: u16,
            requests: impl IntoIterator<Item = Bytes>,
        ) -> Result<Bytes, Status> {
            let mut call = self.open_streaming(method_id).await?;
            for request in requests {
                call.send(request).await?;
            }
            call.finish();
            match call.next().await {
                Some(result) => result,
                None => Err(Status::internal("the call ended without a response")),
            }
        }

        /// The push stream's frames, once the server opened it.
        pub async fn pushes(&self) -> Result<WebPushes, Status> {
            let recv = self
                .session
                .accept_uni()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            Ok(WebPushes {
                recv,
                buf: BytesMut::new(),
            })
        }

        /// The next push event sent as a datagram.
        pub async fn datagram(&self) -> Result<WebPush, Status> {
            let datagram = self
                .session
                .read_datagram()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            PushFrame::decode(&mut BytesMut::from(&datagram[..]), DEFAULT_MAX_PAYLOAD)
                .map_err(|e| Status::internal(e.to_string()))?
                .map(web_push)
                .ok_or_else(|| Status::internal("a datagram held a partial push frame"))
        }
    }

    /// One call over a WebTransport session.
    #[derive(Debug)]
    pub struct WebCall {
        send: web_transport_quinn::SendStream,
        recv: web_transport_quinn::RecvStream,
        method_id: u16,
        request_id: u32,
        buf: BytesMut,
        ended: bool,
    }

    impl WebCall {
        /// Sends one request message.
        pub async fn send(&mut self, payload: Bytes) -> Result<(), Status> {
            // Every frame of a call carries its method id and request id.
            let frame = RequestFrame {
                method_id: self.method_id,
                request_id: self.request_id,
                payload,
            };
            let mut chunks = [
                Bytes::copy_from_slice(&frame.header().encode()),
                frame.payload,
            ];
            self.send
                .write_all_chunks(&mut chunks)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))
        }

        /// Every remaining response, or the call's error.
        pub async fn collect(&mut self) -> Result<Vec<Bytes>, Status> {
            let mut responses = Vec::new();
            while let Some(response) = self.next().await {
                responses.push(response?);
            }
            Ok(responses)
        }

        /// Ends the request stream.
        pub fn finish(&mut self) {
            let _ = self.send.finish();
        }

        /// Cancels the call as a client does: both directions reset.
        pub fn cancel(&mut self) {
            let code = u32::try_from(crate::protocol::reset::CANCELLED.into_inner()).unwrap_or(1);
            let _ = self.send.reset(code);
            let _ = self.recv.stop(code);
        }

        /// The next response message, the call's error, or `None` once it ended well.
        pub async fn next(&mut self) -> Option<Result<Bytes, Status>> {
            loop {
                if self.ended {
                    return None;
                }
                match ResponseFrame::decode(&mut self.buf, DEFAULT_MAX_PAYLOAD) {
                    Err(err) => {
                        self.ended = true;
                        return Some(Err(Status::internal(err.to_string())));
                    }
                    Ok(Some(frame)) if frame.status == EXTENSION_STATUS => continue,
                    Ok(Some(frame)) if frame.status == Code::Ok.as_u8() => {
                        return Some(Ok(frame.payload));
                    }
                    Ok(Some(frame)) => {
                        self.ended = true;
                        return Some(Err(Status::from_wire(frame.status, &frame.payload)));
                    }
                    Ok(None) => {}
                }
                match self.recv.read_chunk(usize::MAX, true).await {
                    Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                    Ok(None) if self.buf.is_empty() => {
                        self.ended = true;
                        return None;
                    }
                    Ok(None) => {
                        self.ended = true;
                        return Some(Err(Status::internal("the response ended inside a frame")));
                    }
                    Err(err) => {
                        self.ended = true;
                        return Some(Err(Status::unavailable(err.to_string())));
                    }
                }
            }
        }
    }

    /// The frames of the push stream.
    #[derive(Debug)]
    pub struct WebPushes {
        recv: web_transport_quinn::RecvStream,
        buf: BytesMut,
    }

    impl WebPushes {
        /// The next push event, or `None` when the stream ended.
        pub async fn next(&mut self) -> Option<Result<WebPush, Status>> {
            loop {
                match PushFrame::decode(&mut self.buf, DEFAULT_MAX_PAYLOAD) {
                    Err(err) => return Some(Err(Status::internal(err.to_string()))),
                    Ok(Some(frame)) => return Some(Ok(web_push(frame))),
                    Ok(None) => {}
                }
                match self.recv.read_chunk(usize::MAX, true).await {
                    Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                    Ok(None) => return None,
                    Err(err) => return Some(Err(Status::unavailable(err.to_string()))),
                }
            }
        }
    }
}
