//! Metrics through the [`metrics`](https://docs.rs/metrics) facade, when the `metrics` feature
//! is on; without it every function here is empty and compiles away.
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `qrpc_calls_total` | counter | `method` (`unknown` for ids the server lacks), `code` | calls answered, by final status |
//! | `qrpc_call_duration_seconds` | histogram | `method` | from the opening frame to the last response frame written |
//! | `qrpc_connections_open` | gauge | | connections past their handshake and not yet closed |
//! | `qrpc_push_dropped_total` | counter | | push events refused because a connection's queue was full or closing |

use std::time::Duration;

use crate::status::Code;

/// Per-method call metrics of one server, with the `metrics` handles registered once (on a
/// method's first call with each code) so that a call costs a map lookup and an increment.
/// Install the `metrics` recorder before the server serves.
#[derive(Debug, Default)]
pub(crate) struct CallMetrics {
    #[cfg(feature = "metrics")]
    methods: std::collections::HashMap<u16, MethodMetrics>,
    #[cfg(feature = "metrics")]
    unknown: MethodMetrics,
}

#[cfg(feature = "metrics")]
#[derive(Debug, Default)]
struct MethodMetrics {
    name: String,
    calls: [std::sync::OnceLock<metrics::Counter>; 17],
    duration: std::sync::OnceLock<metrics::Histogram>,
}

impl CallMetrics {
    /// Handles for every method of a server.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new<'a>(methods: impl Iterator<Item = &'a crate::method::MethodInfo>) -> Self {
        #[cfg(feature = "metrics")]
        {
            let methods = methods
                .map(|m| {
                    let metrics = MethodMetrics {
                        name: m.to_string(),
                        ..MethodMetrics::default()
                    };
                    (m.id, metrics)
                })
                .collect();
            let unknown = MethodMetrics {
                name: "unknown".into(),
                ..MethodMetrics::default()
            };
            Self { methods, unknown }
        }
        #[cfg(not(feature = "metrics"))]
        Self::default()
    }

    /// A call of `method_id` ended with `code` after `elapsed`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn finished(&self, method_id: u16, code: Code, elapsed: Duration) {
        #[cfg(feature = "metrics")]
        {
            let m = self.methods.get(&method_id).unwrap_or(&self.unknown);
            let index = usize::from(code.as_u8()).min(m.calls.len() - 1);
            m.calls[index]
                .get_or_init(|| {
                    metrics::counter!(
                        "qrpc_calls_total",
                        "method" => m.name.clone(),
                        "code" => code.description()
                    )
                })
                .increment(1);
            m.duration
                .get_or_init(|| {
                    metrics::histogram!("qrpc_call_duration_seconds", "method" => m.name.clone())
                })
                .record(elapsed.as_secs_f64());
        }
    }
}

/// A connection finished its handshake.
pub(crate) fn connection_opened() {
    #[cfg(feature = "metrics")]
    metrics::gauge!("qrpc_connections_open").increment(1.0);
}

/// A connection closed.
pub(crate) fn connection_closed() {
    #[cfg(feature = "metrics")]
    metrics::gauge!("qrpc_connections_open").decrement(1.0);
}

/// A push event was refused (queue full or connection closing).
pub(crate) fn push_dropped() {
    #[cfg(feature = "metrics")]
    metrics::counter!("qrpc_push_dropped_total").increment(1);
}
