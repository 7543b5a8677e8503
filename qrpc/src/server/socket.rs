//! A UDP socket wrapper that caps how many datagrams quinn batches into one send.
//!
//! quinn keeps a per-connection transmit buffer at the largest batch it ever sent (the
//! handshake's segmentation-offload batch: about 13 KB with ten 1,452-byte segments). A server
//! holding many mostly idle connections can cap the batch to keep that buffer small, at the
//! cost of more system calls for bulk sends.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Delegates everything to `inner` but reports at most `max_segments` segments per send.
pub(crate) struct CappedSegments {
    pub(crate) inner: Arc<dyn AsyncUdpSocket>,
    pub(crate) max_segments: usize,
}

impl fmt::Debug for CappedSegments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CappedSegments")
            .field("max_segments", &self.max_segments)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for CappedSegments {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner
            .max_transmit_segments()
            .min(self.max_segments.max(1))
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
