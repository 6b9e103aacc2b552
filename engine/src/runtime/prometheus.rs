//! Serving flumen's metrics to Prometheus.

use std::net::SocketAddr;

use crate::{Error, Result};

/// Serves every flumen metric (`flumen_records_in_total`, `flumen_records_out_total`,
/// `flumen_bad_records_total`, `flumen_late_records_total`, `flumen_batch_seconds`, ...)
/// at `http://<addr>/metrics` for this process. Call once, before running
/// applications; a second call fails because the metrics recorder is process-wide.
pub fn serve_metrics(addr: SocketAddr) -> Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| Error::Config(format!("cannot serve metrics on {addr}: {e}")))
}
