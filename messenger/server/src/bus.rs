//! The cluster bus: what must cross nodes, as hints delivered at most once.
//!
//! A node applies every change to its own state first (its waiters, its connections), then
//! publishes a [`v1::ClusterPoke`] so that the other nodes apply it to theirs: "device D has
//! messages up to seq N" (wakes `FetchWait` and pushes on whichever node holds D's
//! connection), "end the sessions of device D / of this token" (revocation, logout), channel
//! changes and stranger-memory invalidations, and pushes to a user's devices. The database
//! holds the truth: a node that misses a poke still serves every fetch correctly, so a lost
//! poke costs latency (a `FetchWait` that runs to its end), never a message.
//!
//! Two buses: [`ClusterBus::Local`] for one node (nothing to tell anyone; the default), and
//! [`ClusterBus::Nats`] over a NATS subject. A node that loses NATS keeps serving; async-nats
//! reconnects in the background and the subscription resumes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use prost::Message;
use qpq_proto::v1;
use tokio::sync::mpsc;

use crate::error::ServerError;

/// How a node tells the others.
#[derive(Debug, Clone, Default)]
pub enum ClusterBus {
    /// One node: every change is already applied where it happened.
    #[default]
    Local,
    /// Several nodes sharing a NATS subject.
    Nats(Arc<NatsBus>),
}

impl ClusterBus {
    /// Publishes `poke` to the other nodes (nothing for a local bus). Never fails the
    /// caller: a poke that cannot be sent is counted and logged, and the database still
    /// holds the truth.
    pub async fn publish(&self, poke: v1::cluster_poke::Poke) {
        if let Self::Nats(nats) = self {
            nats.publish(poke).await;
        }
    }

    /// This node's id on the bus (`None` for a local bus).
    pub fn node(&self) -> Option<&str> {
        match self {
            Self::Local => None,
            Self::Nats(nats) => Some(&nats.node),
        }
    }
}

/// A NATS connection publishing to and subscribed on `<prefix>.pokes`.
#[derive(Debug)]
pub struct NatsBus {
    client: async_nats::Client,
    node: String,
    /// Pokes waiting for the publisher task: a handler never waits on NATS (while NATS is
    /// away, the newest pokes beyond this queue are dropped).
    outbox: mpsc::Sender<bytes::Bytes>,
    /// Pokes published.
    pub sent: AtomicU64,
    /// Pokes that could not be published (NATS unreachable, buffer full).
    pub dropped: AtomicU64,
    /// Pokes from other nodes received (ours are skipped).
    pub received: Arc<AtomicU64>,
}

/// Pokes from other nodes, in arrival order.
pub type Pokes = mpsc::Receiver<v1::cluster_poke::Poke>;

/// Largest poke accepted from the bus: a push (the largest kind) carries one event, which a
/// server never makes larger than this.
const MAX_POKE: usize = 64 * 1024;

/// Pokes from other nodes waiting to be applied, at most; a node further behind drops the
/// newest (they are hints).
const INBOX: usize = 4096;

impl NatsBus {
    /// Connects to NATS at `url` as `node`, subscribes to `<prefix>.pokes`, and returns the
    /// bus with the stream of other nodes' pokes. An unreachable NATS at start is an error
    /// (a clustered node must not start deaf); after that, async-nats reconnects forever.
    pub async fn connect(
        url: &str,
        prefix: &str,
        node: &str,
    ) -> Result<(Arc<Self>, Pokes), ServerError> {
        let (options, address) = nats_credentials(url);
        let client = options
            .name(format!("qpq-server {node}"))
            .connection_timeout(std::time::Duration::from_secs(5))
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => {
                        tracing::warn!("lost the cluster bus (NATS); serving on: clients still get everything on their next fetch, pushes resume when it returns")
                    }
                    async_nats::Event::Connected => tracing::info!("cluster bus (NATS) connected"),
                    other => tracing::debug!(event = %other, "cluster bus event"),
                }
            })
            .connect(address.as_str())
            .await
            .map_err(|e| ServerError::Service {
                service: "NATS",
                url: redact(url),
                reason: e.to_string(),
            })?;
        let subject = format!("{prefix}.pokes");
        let mut subscription =
            client
                .subscribe(subject.clone())
                .await
                .map_err(|e| ServerError::Service {
                    service: "NATS",
                    url: redact(url),
                    reason: e.to_string(),
                })?;
        let (tx, rx) = mpsc::channel(INBOX);
        let received = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&received);
        let me = node.to_owned();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                // Pokes are small; anything larger is not from a node.
                if message.payload.len() > MAX_POKE {
                    tracing::debug!("skipped an oversized cluster poke");
                    continue;
                }
                match v1::ClusterPoke::decode(message.payload) {
                    Ok(poke) if poke.origin == me => {}
                    Ok(v1::ClusterPoke {
                        poke: Some(poke), ..
                    }) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                        if tx.try_send(poke).is_err() && tx.is_closed() {
                            return;
                        }
                    }
                    // A newer node's poke this one does not know, or garbage from a
                    // misconfigured client on the subject: hints only, so skipped.
                    Ok(_) | Err(_) => tracing::debug!("skipped an unreadable cluster poke"),
                }
            }
        });
        let (outbox, mut queued) = mpsc::channel::<bytes::Bytes>(INBOX);
        let bus = Arc::new(Self {
            client: client.clone(),
            node: node.to_owned(),
            outbox,
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            received,
        });
        let counters = Arc::downgrade(&bus);
        tokio::spawn(async move {
            while let Some(payload) = queued.recv().await {
                let result = client.publish(subject.clone(), payload).await;
                let Some(bus) = counters.upgrade() else {
                    return;
                };
                match result {
                    Ok(()) => bus.sent.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        tracing::debug!(error = %e, "a cluster poke was not sent");
                        bus.dropped.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
        Ok((bus, rx))
    }

    async fn publish(&self, poke: v1::cluster_poke::Poke) {
        let message = v1::ClusterPoke {
            origin: self.node.clone(),
            poke: Some(poke),
        };
        if self
            .outbox
            .try_send(message.encode_to_vec().into())
            .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until everything published so far reached the NATS server (tests use it to
    /// order a poke before what they check next).
    pub async fn flush(&self) {
        let _ = self.client.flush().await;
    }
}

/// The connect options carrying `url`'s credentials (async-nats does not read them from the
/// URL): `nats://user:password@host` or `nats://token@host`; and the URL without them.
fn nats_credentials(url: &str) -> (async_nats::ConnectOptions, String) {
    let (scheme, after) = url.split_at(url.find("://").map_or(0, |i| i + 3));
    let Some(at) = after.rfind('@') else {
        return (async_nats::ConnectOptions::new(), url.to_owned());
    };
    let address = format!("{scheme}{}", &after[at + 1..]);
    let options = match after[..at].split_once(':') {
        Some((user, password)) => {
            async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        }
        None => async_nats::ConnectOptions::with_token(after[..at].into()),
    };
    (options, address)
}

/// `url` without its credentials, for messages and logs: the password of `user:password@`,
/// a token standing alone before `@` (NATS; a PostgreSQL user alone is kept), a `password=`
/// query parameter, and PostgreSQL's `key=value` form's `password=` (quoted, escaped or not).
pub fn redact(url: &str) -> String {
    let url_form = url.contains("://") || (url.contains('@') && !url.contains('='));
    if !url_form {
        return redact_key_value(url);
    }
    let (scheme, after) = url.split_at(url.find("://").map_or(0, |i| i + 3));
    // Credentials end at the last '@' (a password may hold '/', '?' or '@').
    let (userinfo, rest) = match after.rfind('@') {
        Some(at) => (Some(&after[..at]), &after[at..]),
        None => (None, after),
    };
    let userinfo = match userinfo {
        Some(info) => match info.split_once(':') {
            Some((user, _)) => format!("{user}:***"),
            None if scheme.starts_with("postgres") => info.to_owned(),
            None => "***".to_owned(),
        },
        None => String::new(),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => rest.to_owned(),
    };
    format!("{scheme}{userinfo}{rest}")
}

/// PostgreSQL's `key=value` form without the password's value.
fn redact_key_value(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("password") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let after_key = from["password".len()..].trim_start();
        let Some(value) = after_key.strip_prefix('=') else {
            out.push_str("password");
            rest = &from["password".len()..];
            continue;
        };
        let value = value.trim_start();
        let quoted = value.starts_with('\'');
        let mut escaped = false;
        let mut end = value.len();
        for (i, c) in value.char_indices().skip(usize::from(quoted)) {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if (quoted && c == '\'') || (!quoted && c.is_whitespace()) {
                end = if quoted { i + 1 } else { i };
                break;
            }
        }
        out.push_str("password=***");
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            super::redact("postgres://qpq:s3cret@db:5432/qpq"),
            "postgres://qpq:***@db:5432/qpq"
        );
        assert_eq!(
            super::redact("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(
            super::redact("postgres://qpq@db/qpq"),
            "postgres://qpq@db/qpq"
        );
        assert_eq!(
            super::redact("host=db user=qpq password=s3cret dbname=qpq"),
            "host=db user=qpq password=*** dbname=qpq"
        );
        assert_eq!(
            super::redact("host=db password = 'a b\\' c' dbname=qpq"),
            "host=db password=*** dbname=qpq"
        );
        assert_eq!(
            super::redact("nats://s3cretToken@nats:4222"),
            "nats://***@nats:4222"
        );
        assert_eq!(
            super::redact("nats://u:p@nats:4222"),
            "nats://u:***@nats:4222"
        );
        assert_eq!(
            super::redact("postgres://u@h/db?sslmode=disable&password=s3cret"),
            "postgres://u@h/db?sslmode=disable&password=***"
        );
        // A password holding '/', '?' or '@' ends at the last '@', as the drivers read it.
        assert_eq!(
            super::redact("postgres://qpq:Ab3/x?Y@Z@db/qpq"),
            "postgres://qpq:***@db/qpq"
        );
        // Schemeless and other NATS schemes.
        assert_eq!(super::redact("u:pw@nats:4222"), "u:***@nats:4222");
        assert_eq!(super::redact("tok3n@nats:4222"), "***@nats:4222");
        assert_eq!(
            super::redact("tls://tok3n@nats:4222"),
            "tls://***@nats:4222"
        );
        // Escapes in an unquoted value, and odd input.
        assert_eq!(
            super::redact("host=db password=ab\\ cd dbname=x"),
            "host=db password=*** dbname=x"
        );
        assert_eq!(super::redact("password"), "password");
        assert_eq!(super::redact("password='unterminated"), "password=***");
        assert_eq!(super::redact("host=ü password=é"), "host=ü password=***");
    }
}
