//! The HTTP API (axum): `/api` takes the action envelope by GET (with a JSON
//! body, as the seed says) or POST; `/healthz` says the daemon serves.
//! Handlers validate, write desired state in one transaction, wake the
//! reconciler and answer; they never talk to a driver, except to claim a new
//! project's subnet on the host (so two lbds cannot allocate one range).

mod audit;
mod auth;
mod backend_guard;
mod error;
mod handlers;
mod metrics;
mod quota;
pub mod rate_limit;
mod users;
mod views;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
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
    /// What the compute driver found wrong with the host (shown with each
    /// instance); only read here.
    pub compute_warnings: ComputeWarnings,
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
    let none = EnvelopeHeader::default();
    let caller = match auth::caller(&state.store, request.headers()).await {
        Ok(c) => c,
        Err(e) => {
            let result = Err(e);
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
    // The API rate limit (per token, 429 `rate_limited`) goes here: the
    // caller is known, nothing has been read or done yet.
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
    let result = match parsed {
        Ok(req) => match auth::authorize(&caller, &req) {
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

/// `/metrics`: admins and readers. Refusals go to the audit log (type `metrics`).
async fn prometheus(State(state): State<AppState>, request: Request) -> Response {
    let client = audit::client(&request);
    let caller = auth::caller(&state.store, request.headers()).await;
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
    (status, Json(body)).into_response()
}
