//! The node's admin API: `GET /status`, `PUT /config`, both behind the node's
//! bearer secret. The controller is its only client.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::json;

use super::Node;
use crate::model::NodeConfig;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/config", put(config))
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(node)
}

fn authorized(node: &Node, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    given.len() == node.secret.len()
        && given
            .bytes()
            .zip(node.secret.bytes())
            .fold(0, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn status(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if !authorized(&node, &headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized".into());
    }
    Json(node.status().await).into_response()
}

async fn config(State(node): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&node, &headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized".into());
    }
    let config: NodeConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid config: {e}")),
    };
    match node.apply(config).await {
        Ok(status) => Json(status).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
