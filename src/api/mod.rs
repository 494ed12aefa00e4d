//! The HTTP API (axum): `/api` takes the action envelope by GET (with a JSON
//! body, as the seed says) or POST; `/healthz` says the daemon serves.
//! Handlers validate, write desired state in one transaction, wake the
//! reconciler and answer; they never talk to a driver, except to claim a new
//! project's subnet on the host (so two lbds cannot allocate one range), and
//! to push a changed federation mapping to the instance's nodes before
//! answering (`mappings.rs`).

mod audit;
mod auth;
pub(crate) mod backend_guard;
mod error;
mod handlers;
mod managed_check;
mod managed_metrics;
mod mappings;
mod metrics;
mod quota;
pub mod rate_limit;
mod usage;
mod users;
mod views;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt;
use tokio::sync::Notify;

pub use auth::{hash_token, Caller};
pub use backend_guard::BackendGuard;
pub use error::ApiError;

use crate::drivers::compute::ComputeWarnings;
use crate::drivers::network::NetworkDriver;
use crate::model::envelope::{ApiRequest, EnvelopeHeader};
use crate::model::{Quota, ResponseEnvelope, ResponseStatus};
use crate::store::Store;
use rate_limit::CallClass;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;
/// How much of an oversized body is read and dropped before answering 413.
const DRAIN_LIMIT: usize = 16 << 20;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Wakes the reconciler after a write.
    pub wake: Arc<Notify>,
    /// Consulted for subnet rules and the pool, and claims a new project's
    /// subnet on the host; never changes a network.
    pub network: Arc<dyn NetworkDriver>,
    pub zone: String,
    pub node_admin_port: u16,
    /// Refuses backends that point into the control plane.
    pub backends: Arc<BackendGuard>,
    /// The quota of users whose own limits do not say (`--default-quota-*`).
    pub default_quota: Quota,
    /// The API's own rate limit, per user and per address without a token.
    pub rate_limiter: Arc<rate_limit::ApiRateLimiter>,
    /// What the compute driver found wrong with the host (shown with each
    /// instance); only read here.
    pub compute_warnings: ComputeWarnings,
    /// Whether `compute: vm` managed pools can run here (`--compute libvirt`).
    pub runs_vm_backends: bool,
    /// Where their kernels and initrds may come from (`--backend-image-dir`).
    pub backend_image_dirs: Arc<[std::path::PathBuf]>,
    /// Where `https` instances' private keys go (never into the spec).
    pub tls_keys: crate::store::tls_keys::KeyStore,
    /// Federation mappings: their remote tokens' files, and the push of a
    /// changed set to the instance's nodes (`PUT /mappings`).
    pub mappings: std::sync::Arc<crate::federation::MappingSync>,
}

impl AppState {
    fn view(&self) -> views::ViewContext<'_> {
        views::ViewContext {
            zone: &self.zone,
            warnings: self.compute_warnings.list(),
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api", get(api).post(api))
        .route("/metrics", get(prometheus))
        .fallback(|| async { envelope(&EnvelopeHeader::default(), Err(ApiError::NoRoute)) })
        .with_state(state)
}

/// `/api`: the caller (from the token, before the body is read), the
/// envelope, what the caller's role allows, the handler; then the audit
/// log and the answer.
async fn api(State(state): State<AppState>, request: Request) -> Response {
    let client = audit::client(&request);
    let client_ip = audit::client_ip(&request);
    let none = EnvelopeHeader::default();
    let caller = match auth::caller(&state.store, request.headers()).await {
        Ok(c) => c,
        Err(e) => {
            // Without a valid token, calls are limited per address, so
            // guessing tokens is slow; a refused guess is not audited.
            let result = Err(anonymous_refusal(&state, client_ip, e));
            let call = audit::Call {
                user: None,
                client,
                header: &none,
                name: None,
            };
            audit::record(&state.store, call, &result).await;
            return envelope(&none, result);
        }
    };
    let body = match read_body(request.into_body()).await {
        Ok(b) => b,
        Err(e) => return envelope(&none, Err(e)),
    };
    let (header, parsed) = ApiRequest::parse(&body);
    let name = parsed
        .as_ref()
        .ok()
        .and_then(|r| r.object_name())
        .map(str::to_string);
    let class = match &parsed {
        Ok(r) if !r.is_write() => CallClass::Read,
        _ => CallClass::Write,
    };
    let result = match parsed {
        Ok(req) => match state
            .rate_limiter
            .check_user(&caller.user, class)
            .map_err(ApiError::RateLimited)
            .and_then(|()| auth::authorize(&caller, &req))
        {
            Ok(()) => handlers::handle(&state, &caller, req).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e.into()),
    };
    let call = audit::Call {
        user: Some(&caller.user),
        client,
        header: &header,
        name: name.as_deref(),
    };
    audit::record(&state.store, call, &result).await;
    envelope(&header, result)
}

/// Spends one call of the address's budget for calls without a valid
/// token: the refusal as it is, or 429 once the budget is spent.
fn anonymous_refusal(
    state: &AppState,
    client_ip: Option<std::net::IpAddr>,
    refusal: ApiError,
) -> ApiError {
    let ip = client_ip.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    match state.rate_limiter.check_anonymous(ip) {
        Ok(()) => refusal,
        Err(retry) => ApiError::RateLimited(retry),
    }
}

/// `/metrics`: admins and readers. Refusals go to the audit log (type `metrics`).
async fn prometheus(State(state): State<AppState>, request: Request) -> Response {
    let client = audit::client(&request);
    let client_ip = audit::client_ip(&request);
    let caller = match auth::caller(&state.store, request.headers()).await {
        Ok(c) => state
            .rate_limiter
            .check_user(&c.user, CallClass::Read)
            .map(|()| c)
            .map_err(ApiError::RateLimited),
        Err(e) => Err(anonymous_refusal(&state, client_ip, e)),
    };
    let user = caller.as_ref().ok().map(|c| c.user.clone());
    let allowed = caller.and_then(|c| auth::may_read_metrics(&c));
    if allowed.is_err() {
        let header = EnvelopeHeader {
            action: None,
            object_type: Some("metrics".into()),
        };
        let call = audit::Call {
            user: user.as_deref(),
            client,
            header: &header,
            name: None,
        };
        audit::record(&state.store, call, &allowed).await;
        let result = allowed.map(|()| serde_json::Value::Null);
        return envelope(&EnvelopeHeader::default(), result);
    }
    match state.store.read(metrics::gather).await {
        Ok(snapshot) => metrics::response(&snapshot),
        Err(e) => envelope(&EnvelopeHeader::default(), Err(e.into())),
    }
}

async fn read_body(mut body: Body) -> Result<bytes::Bytes, ApiError> {
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            crate::model::ValidationError::InvalidEnvelope(format!("cannot read body: {e}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total <= MAX_BODY {
            buf.extend_from_slice(&data);
        } else if total > DRAIN_LIMIT {
            break;
        }
    }
    if total > MAX_BODY {
        // The rest was read and dropped (up to DRAIN_LIMIT): a client still
        // sending when the answer comes would get a reset instead of the 413.
        return Err(ApiError::BodyTooLarge(MAX_BODY));
    }
    Ok(buf.freeze())
}

fn envelope(header: &EnvelopeHeader, result: Result<serde_json::Value, ApiError>) -> Response {
    let retry_after = match &result {
        Err(ApiError::RateLimited(r)) => Some(r.header_seconds()),
        _ => None,
    };
    let (status, body) = match result {
        Ok(info) => (
            StatusCode::OK,
            ResponseEnvelope {
                status: ResponseStatus::Successful,
                action: header.action.clone(),
                object_type: header.object_type.clone(),
                info: Some(info),
                error: None,
            },
        ),
        Err(e) => {
            if e.status().is_server_error() {
                tracing::error!("api: {e}");
            }
            (
                e.status(),
                ResponseEnvelope {
                    status: ResponseStatus::Fail,
                    action: header.action.clone(),
                    object_type: header.object_type.clone(),
                    info: None,
                    error: Some(crate::model::ErrorBody {
                        code: e.code().to_string(),
                        message: e.to_string(),
                    }),
                },
            )
        }
    };
    let mut response = (status, Json(body)).into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    response
}
