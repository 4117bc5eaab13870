//! The replicator's admin listener (`admin.listen`):
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | 200, OpenMetrics text ([`crate::metrics`]) |
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /readyz` | 200 when every link is ready (see [`judge`]), else 503 naming each link that is not and why |
//! | `GET /readyz?max_lag=1s` | as `/readyz`, and 503 if a link's lag is over the bound; a bad value is 400 |
//! | anything else | 404 listing these; a method other than GET or HEAD is 405 |
//!
//! A link is ready when it is streaming and the source has spoken on its
//! stream within [`READY_SILENCE`]: it accepted `START_REPLICATION` at the
//! link's position, or sent WAL data or a keepalive. A healthy source does
//! so even when idle: the stream's status update asks for a reply after a
//! quiet `status_interval` (3 s), so a live source is heard from at least
//! every 6 s or so.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::link::{monotonic_ms, LinkStats};
use crate::metrics::{Metrics, CONTENT_TYPE as METRICS_CONTENT_TYPE};

/// How long the source may say nothing on a streaming link before
/// `/readyz` calls the link not ready (see the module docs).
pub const READY_SILENCE: Duration = Duration::from_secs(10);

const TEXT: &str = "text/plain; charset=utf-8";

/// What the admin endpoints serve.
pub struct Admin {
    links: crate::link_set::LinkSet,
    metrics: Metrics,
}

/// One answer: status, `Content-Type`, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

fn text(status: StatusCode, body: String) -> Answer {
    Answer {
        status,
        content_type: TEXT,
        body,
    }
}

impl Admin {
    /// The endpoints over these links (`source->target` to its stats).
    pub fn new(links: impl Into<crate::link_set::LinkSet>) -> Admin {
        let links = links.into();
        Admin {
            metrics: Metrics::new(links.clone()),
            links,
        }
    }

    /// Answers one request (pure but for the links' live stats and the
    /// clock).
    pub fn answer(&self, method: &Method, uri: &Uri) -> Answer {
        if method != Method::GET && method != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not served here: use GET or HEAD\n"),
            );
        }
        match uri.path() {
            "/metrics" => Answer {
                status: StatusCode::OK,
                content_type: METRICS_CONTENT_TYPE,
                body: self.metrics.render(),
            },
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => match parse_ready_query(uri.query()) {
                Ok(max_lag) => self.readyz(max_lag.as_ref()),
                Err(problem) => text(StatusCode::BAD_REQUEST, format!("{problem}\n")),
            },
            other => text(
                StatusCode::NOT_FOUND,
                format!(
                    "no admin endpoint {other}: try /metrics (OpenMetrics), /healthz (the process runs), \
                     /readyz (every link streams and was heard from its source within {}s), \
                     /readyz?max_lag=1s (and no link lags more than that)\n",
                    READY_SILENCE.as_secs()
                ),
            ),
        }
    }

    fn readyz(&self, max_lag: Option<&MaxLag>) -> Answer {
        let now = monotonic_ms();
        let mut ready = Vec::new();
        let mut not_ready = Vec::new();
        let links = self.links.snapshot();
        for (link, stats) in &links {
            match judge(stats, now, max_lag) {
                Ok(detail) => ready.push(format!("{link}: {detail}\n")),
                Err(why) => not_ready.push(format!("{link}: {why}\n")),
            }
        }
        if not_ready.is_empty() {
            let mut body = String::from("ready\n");
            if ready.is_empty() {
                body.push_str("no links (the topology has no other site)\n");
            }
            body.extend(ready);
            text(StatusCode::OK, body)
        } else {
            let mut body = format!("not ready: {} of {} links\n", not_ready.len(), links.len());
            body.extend(not_ready);
            text(StatusCode::SERVICE_UNAVAILABLE, body)
        }
    }
}

/// `/readyz`'s `max_lag`: the bound, and as it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaxLag {
    pub bound: Duration,
    pub written: String,
}

/// `/readyz`'s query: nothing, or `max_lag=<duration>` (`500ms`, `1s`,
/// `2m`, ... as `humantime` reads them). The problem, for a 400, otherwise.
pub fn parse_ready_query(query: Option<&str>) -> Result<Option<MaxLag>, String> {
    let mut max_lag = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (decode(key)?, decode(value)?);
        if key != "max_lag" {
            return Err(format!(
                "unknown parameter {key:?}: /readyz takes max_lag (e.g. /readyz?max_lag=1s)"
            ));
        }
        if max_lag.is_some() {
            return Err("max_lag is given more than once".to_string());
        }
        let bound = humantime::parse_duration(value.trim()).map_err(|e| {
            format!("max_lag={value:?} is not a duration ({e}): write it like 500ms, 1s or 2m")
        })?;
        max_lag = Some(MaxLag {
            bound,
            written: value.trim().to_string(),
        });
    }
    Ok(max_lag)
}

/// A query component, `+` and `%XX` decoded.
fn decode(s: &str) -> Result<String, String> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("{s:?} is not UTF-8 once percent-decoded"))
}

/// Whether one link is ready at `now` ([`monotonic_ms`]): what it is doing
/// if so, why not otherwise. With `max_lag`, a link whose lag in seconds is
/// over it (or unknown while behind) is not ready either.
pub fn judge(stats: &LinkStats, now: u64, max_lag: Option<&MaxLag>) -> Result<String, String> {
    if stats.stopped.load(Ordering::Relaxed) {
        return Err(format!(
            "stopped for good (an operator must act): {}",
            stats.last_error().unwrap_or_default()
        ));
    }
    if !stats.streaming.load(Ordering::Relaxed) {
        return Err(match stats.last_error() {
            Some(e) => format!("not streaming: restarting after: {e}"),
            None => "not streaming yet: connecting to the source".to_string(),
        });
    }
    let silence = match stats.source_heard_ms.load(Ordering::Relaxed) {
        0 => return Err("streaming, but the source has not spoken yet".to_string()),
        at => Duration::from_millis(now.saturating_sub(at)),
    };
    if silence > READY_SILENCE {
        return Err(format!(
            "streaming, but the source has said nothing for {:.1}s (more than {}s): it may be paused or cut off",
            silence.as_secs_f64(),
            READY_SILENCE.as_secs()
        ));
    }
    let lag_bytes = stats.lag_bytes();
    let lag = stats.lag_seconds();
    if let Some(m) = max_lag {
        let Some(lag_seconds) = lag else {
            return Err(format!(
                "behind by {lag_bytes} bytes with no transaction applied yet: its lag in seconds is unknown (max_lag={})",
                m.written
            ));
        };
        if lag_seconds > m.bound.as_secs_f64() {
            return Err(format!(
                "lag {lag_seconds:.3}s ({lag_bytes} bytes) is over max_lag={}",
                m.written
            ));
        }
    }
    let lag = lag.map_or("unknown".to_string(), |l| format!("{l:.3}s"));
    Ok(format!(
        "streaming, the source spoke {:.1}s ago, lag {lag} ({lag_bytes} bytes)",
        silence.as_secs_f64()
    ))
}

/// Serves the admin endpoints on `listener` until `stop`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "Admin accept failed.");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let a = admin.answer(req.method(), req.uri());
                let mut resp = Response::new(Full::new(Bytes::from(a.body)));
                *resp.status_mut() = a.status;
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(a.content_type),
                );
                if a.status == StatusCode::METHOD_NOT_ALLOWED {
                    resp.headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                }
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::lint;

    fn get(admin: &Admin, uri: &str) -> Answer {
        admin.answer(&Method::GET, &uri.parse().expect("uri"))
    }

    /// A link streaming and just heard from, caught up.
    fn streaming() -> Arc<LinkStats> {
        let s = LinkStats::default();
        s.streaming.store(true, Ordering::Relaxed);
        s.heard_from_source();
        Arc::new(s)
    }

    fn admin(links: &[(&str, Arc<LinkStats>)]) -> Admin {
        Admin::new(
            links
                .iter()
                .map(|(n, s)| (n.to_string(), s.clone()))
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn metrics_healthz_and_unknown_paths() {
        let a = admin(&[("beijing->shanghai", streaming())]);
        let m = get(&a, "/metrics");
        assert_eq!(m.status, StatusCode::OK);
        lint::check_content_type(m.content_type).unwrap();
        lint::check(&m.body).unwrap_or_else(|e| panic!("{e}"));
        let h = get(&a, "/healthz");
        assert_eq!((h.status, h.body.as_str()), (StatusCode::OK, "ok\n"));
        let n = get(&a, "/");
        assert_eq!(n.status, StatusCode::NOT_FOUND);
        for endpoint in ["/metrics", "/healthz", "/readyz", "max_lag"] {
            assert!(n.body.contains(endpoint), "{}", n.body);
        }
        assert_eq!(get(&a, "/metricz").status, StatusCode::NOT_FOUND);
        let p = a.answer(&Method::POST, &"/readyz".parse().unwrap());
        assert_eq!(p.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            a.answer(&Method::HEAD, &"/healthz".parse().unwrap()).status,
            StatusCode::OK
        );
    }

    #[test]
    fn ready_only_when_every_link_streams_and_was_heard_from() {
        let ok = streaming();
        let idle = Arc::new(LinkStats::default());
        let a = admin(&[
            ("beijing->shanghai", ok.clone()),
            ("guangzhou->shanghai", idle.clone()),
        ]);
        let r = get(&a, "/readyz");
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        assert!(
            r.body.starts_with("not ready: 1 of 2 links\n"),
            "{}",
            r.body
        );
        assert!(
            r.body
                .contains("guangzhou->shanghai: not streaming yet: connecting to the source"),
            "{}",
            r.body
        );
        assert!(!r.body.contains("beijing->shanghai"), "{}", r.body);

        *idle.last_error.lock().unwrap() =
            Some("link guangzhou->shanghai: source: timed out".into());
        let r = get(&a, "/readyz");
        assert!(
            r.body.contains(
                "not streaming: restarting after: link guangzhou->shanghai: source: timed out"
            ),
            "{}",
            r.body
        );

        idle.streaming.store(true, Ordering::Relaxed);
        idle.heard_from_source();
        let r = get(&a, "/readyz");
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(r.body.starts_with("ready\n"), "{}", r.body);
        assert!(
            r.body.contains("beijing->shanghai: streaming"),
            "{}",
            r.body
        );

        idle.stopped.store(true, Ordering::Relaxed);
        let r = get(&a, "/readyz");
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.body.contains("stopped for good"), "{}", r.body);
    }

    #[test]
    fn a_silent_source_makes_a_streaming_link_not_ready() {
        let s = streaming();
        let heard = s.source_heard_ms.load(Ordering::Relaxed);
        let just = judge(&s, heard + READY_SILENCE.as_millis() as u64, None);
        assert!(just.is_ok(), "{just:?}");
        let later = judge(&s, heard + READY_SILENCE.as_millis() as u64 + 1, None).unwrap_err();
        assert!(
            later.contains("the source has said nothing for 10.0s"),
            "{later}"
        );
        s.source_heard_ms.store(0, Ordering::Relaxed);
        assert!(judge(&s, heard, None).is_err());
    }

    #[test]
    fn max_lag_bounds_each_link() {
        let s = streaming();
        let a = admin(&[("beijing->shanghai", s.clone())]);
        // Caught up: lag 0 meets any bound.
        assert_eq!(get(&a, "/readyz?max_lag=1ms").status, StatusCode::OK);
        // Behind, with the last applied commit 30 s old.
        s.source_wal_end.store(9000, Ordering::Relaxed);
        s.caught_up_lsn.store(1000, Ordering::Relaxed);
        let old = std::time::SystemTime::now() - Duration::from_secs(30);
        let pg_epoch = std::time::UNIX_EPOCH + Duration::from_secs(946_684_800);
        let us = old.duration_since(pg_epoch).unwrap().as_micros() as i64;
        s.last_commit_time_us.store(us, Ordering::Relaxed);
        assert_eq!(get(&a, "/readyz").status, StatusCode::OK, "no bound: ready");
        assert_eq!(get(&a, "/readyz?max_lag=1m").status, StatusCode::OK);
        let r = get(&a, "/readyz?max_lag=1s");
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        assert!(r.body.contains("beijing->shanghai: lag 30."), "{}", r.body);
        assert!(
            r.body.contains("(8000 bytes) is over max_lag=1s"),
            "{}",
            r.body
        );
        assert_eq!(
            get(&a, "/readyz?max_lag=500ms").status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Behind with nothing applied yet: the lag in seconds is unknown.
        s.last_commit_time_us.store(0, Ordering::Relaxed);
        let r = get(&a, "/readyz?max_lag=1h");
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        assert!(r.body.contains("unknown"), "{}", r.body);
        // ...and the metric says so (not the age of the year 2000).
        assert_eq!(s.lag_seconds(), None);
        let m = get(&a, "/metrics").body;
        assert!(
            m.contains("ezone_replicator_lag_seconds{link=\"beijing->shanghai\"} NaN"),
            "{m}"
        );
    }

    #[test]
    fn the_ready_query_is_checked() {
        assert_eq!(parse_ready_query(None), Ok(None));
        assert_eq!(parse_ready_query(Some("")), Ok(None));
        for (q, ms) in [
            ("max_lag=1s", 1000),
            ("max_lag=250ms", 250),
            ("max_lag=2m", 120_000),
            ("max_lag=1s+500ms", 1500),
            ("max_lag=1s%20500ms", 1500),
        ] {
            let got = parse_ready_query(Some(q)).unwrap().unwrap();
            assert_eq!(got.bound, Duration::from_millis(ms), "{q}");
        }
        let a = admin(&[]);
        for (q, says) in [
            ("max_lag=fast", "max_lag=\"fast\" is not a duration"),
            ("max_lag=10", "max_lag=\"10\" is not a duration"),
            ("max_lag=", "max_lag=\"\" is not a duration"),
            ("max_lag=1s&max_lag=2s", "more than once"),
            ("lag=1s", "unknown parameter \"lag\""),
            ("max_lag=%FF", "not UTF-8"),
        ] {
            let r = get(&a, &format!("/readyz?{q}"));
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.body);
            assert!(r.body.contains(says), "{q}: {}", r.body);
        }
        let r = get(&a, "/readyz");
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.contains("no links"), "{}", r.body);
    }
}
