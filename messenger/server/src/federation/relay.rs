//! The relay sender: drains the outbox to each destination, oldest first, in batches of at
//! most [`MAX_RELAY_BATCH`](super::service::MAX_RELAY_BATCH). A destination that cannot be
//! reached is retried after a delay that starts at `retry_initial_ms`, doubles per failure
//! and stops growing at `retry_max_secs`; traffic from it, and a health probe that reaches
//! it, make the next attempt due at once. Messages that waited longer than `give_up_secs`
//! are moved to their senders' relay failures (and the senders are told), as are messages the
//! destination refuses.
//!
//! Only the node holding a destination's lease (taken in the store) sends to it, so in a
//! cluster each message leaves one node, in order.

use std::sync::Arc;
use std::time::Duration;

use qpq_proto::v1;
use qrpc::Code;

use crate::federation::Federation;
use crate::federation::service::MAX_RELAY_BATCH;
use crate::state::AppState;
use crate::store::{OutboxRow, Store};

/// How long a node's claim on a destination lasts unless renewed (each batch renews it):
/// longer than a relay call may take.
const LEASE_MS: u64 = 60_000;

/// How long one relay call may take.
const RELAY_CALL: Duration = Duration::from_secs(20);

/// Destinations sent to at once.
const MAX_SENDING: usize = 32;

/// How often the sender looks for work nobody woke it for (retries coming due, rows another
/// node wrote).
const POLL: Duration = Duration::from_millis(500);

/// Whether a refusal of the whole call is worth retrying.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
    )
}

/// The delay before attempt `attempts + 1`.
pub(crate) fn backoff(fed: &Federation, attempts: u32) -> u64 {
    let start = fed.config.retry_initial_ms;
    let max = fed.config.retry_max_secs.saturating_mul(1000);
    start
        .saturating_mul(1u64 << attempts.min(32))
        .min(max)
        .max(1)
}

/// Runs the relay sender and the health prober until the state is dropped.
pub(crate) fn spawn<S: Store>(state: &Arc<AppState<S>>) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(fed) = state.federation.clone() else {
        return Vec::new();
    };
    let weak = Arc::downgrade(state);
    let sender = {
        let fed = Arc::clone(&fed);
        let weak = weak.clone();
        tokio::spawn(async move {
            loop {
                let Some(state) = weak.upgrade() else { return };
                if let Err(e) = drain_due(&state, &fed).await {
                    tracing::warn!(reason = %e, "relay outbox pass failed");
                }
                drop(state);
                tokio::select! {
                    () = fed.wake.notified() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        })
    };
    let prober = tokio::spawn(async move {
        let every = Duration::from_secs(fed.config.health_probe_secs);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { return };
            probe(&state, &fed).await;
        }
    });
    vec![sender, prober]
}

/// Probes every destination with messages waiting; one that answers is due at once.
async fn probe<S: Store>(state: &AppState<S>, fed: &Federation) {
    let Ok(waiting) = state.store.outbox_due(fed.node.clone(), u64::MAX).await else {
        return;
    };
    // One at a time, each within its own time: a peer that does not answer delays the others
    // by seconds, not for good.
    for destination in waiting {
        let client = tokio::time::timeout(Duration::from_secs(20), fed.client(&destination)).await;
        let Ok(Ok(client)) = client else {
            continue;
        };
        let answer = client
            .federation_health(
                qrpc::Request::new(v1::FederationHealthRequest {
                    origin: fed.domain.clone(),
                })
                .with_timeout(Duration::from_secs(5)),
            )
            .await;
        match answer {
            Ok(_) => {
                if state.store.outbox_wake(destination.clone()).await.is_ok() {
                    fed.wake.notify_one();
                }
            }
            Err(status) if super::connection_failed(status.code()) => {
                fed.forget(&destination).await;
            }
            Err(_) => {}
        }
    }
}

/// Starts a sender task for every destination that is due and has none: one slow or
/// busy destination holds up no other.
async fn drain_due<S: Store>(
    state: &Arc<AppState<S>>,
    fed: &Arc<Federation>,
) -> Result<(), String> {
    let due = state
        .store
        .outbox_due(fed.node.clone(), state.now_ms())
        .await
        .map_err(|e| e.to_string())?;
    for destination in due {
        {
            let mut sending = crate::util::lock(&fed.sending);
            if sending.len() >= MAX_SENDING || !sending.insert(destination.clone()) {
                continue;
            }
        }
        let (state, fed) = (Arc::clone(state), Arc::clone(fed));
        tokio::spawn(async move {
            if let Err(e) = drain(&state, &fed, &destination).await {
                tracing::warn!(destination, reason = %e, "relay outbox pass failed");
            }
            crate::util::lock(&fed.sending).remove(&destination);
        });
    }
    Ok(())
}

/// Sends `destination`'s outbox until it is empty, the destination fails, or another node
/// holds its lease.
async fn drain<S: Store>(
    state: &AppState<S>,
    fed: &Federation,
    destination: &str,
) -> Result<(), crate::store::StoreError> {
    let batch = u32::try_from(MAX_RELAY_BATCH).unwrap_or(50);
    loop {
        let now = state.now_ms();
        let Some((rows, destination_state)) = state
            .store
            .outbox_claim(
                destination.to_owned(),
                fed.node.clone(),
                now,
                LEASE_MS,
                batch,
            )
            .await?
        else {
            return Ok(());
        };
        if rows.is_empty() {
            return Ok(());
        }
        match send(fed, destination, &rows).await {
            Ok(results) => settle(state, fed, destination, &rows, results).await?,
            Err(status) if transient(status.code()) => {
                if super::connection_failed(status.code()) {
                    fed.forget(destination).await;
                }
                let give_up_ms = fed.config.give_up_secs.saturating_mul(1000);
                let expired: Vec<u64> = rows
                    .iter()
                    .filter(|r| r.created_at_ms.saturating_add(give_up_ms) <= now)
                    .map(|r| r.id)
                    .collect();
                if !expired.is_empty() {
                    let reason = format!(
                        "{destination} could not be reached for {} s: {}",
                        fed.config.give_up_secs,
                        status.message()
                    );
                    fail(state, expired, reason, true).await?;
                    continue;
                }
                let delay = backoff(fed, destination_state.attempts);
                tracing::info!(
                    destination,
                    attempts = destination_state.attempts + 1,
                    retry_in_ms = delay,
                    reason = %status.message(),
                    "relay failed; will retry"
                );
                state
                    .store
                    .outbox_retry_later(destination.to_owned(), now.saturating_add(delay), now)
                    .await?;
                return Ok(());
            }
            Err(status) => {
                // The destination refuses this server outright (it does not federate with
                // it, or finds the request malformed): nothing to retry.
                tracing::warn!(destination, reason = %status.message(), "relay refused");
                let ids = rows.iter().map(|r| r.id).collect();
                let reason = format!("{destination} refused: {}", status.message());
                fail(state, ids, reason, false).await?;
            }
        }
    }
}

/// One relay call of `rows`.
async fn send(
    fed: &Federation,
    destination: &str,
    rows: &[OutboxRow],
) -> Result<Vec<v1::EnqueueResponse>, qrpc::Status> {
    let client = fed.client(destination).await?;
    let request = v1::RelayBatchEnqueueRequest {
        origin: fed.domain.clone(),
        messages: rows
            .iter()
            .map(|r| v1::RelayedMessage {
                recipient: Some(v1::DeviceRef {
                    user: r.message.recipient.user.clone(),
                    device: r.message.recipient.device.clone(),
                }),
                sender_user: r.message.sender.user.clone(),
                sender_device: r.message.sender.device.clone(),
                message_id: r.message.message_id.clone().into(),
                payload: r.message.payload.clone().into(),
            })
            .collect(),
    };
    let answer = client
        .relay_batch_enqueue(qrpc::Request::new(request).with_timeout(RELAY_CALL))
        .await?;
    if answer.results.len() != rows.len() {
        return Err(qrpc::Status::internal(format!(
            "{destination} answered {} results for {} messages",
            answer.results.len(),
            rows.len()
        )));
    }
    Ok(answer.results)
}

/// Applies per-message results: delivered ones leave the outbox; ones the destination holds
/// back for now (`ResourceExhausted`: a sender over its rate, a full queue) are held for a
/// while (with every later message of their senders: the next claims skip them and go on
/// with everyone else's), until the give-up time; the rest are refused for good and become
/// relay failures.
async fn settle<S: Store>(
    state: &AppState<S>,
    fed: &Federation,
    destination: &str,
    rows: &[OutboxRow],
    results: Vec<v1::EnqueueResponse>,
) -> Result<(), crate::store::StoreError> {
    let now = state.now_ms();
    let give_up_ms = fed.config.give_up_secs.saturating_mul(1000);
    let mut delivered = Vec::new();
    let mut held = Vec::new();
    let mut refused: std::collections::BTreeMap<(String, bool), Vec<u64>> = Default::default();
    for (row, result) in rows.iter().zip(results) {
        let code = Code::from_u8(u8::try_from(result.code).unwrap_or(2));
        if code == Code::Ok {
            delivered.push(row.id);
        } else if code == Code::ResourceExhausted
            && row.created_at_ms.saturating_add(give_up_ms) > now
        {
            held.push(row.id);
        } else {
            let retryable = code == Code::ResourceExhausted;
            // The peer's words, bounded: they are stored and shown to the sender.
            let said: String = result.error.chars().take(200).collect();
            refused
                .entry((format!("{destination} refused: {said}"), retryable))
                .or_default()
                .push(row.id);
        }
    }
    if !held.is_empty() {
        tracing::debug!(
            destination,
            held = held.len(),
            "relay held back by the destination's limits"
        );
        let hold_ms = fed
            .config
            .retry_initial_ms
            .saturating_mul(4)
            .min(fed.config.retry_max_secs.saturating_mul(1000));
        state
            .store
            .outbox_hold(held, now.saturating_add(hold_ms))
            .await?;
    }
    for ((reason, retryable), ids) in refused {
        fail(state, ids, reason, retryable).await?;
    }
    let count = delivered.len() as u64;
    state
        .store
        .outbox_sent(destination.to_owned(), delivered)
        .await?;
    fed.relayed
        .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Moves messages to their senders' relay failures and tells the senders' devices.
async fn fail<S: Store>(
    state: &AppState<S>,
    ids: Vec<u64>,
    reason: String,
    retryable: bool,
) -> Result<(), crate::store::StoreError> {
    let failed = state
        .store
        .outbox_fail(ids, reason, retryable, state.now_ms())
        .await?;
    for (sender, id) in failed {
        state.relay_failed(&sender, id).await;
    }
    Ok(())
}
