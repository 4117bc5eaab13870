//! The replication lag seen while a scenario runs: every replicator's
//! `/metrics` sampled twice a second, the worst value kept per link.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ensemble::Ensemble;

/// How often each replicator is sampled.
const EVERY: Duration = Duration::from_millis(500);
/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// The replicator's lag gauges (`link` label: `source->target`).
const LAG_SECONDS: &str = "ezone_replicator_lag_seconds";
const LAG_BYTES: &str = "ezone_replicator_lag_bytes";

/// Worst replication lag seen on one link while sampling.
#[derive(Debug, Clone, Copy, Default)]
pub struct LagSeen {
    pub max_seconds: f64,
    pub max_bytes: f64,
    pub samples: u64,
}

/// Samples every replicator's `/metrics` (lag seconds and bytes per link)
/// twice a second until the task is aborted; the shared map holds the worst
/// seen per link. A replicator that does not answer is skipped that round.
pub fn lag_sampler(
    ens: &Ensemble,
) -> (
    Arc<Mutex<BTreeMap<String, LagSeen>>>,
    tokio::task::JoinHandle<()>,
) {
    let admins: Vec<SocketAddr> = ens
        .sites()
        .iter()
        .filter_map(|s| ens.replicator_admin(s).ok())
        .collect();
    let seen: Arc<Mutex<BTreeMap<String, LagSeen>>> = Arc::default();
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        loop {
            for a in &admins {
                let Ok(uri) = format!("http://{a}/metrics").parse::<hyper::Uri>() else {
                    continue;
                };
                let Ok(Ok(resp)) = tokio::time::timeout(SCRAPE_TIMEOUT, client.get(uri)).await
                else {
                    continue;
                };
                let Ok(body) = http_body_util::BodyExt::collect(resp.into_body()).await else {
                    continue;
                };
                let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
                let mut m = seen.lock().unwrap_or_else(|p| p.into_inner());
                record(&mut m, &text);
            }
            tokio::time::sleep(EVERY).await;
        }
    });
    (out, task)
}

/// Folds one exposition's lag gauges into `m`.
fn record(m: &mut BTreeMap<String, LagSeen>, text: &str) {
    for line in text.lines() {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let Some(link) = name_labels
            .split("link=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let e = m.entry(link.to_string()).or_default();
        if name_labels.starts_with(LAG_SECONDS) {
            e.max_seconds = e.max_seconds.max(v);
            e.samples += 1;
        } else if name_labels.starts_with(LAG_BYTES) {
            e.max_bytes = e.max_bytes.max(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_lag_of_each_link_is_kept() {
        let mut m = BTreeMap::new();
        record(
            &mut m,
            "# TYPE ezone_replicator_lag_seconds gauge\n\
             ezone_replicator_lag_seconds{link=\"a->b\"} 0.5\n\
             ezone_replicator_lag_bytes{link=\"a->b\"} 100\n\
             ezone_replicator_applied_total{link=\"a->b\"} 9\n",
        );
        record(
            &mut m,
            "ezone_replicator_lag_seconds{link=\"a->b\"} 0.2\n\
             ezone_replicator_lag_bytes{link=\"a->b\"} 300\n",
        );
        let l = m["a->b"];
        assert_eq!((l.max_seconds, l.max_bytes, l.samples), (0.5, 300.0, 2));
        assert_eq!(m.len(), 1);
    }
}
