//! The filter's metrics on the host: every series of the core's `MetricsPlan` defined once per
//! VM at configure time (Envoy: the stat `wasmcustom.<name>`, shared by the workers that define
//! the same name), and the increments the core's decisions ask for. Per request this is a few
//! `proxy_increment_metric` calls with ids looked up by index: no name is formatted.
//!
//! A metric the host refuses to define or increment is not a reason to refuse a request: the
//! decision stands, the counter just misses it (a definition failure is logged once).

use crate::host;
use api_guard_core::support::metrics::{MetricId, MetricKind, MetricsPlan, Tally};

/// The host's id for every [`MetricId`] of a plan (`None`: the host refused to define it).
#[derive(Default)]
pub(crate) struct Metrics {
    host_ids: Vec<Option<u32>>,
}

impl Metrics {
    /// Defines every series of `plan`.
    pub(crate) fn define(plan: &MetricsPlan) -> Metrics {
        let mut refused = 0usize;
        let host_ids = plan
            .definitions()
            .iter()
            .map(|definition| {
                let kind = match definition.kind {
                    MetricKind::Counter => host::METRIC_COUNTER,
                    MetricKind::Gauge => host::METRIC_GAUGE,
                };
                let id = host::define_metric(kind, &definition.name).ok();
                refused += usize::from(id.is_none());
                id
            })
            .collect();
        if refused > 0 {
            log::warn!("api-guard: the host refused to define {refused} metrics");
        }
        Metrics { host_ids }
    }

    fn host_id(&self, id: MetricId) -> Option<u32> {
        self.host_ids
            .get(usize::try_from(id.0).ok()?)
            .copied()
            .flatten()
    }

    pub(crate) fn increment(&self, id: MetricId) {
        if let Some(host_id) = self.host_id(id) {
            let _ = host::increment_metric(host_id, 1);
        }
    }

    pub(crate) fn count(&self, tally: &Tally) {
        for id in tally.ids() {
            self.increment(id);
        }
    }

    pub(crate) fn set(&self, id: MetricId, value: u64) {
        if let Some(host_id) = self.host_id(id) {
            let _ = host::record_metric(host_id, value);
        }
    }
}
