//! A small typed client of the admin HTTP API, for `ezone chaos proxy` and
//! for harnesses that drive a proxy running in another process.
//!
//! One HTTP/1.1 connection per request (hyper's low-level client): admin
//! calls are rare, and a fresh connection keeps the client stateless.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;

use super::api::{link_path, Directions, ErrorBody, PartitionRequest, SetToxicsRequest};
use super::config::{LinkSpec, Toxics};
use super::link::LinkStatus;
use super::ProxyError;

/// How long one admin request may take, connect included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of one proxy's admin API.
#[derive(Debug, Clone, Copy)]
pub struct AdminClient {
    addr: SocketAddr,
}

impl AdminClient {
    /// A client of the admin API at `addr`; nothing is connected yet.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// `GET /links`.
    pub async fn links(&self) -> Result<Vec<LinkStatus>, ProxyError> {
        self.call(Method::GET, "/links", None::<&()>).await
    }

    /// `GET /links/NAME`.
    pub async fn link(&self, name: &str) -> Result<LinkStatus, ProxyError> {
        self.call(Method::GET, &link_path(name, None), None::<&()>)
            .await
    }

    /// `POST /links`.
    pub async fn add_link(&self, spec: &LinkSpec) -> Result<LinkStatus, ProxyError> {
        self.call(Method::POST, "/links", Some(spec)).await
    }

    /// `POST /links/NAME/toxics`: replaces the toxics of `direction`.
    pub async fn set_toxics(
        &self,
        name: &str,
        direction: Directions,
        toxics: &Toxics,
    ) -> Result<LinkStatus, ProxyError> {
        let body = SetToxicsRequest {
            direction,
            toxics: toxics.clone(),
        };
        self.call(Method::POST, &link_path(name, Some("toxics")), Some(&body))
            .await
    }

    /// `POST /links/NAME/partition`.
    pub async fn partition(
        &self,
        name: &str,
        direction: Directions,
    ) -> Result<LinkStatus, ProxyError> {
        let body = PartitionRequest { direction };
        self.call(
            Method::POST,
            &link_path(name, Some("partition")),
            Some(&body),
        )
        .await
    }

    /// `POST /links/NAME/heal`.
    pub async fn heal(&self, name: &str) -> Result<LinkStatus, ProxyError> {
        self.call(Method::POST, &link_path(name, Some("heal")), None::<&()>)
            .await
    }

    /// `POST /links/NAME/reset`.
    pub async fn reset(&self, name: &str) -> Result<LinkStatus, ProxyError> {
        self.call(Method::POST, &link_path(name, Some("reset")), None::<&()>)
            .await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ProxyError> {
        let what = format!("{method} {path}");
        let body = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).map_err(|e| self.bad_answer(&what, e))?),
            None => Bytes::new(),
        };
        let (status, answer) =
            tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body))
                .await
                .map_err(|_| ProxyError::AdminUnreachable {
                    addr: self.addr,
                    reason: format!("{what} got no answer within {REQUEST_TIMEOUT:?}"),
                })??;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&answer)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&answer).into_owned());
            return Err(ProxyError::AdminRejected {
                addr: self.addr,
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&answer).map_err(|e| self.bad_answer(&what, e))
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ProxyError> {
        let unreachable = |reason: String| ProxyError::AdminUnreachable {
            addr: self.addr,
            reason,
        };
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| unreachable(format!("cannot build the request: {e}")))?;
        let answered = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            Ok((status, body.to_bytes()))
        }
        .await;
        drop(sender);
        driver.abort();
        answered
    }

    fn bad_answer(&self, what: &str, e: serde_json::Error) -> ProxyError {
        ProxyError::AdminBadAnswer {
            addr: self.addr,
            reason: format!("{what}: {e}"),
        }
    }
}
