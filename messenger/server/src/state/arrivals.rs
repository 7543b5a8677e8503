//! Arrivals: who waits in `FetchWait` for which device, and the pokes that wake them and
//! push "message available" to the device's connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use qpq_proto::v1::{self, server_event_push::Event};
use qrpc::PushRegistry;
use tokio::sync::watch;

use crate::store::DeviceId;
use crate::util::lock;

/// Per device with a `FetchWait` in progress: the newest seq enqueued while it waits.
pub(crate) struct Arrivals {
    waiters: Mutex<HashMap<DeviceId, watch::Sender<u64>>>,
    registry: PushRegistry,
}

impl Arrivals {
    pub(crate) fn new(registry: PushRegistry) -> Self {
        Self {
            waiters: Mutex::new(HashMap::new()),
            registry,
        }
    }

    /// Watches the newest seq enqueued for `device` from now on (for `FetchWait`). The entry
    /// goes away with its last watcher.
    pub(crate) fn watch(self: &Arc<Self>, device: &DeviceId) -> ArrivalWatch {
        let rx = lock(&self.waiters)
            .entry(device.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        ArrivalWatch {
            rx,
            arrivals: Arc::clone(self),
            device: device.clone(),
        }
    }

    /// Wakes `FetchWait` callers of `device` whose position is before `seq`, and pushes a
    /// notification to the device's connections.
    pub(crate) fn arrived(&self, device: &DeviceId, seq: u64) {
        if let Some(tx) = lock(&self.waiters).get(device) {
            tx.send_if_modified(|newest| {
                let newer = seq > *newest;
                if newer {
                    *newest = seq;
                }
                newer
            });
        }
        let event = Event::Message(v1::MessageNotification { seq });
        self.registry.try_send_event(&device.identity(), &event);
    }

    /// Devices with a `FetchWait` in progress (for tests and metrics).
    pub(crate) fn waiting_devices(&self) -> usize {
        lock(&self.waiters).len()
    }

    /// Forgets devices nobody watches any more.
    pub(crate) fn prune(&self) {
        lock(&self.waiters).retain(|_, tx| tx.receiver_count() > 0);
    }
}

/// A `FetchWait` caller's view of new arrivals on its device.
pub struct ArrivalWatch {
    rx: watch::Receiver<u64>,
    arrivals: Arc<Arrivals>,
    device: DeviceId,
}

impl ArrivalWatch {
    /// Forgets arrivals so far; [`wait_past`](Self::wait_past) then reports only later ones.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Waits until a message with a seq past `after_seq` is enqueued after the last
    /// [`mark_seen`](Self::mark_seen); arrivals at or before it do not wake the caller.
    pub async fn wait_past(&mut self, after_seq: u64) {
        loop {
            if self.rx.changed().await.is_err() {
                // The sender is only dropped once no receiver is left; never while we hold one.
                return std::future::pending().await;
            }
            if *self.rx.borrow_and_update() > after_seq {
                return;
            }
        }
    }
}

impl Drop for ArrivalWatch {
    fn drop(&mut self) {
        let mut waiters = lock(&self.arrivals.waiters);
        // Our receiver still counts until this returns: 1 means we are the last one.
        if waiters
            .get(&self.device)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            waiters.remove(&self.device);
        }
    }
}
