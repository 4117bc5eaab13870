//! The admin HTTP API server (hyper 1, HTTP/1.1, JSON): lists links, adds
//! them and changes their faults at run time, so a test harness or an
//! operator in another process can drive the proxy. The routes and bodies are
//! in [`api`](super::api).
//!
//! Each admin connection is its own task under the proxy's stop signal; on
//! stop, idle connections close at once and a request in flight is finished
//! (bounded by [`GRACEFUL_TIMEOUT`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::api::{percent_decode, ErrorBody, PartitionRequest, SetToxicsRequest};
use super::config::LinkSpec;
use super::error::ProxyError;
use super::fault_proxy::Core;
use super::link::{validate_toxics, LinkHandle};
use super::tasks::TaskToken;

/// The largest request body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long a request in flight may take to finish once the proxy stops.
const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the accept loop waits after a failed accept.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The routes, for the error that answers an unknown one.
const ROUTES: &str = "GET /links, POST /links, GET /links/NAME, POST /links/NAME/toxics, \
                      POST /links/NAME/partition, POST /links/NAME/heal, POST /links/NAME/reset \
                      (NAME percent-encoded)";

/// Binds `addr` and serves the admin API until the proxy stops.
pub(crate) async fn serve(core: Arc<Core>, addr: SocketAddr) -> Result<SocketAddr, ProxyError> {
    let task = core.task_token()?;
    let bind_error = |source| ProxyError::Bind {
        what: "the admin API".into(),
        addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    info!(admin = %bound, "Admin API listening.");
    tokio::spawn(accept_loop(core, listener, task));
    Ok(bound)
}

async fn accept_loop(core: Arc<Core>, listener: TcpListener, task: TaskToken) {
    let stop = core.stop_signal();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(serve_connection(
                    Arc::clone(&core),
                    stream,
                    peer,
                    stop.clone(),
                    task.clone(),
                ));
            }
            Err(error) => {
                warn!(%error, "Admin API accept failed; retrying shortly.");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_RETRY_DELAY) => {}
                }
            }
        }
    }
    debug!("Admin API listener closed.");
}

async fn serve_connection(
    core: Arc<Core>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
    _task: TaskToken,
) {
    let service = service_fn(move |req| {
        let core = Arc::clone(&core);
        async move { Ok::<_, Infallible>(handle(&core, req).await) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(GRACEFUL_TIMEOUT, conn.as_mut()).await {
                Ok(served) => served,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(error) = served {
        debug!(%peer, %error, "Admin connection ended with an error.");
    }
}

/// An error answer: status and message.
struct Failure {
    status: StatusCode,
    message: String,
}

impl From<ProxyError> for Failure {
    fn from(e: ProxyError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Failure {
            status,
            message: e.to_string(),
        }
    }
}

fn failure(status: StatusCode, message: impl Into<String>) -> Failure {
    Failure {
        status,
        message: message.into(),
    }
}

async fn handle(core: &Core, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let answer = route(core, req).await;
    match answer {
        Ok((status, body)) => {
            debug!(%method, %path, status = status.as_u16(), "Admin request served.");
            respond(status, body)
        }
        Err(f) => {
            debug!(%method, %path, status = f.status.as_u16(), error = %f.message, "Admin request refused.");
            let body = serde_json::to_vec(&ErrorBody { error: f.message }).unwrap_or_default();
            respond(f.status, Bytes::from(body))
        }
    }
}

fn respond(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<(StatusCode, Bytes), Failure> {
    serde_json::to_vec(value)
        .map(|body| (status, Bytes::from(body)))
        .map_err(|e| {
            failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the answer: {e}"),
            )
        })
}

async fn route(core: &Core, req: Request<Incoming>) -> Result<(StatusCode, Bytes), Failure> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["links"] | ["links", ""] => match method {
            Method::GET => json(StatusCode::OK, &core.links()),
            Method::POST => {
                let spec: LinkSpec = parse_body(req, "POST /links", "a LinkSpec such as {\"name\": \"a->b:pg\", \"listen\": \"127.0.0.1:0\", \"upstream\": \"127.0.0.1:5432\"}").await?;
                let handle = core.add_link(spec).await?;
                json(StatusCode::CREATED, &handle.status())
            }
            _ => Err(wrong_method(&method, &path, "GET, POST")),
        },
        ["links", name] => {
            let link = find(core, name)?;
            match method {
                Method::GET => json(StatusCode::OK, &link.status()),
                _ => Err(wrong_method(&method, &path, "GET")),
            }
        }
        ["links", name, action] => {
            let link = find(core, name)?;
            if method != Method::POST {
                return Err(wrong_method(&method, &path, "POST"));
            }
            match *action {
                "toxics" => {
                    let what = "POST /links/NAME/toxics";
                    let request: SetToxicsRequest = parse_body(req, what, "{\"direction\": \"upstream\"|\"downstream\"|\"both\", \"toxics\": {\"latency\": \"15ms\", ...}}").await?;
                    for &dir in request.direction.each() {
                        validate_toxics(link.name(), dir, &request.toxics)?;
                    }
                    for &dir in request.direction.each() {
                        link.set_toxics(dir, request.toxics.clone());
                    }
                }
                "partition" => {
                    let bytes = read_body(req).await?;
                    let request: PartitionRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
                        PartitionRequest::default()
                    } else {
                        serde_json::from_slice(&bytes).map_err(|e| {
                            bad_json(
                                "POST /links/NAME/partition",
                                &e,
                                "{\"direction\": \"upstream\"|\"downstream\"|\"both\"} or no body",
                            )
                        })?
                    };
                    for &dir in request.direction.each() {
                        link.partition_one_way(dir);
                    }
                }
                "heal" => link.heal(),
                "reset" => link.reset(),
                other => {
                    return Err(failure(
                        StatusCode::NOT_FOUND,
                        format!(
                        "no action {other:?} on a link; actions are toxics, partition, heal, reset"
                    ),
                    ))
                }
            }
            json(StatusCode::OK, &link.status())
        }
        _ => Err(failure(
            StatusCode::NOT_FOUND,
            format!("no route {method} {path}; routes: {ROUTES}"),
        )),
    }
}

/// The link named by a (percent-encoded) path segment.
fn find(core: &Core, segment: &str) -> Result<LinkHandle, Failure> {
    let name = percent_decode(segment).map_err(|e| {
        failure(
            StatusCode::BAD_REQUEST,
            format!("bad link name in the path: {e}"),
        )
    })?;
    Ok(core.link_or_error(&name)?)
}

fn wrong_method(method: &Method, path: &str, allowed: &str) -> Failure {
    failure(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {path}; use {allowed}"),
    )
}

fn bad_json(what: &str, e: &serde_json::Error, expected: &str) -> Failure {
    failure(
        StatusCode::BAD_REQUEST,
        format!("invalid JSON body for {what}: {e}; expected {expected}"),
    )
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Failure> {
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(failure(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body (at most {MAX_BODY_BYTES} bytes): {e}"),
        )),
    }
}

async fn parse_body<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    what: &str,
    expected: &str,
) -> Result<T, Failure> {
    let bytes = read_body(req).await?;
    serde_json::from_slice(&bytes).map_err(|e| bad_json(what, &e, expected))
}
