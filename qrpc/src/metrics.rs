//! Metrics through the [`metrics`](https://docs.rs/metrics) facade, when the `metrics` feature
//! is on; without it every function here is empty and compiles away.
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `qrpc_calls_total` | counter | `method`, `code` | calls answered, by final status |
//! | `qrpc_call_duration_seconds` | histogram | `method` | from the opening frame to the last response frame written |
//! | `qrpc_connections_open` | gauge | | connections past their handshake and not yet closed |
//! | `qrpc_push_dropped_total` | counter | | push events refused because a connection's queue was full or closing |

use std::time::Duration;

use crate::status::Code;

/// A call of `method` (`method_id` when the server has no such method) ended with `code`
/// after `elapsed`.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn call_finished(
    method: Option<&crate::routes::MethodInfo>,
    method_id: u16,
    code: Code,
    elapsed: Duration,
) {
    #[cfg(feature = "metrics")]
    {
        let method = method.map_or_else(|| format!("#{method_id}"), ToString::to_string);
        metrics::counter!("qrpc_calls_total", "method" => method.clone(), "code" => code.description())
            .increment(1);
        metrics::histogram!("qrpc_call_duration_seconds", "method" => method)
            .record(elapsed.as_secs_f64());
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
