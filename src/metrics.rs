//! Prometheus metrics, served as text on the HTTP port at `GET /metrics`.
//!
//! One [`Metrics`] is made per [`crate::app::Application`] and shared as `Arc<Metrics>`; there
//! is no global registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: i32,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The service's metrics and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rpc_duration: HistogramFamily<RpcLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("refund");
        let rpc_duration: HistogramFamily<RpcLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "rpc_duration_seconds",
            "gRPC server call duration until the response headers, by method and grpc-status code",
            rpc_duration.clone(),
        );
        Self {
            registry,
            rpc_duration,
        }
    }

    /// One gRPC call: `method` is the full path's `Service/Method`, `code` its grpc-status.
    pub fn observe_rpc(&self, method: &str, code: i32, seconds: f64) {
        self.rpc_duration
            .get_or_create(&RpcLabels {
                method: method.to_owned(),
                code,
            })
            .observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_rpc_durations() {
        let metrics = Metrics::new();
        metrics.observe_rpc("refunds.v1.RefundService/CreateRefund", 0, 0.01);
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"refund_rpc_duration_seconds_count{method="refunds.v1.RefundService/CreateRefund",code="0"} 1"#
            ),
            "{text}"
        );
    }
}
