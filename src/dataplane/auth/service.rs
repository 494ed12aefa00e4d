//! `auth.mode: service` (seed 001): what lb-node asks the auth service, how
//! it reads the answer, and the HTTP(S) call itself with its hard deadline.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The largest answer read from an auth service.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The most upstream addresses one answer may name.
const MAX_UPSTREAMS: usize = 64;

/// The protocol a request came in by, the query's `protocol`. An SMTP
/// login puts `Smtp` in its request head's extensions; absent, `Http`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthProtocol {
    #[default]
    Http,
    Smtp,
}

impl AuthProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Smtp => "smtp",
        }
    }
}

/// The body lb-node POSTs to `auth.url` (documented in docs/API.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthQuery<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub token: Option<&'a str>,
    pub uri: &'a str,
    /// `http` or `smtp`.
    pub protocol: &'static str,
    pub method: &'a str,
    pub length: Option<u64>,
    pub client_ip: IpAddr,
}

/// The client's credentials, as found in the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
}

impl Credentials {
    /// HTTP Basic, `Authorization: Bearer`, or the `token_header`.
    pub fn from_headers(headers: &HeaderMap, token_header: Option<&str>) -> Credentials {
        let mut c = Credentials::default();
        if let Some(auth) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            let (scheme, rest) = auth.trim().split_once(' ').unwrap_or((auth, ""));
            if scheme.eq_ignore_ascii_case("basic") {
                use base64::Engine as _;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(rest.trim())
                    .ok();
                if let Some((user, pass)) = decoded
                    .and_then(|d| String::from_utf8(d).ok())
                    .and_then(|s| {
                        s.split_once(':')
                            .map(|(u, p)| (u.to_string(), p.to_string()))
                    })
                {
                    c.username = Some(user);
                    c.password = Some(pass);
                }
            } else if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() {
                c.token = Some(rest.trim().to_string());
            }
        }
        if c.token.is_none() {
            if let Some(h) = token_header {
                c.token = headers
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
            }
        }
        c
    }

    pub fn is_empty(&self) -> bool {
        self.username.is_none() && self.password.is_none() && self.token.is_none()
    }
}

/// The service's answer to an allowed request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Grant {
    pub auth_token: String,
    /// `"10.241.0.25:3001,10.241.0.26:3002"`: where to send instead of the pool.
    #[serde(default, deserialize_with = "upstreams")]
    pub upstream: Vec<SocketAddr>,
    #[serde(default)]
    pub groups: Vec<String>,
}

fn upstreams<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    let list = s
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| a.parse::<SocketAddr>().map_err(serde::de::Error::custom))
        .collect::<Result<Vec<_>, _>>()?;
    if list.len() > MAX_UPSTREAMS {
        return Err(serde::de::Error::custom("too many upstream addresses"));
    }
    Ok(list)
}

/// A refusal, passed to the client as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub www_authenticate: Option<HeaderValue>,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// What the service decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow(Grant),
    Refuse(Refusal),
}

/// Why there is no verdict: the failure mode decides what the client gets.
#[derive(Debug, Error)]
pub enum AuthCallError {
    #[error("auth service did not answer within {0:?}")]
    Timeout(Duration),
    #[error("auth service unreachable: {0}")]
    Unreachable(String),
    /// The TLS handshake failed: an untrusted or expired certificate, a
    /// certificate for another host name, no common protocol.
    #[error("auth service TLS handshake failed: {0}")]
    Tls(String),
    #[error("auth service answered {0}")]
    Status(StatusCode),
    #[error("auth service answer unreadable: {0}")]
    BadAnswer(String),
}

/// Reads an answer: 200 with a grant, 401/403 as refusals, anything else an error.
pub fn verdict(
    status: StatusCode,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Verdict, AuthCallError> {
    match status.as_u16() {
        // serde_json's message may quote the answer (a token): only its
        // kind and place go into the error, which is logged.
        200 => serde_json::from_slice::<Grant>(&body)
            .map(Verdict::Allow)
            .map_err(|e| {
                AuthCallError::BadAnswer(format!(
                    "{:?} error in the JSON at line {} column {}",
                    e.classify(),
                    e.line(),
                    e.column()
                ))
            }),
        401 | 403 => Ok(Verdict::Refuse(Refusal {
            status,
            www_authenticate: headers.get(WWW_AUTHENTICATE).cloned(),
            content_type: headers.get(CONTENT_TYPE).cloned(),
            body,
        })),
        _ => Err(AuthCallError::Status(status)),
    }
}

/// Calls auth services over HTTP/1.1, plain or TLS (by the URL's scheme),
/// with kept-alive connections.
#[derive(Clone)]
pub struct AuthClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for AuthClient {
    /// Shares the process's TLS roots (`tls::init` at start-up): building
    /// a client reads no file.
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // The TLS layer above takes https URLs; this one only opens TCP.
        connector.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config((*super::tls::client_config()).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        AuthClient {
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }
}

/// An error of the client as logged: the whole chain of causes (hyper's own
/// message is only "client error (Connect)"), and a TLS failure as such.
/// None of these errors carries the query, so no credential gets in.
fn call_error(e: &hyper_util::client::legacy::Error) -> AuthCallError {
    let mut text = e.to_string();
    let mut tls = None;
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(r) = rustls_error(c) {
            tls = Some(r.to_string());
        }
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    match tls {
        Some(reason) => AuthCallError::Tls(reason),
        None => AuthCallError::Unreachable(text),
    }
}

/// rustls's error in `e`: tokio-rustls hands it inside an io::Error (which
/// hyper-rustls may wrap in another), and an io::Error's `source` skips
/// what it wraps: look inside.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut e = e;
    loop {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
        e = inner;
    }
}

impl AuthClient {
    /// POSTs `query` to `url`; the whole exchange, body included, ends by `deadline`.
    pub async fn ask(
        &self,
        url: &Uri,
        query: &AuthQuery<'_>,
        deadline: Duration,
    ) -> Result<Verdict, AuthCallError> {
        let body = serde_json::to_vec(query).expect("an auth query always serializes");
        let (status, headers, body) = self.post_json(url, body, deadline).await?;
        verdict(status, &headers, body)
    }

    /// POSTs a JSON `body` to `url` and reads the answer (at most 64 KiB),
    /// all by `deadline`. Also the federation's token exchange.
    pub async fn post_json(
        &self,
        url: &Uri,
        body: Vec<u8>,
        deadline: Duration,
    ) -> Result<(StatusCode, HeaderMap, Bytes), AuthCallError> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, body.len())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| AuthCallError::Unreachable(e.to_string()))?;
        let exchange = async {
            let resp = self
                .http
                .request(request)
                .await
                .map_err(|e| call_error(&e))?;
            let (head, body) = resp.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| AuthCallError::BadAnswer(e.to_string()))?
                .to_bytes();
            Ok((head.status, head.headers, body))
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| AuthCallError::Timeout(deadline))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn credentials_come_from_basic_bearer_or_the_token_header() {
        // "alice:s3cret"
        let c = Credentials::from_headers(
            &headers(&[("authorization", "Basic YWxpY2U6czNjcmV0")]),
            None,
        );
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("alice"), Some("s3cret"))
        );
        let c = Credentials::from_headers(&headers(&[("authorization", "Bearer abc")]), None);
        assert_eq!(c.token.as_deref(), Some("abc"));
        let c = Credentials::from_headers(&headers(&[("x-token", "t1")]), Some("x-token"));
        assert_eq!(c.token.as_deref(), Some("t1"));
        assert!(Credentials::from_headers(&headers(&[]), Some("x-token")).is_empty());
    }

    #[test]
    fn the_query_sends_absent_credentials_as_null() {
        let q = AuthQuery {
            username: None,
            password: None,
            token: Some("t"),
            uri: "/a?b=1",
            protocol: "http",
            method: "GET",
            length: None,
            client_ip: "127.0.0.1".parse().unwrap(),
        };
        let v: serde_json::Value = serde_json::to_value(&q).unwrap();
        assert_eq!(v["username"], serde_json::Value::Null);
        assert_eq!(v["length"], serde_json::Value::Null);
        assert_eq!(v["token"], "t");
        assert_eq!(v["client_ip"], "127.0.0.1");
    }

    #[test]
    fn a_rustls_error_is_found_inside_nested_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls.clone());
        let outer = std::io::Error::other(io);
        assert_eq!(rustls_error(&outer), Some(&tls));
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(rustls_error(&plain), None);
    }

    #[test]
    fn answers_are_read_as_grants_refusals_or_errors() {
        let grant = verdict(
            StatusCode::OK,
            &HeaderMap::new(),
            Bytes::from_static(br#"{"auth_token":"qwerty123","upstream":"10.241.0.25:3001, 10.241.0.26:3002","groups":["g1"]}"#),
        )
        .unwrap();
        let Verdict::Allow(g) = grant else { panic!() };
        assert_eq!(g.auth_token, "qwerty123");
        assert_eq!(g.upstream.len(), 2);
        assert_eq!(g.groups, ["g1"]);
        let refused = verdict(
            StatusCode::UNAUTHORIZED,
            &headers(&[("www-authenticate", "Basic realm=\"x\"")]),
            Bytes::new(),
        )
        .unwrap();
        let Verdict::Refuse(r) = refused else {
            panic!()
        };
        assert_eq!(r.www_authenticate.unwrap(), "Basic realm=\"x\"");
        assert!(matches!(
            verdict(StatusCode::BAD_GATEWAY, &HeaderMap::new(), Bytes::new()),
            Err(AuthCallError::Status(_))
        ));
        assert!(matches!(
            verdict(StatusCode::OK, &HeaderMap::new(), Bytes::from_static(b"{}")),
            Err(AuthCallError::BadAnswer(_))
        ));
        let Err(e) = verdict(
            StatusCode::OK,
            &HeaderMap::new(),
            Bytes::from_static(br#"{"auth_token":12345678}"#),
        ) else {
            panic!()
        };
        assert!(!e.to_string().contains("12345678"), "{e}");
    }
}
