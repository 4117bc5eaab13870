//! The HTTP API: requests routed to handlers, inputs parsed and checked,
//! outcomes mapped to statuses.
//!
//! | request | answer |
//! |---|---|
//! | `POST /orders` (`x-city-id`, router headers, `{"id","user","item","amount_cents"}`) | 201 new row, 200 same row again (a retry), 409 id taken by other values |
//! | `PATCH /orders/{id}` (`x-city-id`, router headers, `{"status"}`) | 200 row, 404, 409 other city |
//! | `GET /orders/{id}` | 200 row, 404 |
//! | `GET /healthz` | 200 `ok` while the process runs (touches nothing) |
//! | `GET /readyz` | 200 when the pool runs `SELECT 1` within [`READY_TIMEOUT`], else 503 saying why |
//! | `GET /metrics` | OpenMetrics text |
//!
//! Writes need `X-Ezone-Shard` and `X-Ezone-Epoch` (set by the router): a
//! write without them did not come through a router and gets 400. A write
//! whose `X-Ezone-Site` names another site was sent to the wrong site's
//! service (421). Database outcomes map by what the client should do: the
//! fence refused (503 + `Retry-After`, the router will know the new home),
//! unmapped city (422), database unreachable (503 + `Retry-After`; retrying
//! the same id is safe), anything else 500. Every answer carries
//! `X-Ezone-Served-By: <site>`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use serde_json::json;

use crate::db::{Db, DbError, NewOrder, Placed, Stamp, Updated};
use crate::metrics::{Metrics, Route};

pub const X_CITY_ID: HeaderName = HeaderName::from_static("x-city-id");
/// The router's stamp (shard, epoch, site) and the fenced-write mark the
/// router acts on (set on a `503` whose write the database fence refused:
/// nothing of it was committed, so the router may send it again to the
/// shard's home once the move it ran into has landed): the names are the
/// router's, defined once.
pub use ezone_router::headers::{
    X_EZONE_EPOCH, X_EZONE_FENCED, X_EZONE_SERVED_BY, X_EZONE_SHARD, X_EZONE_SITE,
};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest order id (ids are `[A-Za-z0-9._:-]`).
pub const MAX_ID_LEN: usize = 128;
/// The longest city id (the router's key limit).
pub const MAX_CITY_LEN: usize = 128;
/// The longest user or item.
pub const MAX_TEXT_LEN: usize = 256;
/// The longest status.
pub const MAX_STATUS_LEN: usize = 64;
/// `Retry-After` on retryable refusals, in seconds.
pub const RETRY_AFTER_SECS: u32 = 1;
/// How long `/readyz` waits for `SELECT 1` (a pooled connection included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// Every endpoint, for a 404.
const ENDPOINTS: &str =
    "POST /orders, GET|PATCH /orders/{id}, GET /healthz, GET /readyz, GET /metrics (docs/orders.md)";

/// The response body type.
pub type Body = Full<Bytes>;

/// A request refused before (or instead of) touching the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: StatusCode,
    pub error: &'static str,
    pub detail: String,
    pub retry_after: bool,
}

fn reject(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Reject {
    Reject {
        status,
        error,
        detail: detail.into(),
        retry_after: false,
    }
}

/// How a database failure is answered (pure).
pub fn db_reject(e: &DbError) -> Reject {
    let retry = |status, error, detail: &String| Reject {
        status,
        error,
        detail: detail.clone(),
        retry_after: true,
    };
    match e {
        DbError::Fenced { detail } => retry(StatusCode::SERVICE_UNAVAILABLE, "fenced", detail),
        DbError::ShardMismatch { detail } => {
            retry(StatusCode::SERVICE_UNAVAILABLE, "shard_mismatch", detail)
        }
        DbError::Unavailable { detail } => retry(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            detail,
        ),
        DbError::Unmapped { detail } => reject(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unmapped_city",
            detail.clone(),
        ),
        DbError::Internal { detail } => reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            "database_error",
            detail.clone(),
        ),
    }
}

/// `POST /orders`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceBody {
    id: String,
    user: String,
    item: String,
    amount_cents: i64,
}

/// `PATCH /orders/{id}`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: String,
}

/// True for an order id: 1 to 128 of `A-Z a-z 0-9 . _ : -`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn check_text(field: &'static str, v: &str, max: usize) -> Result<(), Reject> {
    if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{field} must be 1 to {max} characters, without control characters"),
        ));
    }
    Ok(())
}

fn bad_json(e: serde_json::Error) -> Reject {
    reject(
        StatusCode::BAD_REQUEST,
        "bad_json",
        format!("the body is not the JSON this endpoint takes: {e}"),
    )
}

/// Parses and checks `POST /orders`'s body for `city` (pure; any bytes are
/// answered, none panic).
pub fn parse_new_order(body: &[u8], city: &str) -> Result<NewOrder, Reject> {
    let b: PlaceBody = serde_json::from_slice(body).map_err(bad_json)?;
    if !valid_id(&b.id) {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("id must be 1 to {MAX_ID_LEN} of A-Z a-z 0-9 . _ : -"),
        ));
    }
    check_text("user", &b.user, MAX_TEXT_LEN)?;
    check_text("item", &b.item, MAX_TEXT_LEN)?;
    if b.amount_cents < 0 {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "amount_cents must not be negative",
        ));
    }
    Ok(NewOrder {
        id: b.id,
        city: city.to_string(),
        user: b.user,
        item: b.item,
        amount_cents: b.amount_cents,
    })
}

/// Parses and checks `PATCH /orders/{id}`'s body (pure).
pub fn parse_status(body: &[u8]) -> Result<String, Reject> {
    let b: StatusBody = serde_json::from_slice(body).map_err(bad_json)?;
    check_text("status", &b.status, MAX_STATUS_LEN)?;
    Ok(b.status)
}

/// The shard key: `x-city-id`.
pub fn city_of(headers: &HeaderMap) -> Result<String, Reject> {
    let v = headers
        .get(&X_CITY_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if v.is_empty() || v.len() > MAX_CITY_LEN {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "missing_city",
            format!("send the city id (1 to {MAX_CITY_LEN} printable characters) in x-city-id"),
        ));
    }
    Ok(v.to_string())
}

/// The router's stamp: `X-Ezone-Shard` and `X-Ezone-Epoch`, required on writes.
pub fn stamp_of(headers: &HeaderMap) -> Result<Stamp, Reject> {
    fn num<T: std::str::FromStr>(headers: &HeaderMap, name: &HeaderName) -> Option<T> {
        let mut all = headers.get_all(name).iter();
        let v = all.next()?;
        if all.next().is_some() {
            return None;
        }
        v.to_str().ok()?.trim().parse().ok()
    }
    let shard: Option<i32> =
        num::<u32>(headers, &X_EZONE_SHARD).and_then(|s| i32::try_from(s).ok());
    let epoch: Option<i64> =
        num::<u64>(headers, &X_EZONE_EPOCH).and_then(|e| i64::try_from(e).ok());
    match (shard, epoch) {
        (Some(shard), Some(epoch)) => Ok(Stamp { shard, epoch }),
        _ => Err(reject(
            StatusCode::BAD_REQUEST,
            "not_routed",
            "send writes through an ezone router (X-Ezone-Shard and X-Ezone-Epoch are missing or garbled)",
        )),
    }
}

/// What a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Orders,
    Order(String),
    Healthz,
    Readyz,
    Metrics,
    Unknown,
}

/// Maps a path to what it names (pure). An order id is percent-decoded.
pub fn target_of(path: &str) -> Target {
    match path {
        "/orders" | "/orders/" => Target::Orders,
        "/healthz" => Target::Healthz,
        "/readyz" => Target::Readyz,
        "/metrics" => Target::Metrics,
        p => match p.strip_prefix("/orders/") {
            Some(seg) if !seg.is_empty() && !seg.contains('/') => {
                match percent_encoding::percent_decode_str(seg).decode_utf8() {
                    Ok(id) => Target::Order(id.into_owned()),
                    Err(_) => Target::Unknown,
                }
            }
            _ => Target::Unknown,
        },
    }
}

/// The order service's request handler.
pub struct App {
    db: Db,
    metrics: Metrics,
    site: String,
    served_by: HeaderValue,
}

impl App {
    pub fn new(db: Db, metrics: Metrics) -> App {
        let site = db.site().to_string();
        // The config's site is validated as [a-z0-9_-]: always a header value.
        let served_by =
            HeaderValue::from_str(&site).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        App {
            db,
            metrics,
            site,
            served_by,
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Answers one request. Never panics on input.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let (route, answer) = self.route(req).await;
        let mut resp = match answer {
            Ok(r) => r,
            Err(r) => self.refusal(&r),
        };
        resp.headers_mut()
            .insert(X_EZONE_SERVED_BY, self.served_by.clone());
        self.metrics
            .observe(route, resp.status().as_u16(), started.elapsed());
        resp
    }

    async fn route<B>(&self, req: Request<B>) -> (Route, Result<Response<Body>, Reject>)
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let target = target_of(req.uri().path());
        let method = req.method().clone();
        match (target, method) {
            (Target::Orders, Method::POST) => (Route::place_order, self.place(req).await),
            (Target::Order(id), Method::PATCH) => {
                (Route::update_order, self.update(&id, req).await)
            }
            (Target::Order(id), Method::GET | Method::HEAD) => {
                (Route::get_order, self.get(&id).await)
            }
            (Target::Healthz, Method::GET | Method::HEAD) => (
                Route::healthz,
                Ok(text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")),
            ),
            (Target::Readyz, Method::GET | Method::HEAD) => {
                (Route::readyz, Ok(self.readyz().await))
            }
            (Target::Metrics, Method::GET) => (
                Route::metrics,
                Ok(text(
                    StatusCode::OK,
                    crate::metrics::CONTENT_TYPE,
                    self.metrics.encode(),
                )),
            ),
            (Target::Orders, _) => (Route::other, Err(not_allowed("POST"))),
            (Target::Order(_), _) => (Route::other, Err(not_allowed("GET, HEAD, PATCH"))),
            (Target::Healthz | Target::Readyz, _) => (Route::other, Err(not_allowed("GET, HEAD"))),
            (Target::Metrics, _) => (Route::other, Err(not_allowed("GET"))),
            (Target::Unknown, _) => (
                Route::other,
                Err(reject(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no such endpoint: {ENDPOINTS}"),
                )),
            ),
        }
    }

    /// `/readyz`: ready when the pool runs `SELECT 1` within
    /// [`READY_TIMEOUT`] (not counted in `db_errors_total`: probes are not
    /// requests).
    async fn readyz(&self) -> Response<Body> {
        const TEXT: &str = "text/plain; charset=utf-8";
        let started = Instant::now();
        match tokio::time::timeout(READY_TIMEOUT, self.db.ping()).await {
            Ok(Ok(())) => text(
                StatusCode::OK,
                TEXT,
                format!(
                    "ready: Postgres ran SELECT 1 in {:.1} ms\n",
                    started.elapsed().as_secs_f64() * 1000.0
                ),
            ),
            Ok(Err(e)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: Postgres cannot run SELECT 1: {e}\n"),
            ),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!(
                    "not ready: Postgres did not run SELECT 1 within {} ms\n",
                    READY_TIMEOUT.as_millis()
                ),
            ),
        }
    }

    /// The checks every write shares: city, router stamp, right site.
    fn write_headers(&self, headers: &HeaderMap) -> Result<(String, Stamp), Reject> {
        let stamp = stamp_of(headers)?;
        let city = city_of(headers)?;
        if let Some(site) = headers.get(&X_EZONE_SITE) {
            if site.as_bytes() != self.site.as_bytes() {
                return Err(reject(
                    StatusCode::MISDIRECTED_REQUEST,
                    "misdirected",
                    format!(
                        "the router sent this write for site {:?} to the order service of site {}",
                        String::from_utf8_lossy(site.as_bytes()),
                        self.site
                    ),
                ));
            }
        }
        Ok((city, stamp))
    }

    async fn place<B>(&self, req: Request<B>) -> Result<Response<Body>, Reject>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (city, stamp) = self.write_headers(req.headers())?;
        let body = read_body(req).await?;
        let order = parse_new_order(&body, &city)?;
        match self.db.place(&order, stamp).await {
            Ok(Placed::Created(row)) => Ok(row_json(StatusCode::CREATED, &row)),
            Ok(Placed::Existing(row)) => Ok(row_json(StatusCode::OK, &row)),
            Ok(Placed::Conflict(row)) => Ok(json_response(
                StatusCode::CONFLICT,
                &json!({
                    "error": "id_conflict",
                    "detail": format!("order {} exists with other values", row.id),
                    "existing": row,
                }),
            )),
            Err(e) => Err(self.db_failed("place", &order.id, &e)),
        }
    }

    async fn update<B>(&self, id: &str, req: Request<B>) -> Result<Response<Body>, Reject>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (city, stamp) = self.write_headers(req.headers())?;
        if !valid_id(id) {
            return Err(no_order(id));
        }
        let body = read_body(req).await?;
        let status = parse_status(&body)?;
        match self.db.set_status(id, &city, &status, stamp).await {
            Ok(Updated::Updated(row)) => Ok(row_json(StatusCode::OK, &row)),
            Ok(Updated::Missing) => Err(no_order(id)),
            Ok(Updated::OtherCity(row)) => Err(reject(
                StatusCode::CONFLICT,
                "city_mismatch",
                format!(
                    "order {id} belongs to city {:?}, not {city:?}: send x-city-id of the order",
                    row.city
                ),
            )),
            Err(e) => Err(self.db_failed("update", id, &e)),
        }
    }

    async fn get(&self, id: &str) -> Result<Response<Body>, Reject> {
        if !valid_id(id) {
            return Err(no_order(id));
        }
        match self.db.get(id).await {
            Ok(Some(row)) => Ok(row_json(StatusCode::OK, &row)),
            Ok(None) => Err(no_order(id)),
            Err(e) => Err(self.db_failed("get", id, &e)),
        }
    }

    fn db_failed(&self, op: &'static str, id: &str, e: &DbError) -> Reject {
        self.metrics.db_error(e);
        match e {
            DbError::Internal { .. } => {
                tracing::error!(site = %self.site, op, id, error = %e, "Database operation failed.")
            }
            // The fence refused the write (EZ001, or EZ003: the site's
            // lease lapsed).
            DbError::Fenced { .. } => self.fence_refused(op, id, e),
            DbError::Unavailable { detail } if detail.starts_with("ezone fence:") => {
                self.fence_refused(op, id, e)
            }
            // Postgres down, restarting or out of connections: a warning
            // at most every 5 s (every request fails the same way).
            DbError::Unavailable { .. } => {
                static WARNED: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
                if first_in(&WARNED, Duration::from_secs(5)) {
                    tracing::warn!(site = %self.site, op, id, error = %e, "Postgres is not serving this site's writes; requests get 503 until it does (further failures within 5 s are logged at debug).")
                } else {
                    tracing::debug!(site = %self.site, op, id, error = %e, "Database operation refused.")
                }
            }
            _ => {
                tracing::debug!(site = %self.site, op, id, error = %e, "Database operation refused.")
            }
        }
        db_reject(e)
    }

    /// Logs a refusal of the fence: a warning at most once a second (a
    /// router with a stale view, or a lapsed lease, refuses every write),
    /// the others at debug.
    fn fence_refused(&self, op: &'static str, id: &str, e: &DbError) {
        static WARNED: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
        if first_in(&WARNED, Duration::from_secs(1)) {
            tracing::warn!(site = %self.site, op, id, error = %e, "The database fence refused a write; the client may retry through a router (further refusals within a second are logged at debug).")
        } else {
            tracing::debug!(site = %self.site, op, id, error = %e, "Database operation refused.")
        }
    }

    fn refusal(&self, r: &Reject) -> Response<Body> {
        let mut resp = json_response(r.status, &json!({"error": r.error, "detail": r.detail}));
        if r.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        // Only the fence's refusal: the transaction rolled back before any
        // row was written. (A shard mismatch or an unavailable database may
        // be a router's or a network's doing and is not marked.)
        if r.error == "fenced" {
            resp.headers_mut()
                .insert(X_EZONE_FENCED, HeaderValue::from_static("1"));
        }
        if r.status == StatusCode::METHOD_NOT_ALLOWED {
            if let Ok(v) = HeaderValue::from_str(&r.detail) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
        }
        resp
    }
}

fn not_allowed(allow: &'static str) -> Reject {
    reject(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", allow)
}

fn no_order(id: &str) -> Reject {
    reject(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no order {id:?}"),
    )
}

/// Reads the whole body, at most [`MAX_BODY_BYTES`] (413 past it).
async fn read_body<B>(req: Request<B>) -> Result<Bytes, Reject>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = || {
        reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body may be at most {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(reject(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("reading the body failed: {e}"),
        )),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    text(status, "application/json", v.to_string())
}

fn row_json(status: StatusCode, row: &crate::db::Order) -> Response<Body> {
    match serde_json::to_vec(row) {
        Ok(b) => text(status, "application/json", b),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"error": "encoding", "detail": e.to_string()}),
        ),
    }
}

/// Whether this is the first call in `every` on `last` (and then it
/// counts from now): a warning repeated by every request is logged once a
/// period.
fn first_in(last: &std::sync::Mutex<Option<Instant>>, every: Duration) -> bool {
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    if last.is_none_or(|at| at.elapsed() >= every) {
        *last = Some(Instant::now());
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn db_failures_map_to_what_the_client_should_do() {
        let cases: &[(DbError, u16, &str, bool)] = &[
            (DbError::Fenced { detail: "d".into() }, 503, "fenced", true),
            (
                DbError::ShardMismatch { detail: "d".into() },
                503,
                "shard_mismatch",
                true,
            ),
            (
                DbError::Unavailable { detail: "d".into() },
                503,
                "database_unavailable",
                true,
            ),
            (
                DbError::Unmapped { detail: "d".into() },
                422,
                "unmapped_city",
                false,
            ),
            (
                DbError::Internal { detail: "d".into() },
                500,
                "database_error",
                false,
            ),
        ];
        for (e, status, error, retry) in cases {
            let r = db_reject(e);
            assert_eq!(
                (r.status.as_u16(), r.error, r.retry_after),
                (*status, *error, *retry),
                "{e}"
            );
            assert_eq!(r.detail, "d");
        }
    }

    #[test]
    fn sqlstate_to_status() {
        let status = |code| {
            db_reject(&crate::db::classify_sqlstate(code, "m"))
                .status
                .as_u16()
        };
        assert_eq!(status("EZ001"), 503);
        assert_eq!(status("EZ002"), 422);
        assert_eq!(status("57014"), 503);
        assert_eq!(status("08006"), 503);
        assert_eq!(status("23502"), 500);
    }

    #[test]
    fn router_headers_are_required_on_writes() {
        let ok = headers(&[("x-ezone-shard", "3"), ("x-ezone-epoch", "17")]);
        assert_eq!(
            stamp_of(&ok).expect("stamp"),
            Stamp {
                shard: 3,
                epoch: 17
            }
        );
        for bad in [
            headers(&[]),
            headers(&[("x-ezone-shard", "3")]),
            headers(&[("x-ezone-epoch", "3")]),
            headers(&[("x-ezone-shard", "three"), ("x-ezone-epoch", "1")]),
            headers(&[("x-ezone-shard", "-1"), ("x-ezone-epoch", "1")]),
            headers(&[("x-ezone-shard", "4294967295"), ("x-ezone-epoch", "1")]),
            headers(&[
                ("x-ezone-shard", "1"),
                ("x-ezone-epoch", "18446744073709551615"),
            ]),
            headers(&[
                ("x-ezone-shard", "1"),
                ("x-ezone-shard", "2"),
                ("x-ezone-epoch", "1"),
            ]),
        ] {
            let r = stamp_of(&bad).expect_err("refused");
            assert_eq!(r.status, StatusCode::BAD_REQUEST);
            assert!(r.detail.contains("send writes through an ezone router"));
        }
    }

    #[test]
    fn city_is_required() {
        assert_eq!(
            city_of(&headers(&[("x-city-id", "010")])).expect("city"),
            "010"
        );
        assert!(city_of(&headers(&[])).is_err());
        assert!(city_of(&headers(&[("x-city-id", " ")])).is_err());
        assert!(city_of(&headers(&[("x-city-id", &"9".repeat(129))])).is_err());
    }

    #[test]
    fn bodies_parse_and_are_checked() {
        let o = parse_new_order(
            br#"{"id":"o-1","user":"u1","item":"tea","amount_cents":250}"#,
            "010",
        )
        .expect("valid");
        assert_eq!(
            o,
            NewOrder {
                id: "o-1".into(),
                city: "010".into(),
                user: "u1".into(),
                item: "tea".into(),
                amount_cents: 250
            }
        );
        for bad in [
            &br#"{"id":"o-1","user":"u1","item":"tea"}"#[..],
            br#"{"id":"o-1","user":"u1","item":"tea","amount_cents":-1}"#,
            br#"{"id":"o/1","user":"u1","item":"tea","amount_cents":1}"#,
            br#"{"id":"","user":"u1","item":"tea","amount_cents":1}"#,
            br#"{"id":"a","user":"","item":"tea","amount_cents":1}"#,
            br#"{"id":"a","user":"u\n","item":"tea","amount_cents":1}"#,
            br#"{"id":"a","user":"u","item":"tea","amount_cents":1,"x":2}"#,
            br#"{"id":"a","user":"u","item":"tea","amount_cents":1.5}"#,
            b"not json",
            b"",
        ] {
            let r = parse_new_order(bad, "010").expect_err("refused");
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_status(br#"{"status":"shipped"}"#).expect("ok"),
            "shipped"
        );
        assert!(parse_status(br#"{"status":""}"#).is_err());
        assert!(parse_status(br#"{}"#).is_err());
    }

    #[test]
    fn paths_name_targets() {
        assert_eq!(target_of("/orders"), Target::Orders);
        assert_eq!(target_of("/orders/a-1"), Target::Order("a-1".into()));
        assert_eq!(target_of("/orders/a%2D1"), Target::Order("a-1".into()));
        assert_eq!(target_of("/orders/a/b"), Target::Unknown);
        assert_eq!(target_of("/orders/%FF"), Target::Unknown);
        assert_eq!(target_of("/healthz"), Target::Healthz);
        assert_eq!(target_of("/readyz"), Target::Readyz);
        assert_eq!(target_of("/metrics"), Target::Metrics);
        assert_eq!(target_of("/"), Target::Unknown);
    }

    proptest! {
        #[test]
        fn no_body_bytes_panic_the_parsers(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_new_order(&body, "010");
            let _ = parse_status(&body);
        }

        #[test]
        fn json_shaped_bodies_never_panic(
            id in ".{0,140}",
            user in ".{0,300}",
            item in ".{0,40}",
            amount in any::<i64>(),
        ) {
            let body = serde_json::to_vec(&json!({"id": id, "user": user, "item": item, "amount_cents": amount}))
                .expect("json");
            match parse_new_order(&body, "010") {
                Ok(o) => {
                    prop_assert!(valid_id(&o.id));
                    prop_assert!(o.amount_cents >= 0);
                }
                Err(r) => prop_assert_eq!(r.status, StatusCode::BAD_REQUEST),
            }
        }

        #[test]
        fn no_path_panics(path in "/[ -~]{0,64}") {
            let _ = target_of(&path);
        }
    }
}

/// The handler end to end, with a Postgres that refuses connections.
#[cfg(test)]
mod handler_tests {
    use super::*;
    use crate::config::OrdersConfig;

    fn app() -> App {
        // Port 9 on loopback: nothing listens, connections are refused at once.
        let cfg = OrdersConfig::from_toml(
            "site = \"beijing\"\npostgres = \"host=127.0.0.1 port=9 user=postgres dbname=ezone\"\nstatement_timeout_ms = 500\n",
        )
        .expect("config");
        App::new(Db::new(&cfg).expect("pool"), Metrics::new())
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request<Body> {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::from(body.to_string())))
            .expect("request")
    }

    async fn call(app: &App, r: Request<Body>) -> (u16, HeaderMap, serde_json::Value) {
        let resp = app.handle(r).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, headers, v)
    }

    const ROUTED: &[(&str, &str)] = &[
        ("x-city-id", "010"),
        ("x-ezone-shard", "1"),
        ("x-ezone-epoch", "1"),
    ];
    const ORDER: &str = r#"{"id":"o-1","user":"u","item":"tea","amount_cents":1}"#;

    #[tokio::test]
    async fn answers_carry_the_site_and_map_failures() {
        let app = app();
        let (s, h, _) = call(&app, req("GET", "/healthz", &[], "")).await;
        assert_eq!(s, 200);
        assert_eq!(h.get("x-ezone-served-by").expect("served by"), "beijing");

        let (s, _, v) = call(&app, req("POST", "/orders", &[("x-city-id", "010")], ORDER)).await;
        assert_eq!((s, v["error"].as_str()), (400, Some("not_routed")));
        assert!(v["detail"]
            .as_str()
            .unwrap_or("")
            .contains("send writes through an ezone router"));

        let (s, _, v) = call(
            &app,
            req(
                "POST",
                "/orders",
                &[("x-ezone-shard", "1"), ("x-ezone-epoch", "1")],
                ORDER,
            ),
        )
        .await;
        assert_eq!((s, v["error"].as_str()), (400, Some("missing_city")));

        let mut misdirected = ROUTED.to_vec();
        misdirected.push(("x-ezone-site", "shanghai"));
        let (s, _, _) = call(&app, req("POST", "/orders", &misdirected, ORDER)).await;
        assert_eq!(s, 421);

        let (s, _, v) = call(&app, req("POST", "/orders", ROUTED, "{")).await;
        assert_eq!((s, v["error"].as_str()), (400, Some("bad_json")));

        let big = format!(
            r#"{{"id":"o-1","user":"{}","item":"tea","amount_cents":1}}"#,
            "u".repeat(MAX_BODY_BYTES)
        );
        let (s, _, _) = call(&app, req("POST", "/orders", ROUTED, &big)).await;
        assert_eq!(s, 413);

        let (s, h, v) = call(&app, req("POST", "/orders", ROUTED, ORDER)).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (503, Some("database_unavailable"))
        );
        assert_eq!(h.get("retry-after").expect("retry-after"), "1");
        assert_eq!(h.get("x-ezone-served-by").expect("served by"), "beijing");

        let (s, _, _) = call(&app, req("GET", "/orders/o-1", &[], "")).await;
        assert_eq!(s, 503);
        let (s, _, _) = call(&app, req("GET", "/orders/a%20b", &[], "")).await;
        assert_eq!(s, 404, "an invalid id is simply not there");
        let (s, h, _) = call(&app, req("DELETE", "/orders/o-1", &[], "")).await;
        assert_eq!(s, 405);
        assert_eq!(h.get("allow").expect("allow"), "GET, HEAD, PATCH");
        let (s, _, v) = call(&app, req("GET", "/nope", &[], "")).await;
        assert_eq!(s, 404);
        for endpoint in ["/orders", "/healthz", "/readyz", "/metrics"] {
            assert!(v["detail"].as_str().unwrap_or("").contains(endpoint), "{v}");
        }

        let text = app.metrics().encode();
        assert!(
            text.contains("ezone_orders_db_errors_total{kind=\"unavailable\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("route=\"place_order\",status=\"503\""),
            "{text}"
        );
    }

    async fn raw(app: &App, r: Request<Body>) -> (u16, HeaderMap, String) {
        let resp = app.handle(r).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_needs_the_database_healthz_does_not() {
        let app = app();
        let (s, _, body) = raw(&app, req("GET", "/healthz", &[], "")).await;
        assert_eq!((s, body.as_str()), (200, "ok\n"));
        let (s, h, body) = raw(&app, req("GET", "/readyz", &[], "")).await;
        assert_eq!(s, 503, "{body}");
        assert!(
            body.starts_with("not ready: Postgres cannot run SELECT 1: "),
            "{body}"
        );
        assert_eq!(h["content-type"], "text/plain; charset=utf-8");
        assert_eq!(h["x-ezone-served-by"], "beijing");
        let (s, h, _) = raw(&app, req("POST", "/readyz", &[], "")).await;
        assert_eq!(
            (s, &h["allow"]),
            (405, &HeaderValue::from_static("GET, HEAD"))
        );

        let (s, h, body) = raw(&app, req("GET", "/metrics", &[], "")).await;
        assert_eq!(s, 200);
        let ct = h["content-type"].to_str().expect("content type");
        ezone_replicator::metrics::lint::check_content_type(ct).expect("content type");
        let e = ezone_replicator::metrics::lint::check(&body).unwrap_or_else(|e| panic!("{e}"));
        // The probe is counted as a request, not as a database error.
        assert_eq!(
            e.value(
                "ezone_orders_requests_total",
                &[("route", "readyz"), ("status", "503")]
            ),
            Some(1.0)
        );
        assert_eq!(e.value("ezone_orders_db_errors_total", &[]), None);
    }

    #[test]
    fn a_repeated_warning_is_logged_once_a_period() {
        let slot = std::sync::Mutex::new(None);
        assert!(first_in(&slot, Duration::from_secs(60)));
        assert!(!first_in(&slot, Duration::from_secs(60)));
        assert!(first_in(&slot, Duration::ZERO));
    }
}
