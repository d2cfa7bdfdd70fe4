//! Prometheus exposition shared by the services: each keeps its own [`Registry`] (several
//! services may run in one test process), encoded here in the Prometheus text format.

use crate::auth::node::AuthCounters;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The text exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; a metric that fails to encode would be our bug.
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
        .expect("metrics encode into a string");
    out
}

/// Exposes a node authenticator's counters, read at each scrape, as
/// `<prefix>_bcrypt_verifications_total` and `<prefix>_token_digests_adopted_total`.
#[derive(Debug)]
pub struct AuthCollector {
    prefix: &'static str,
    counters: Arc<AuthCounters>,
}

impl AuthCollector {
    /// Names the series `<prefix>_…`, e.g. `flotilla_api`.
    pub fn new(prefix: &'static str, counters: Arc<AuthCounters>) -> Self {
        Self { prefix, counters }
    }
}

impl Collector for AuthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            (
                "bcrypt_verifications",
                "Node tokens verified with bcrypt (those still stored as bcrypt hashes)",
                &self.counters.bcrypt_verifications,
            ),
            (
                "token_digests_adopted",
                "Node token bcrypt hashes replaced by the token's digest",
                &self.counters.digests_adopted,
            ),
        ] {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            let name = format!("{}_{name}", self.prefix);
            let metric = encoder.encode_descriptor(&name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_counters_are_read_at_each_scrape() {
        let counters = Arc::new(AuthCounters::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(AuthCollector::new("x", counters.clone())));
        counters.bcrypt_verifications.store(2, Ordering::Relaxed);
        let text = encode(&registry);
        assert!(text.contains("x_bcrypt_verifications_total 2\n"), "{text}");
        assert!(text.contains("x_token_digests_adopted_total 0\n"), "{text}");
    }
}
