//! The node's admin API: `GET /status`, `PUT /config`, `PUT /managed`,
//! `PUT /mappings` and
//! `GET /events`, all behind the node's bearer secret. The controller is its
//! only client.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::json;

use super::Node;
use crate::model::federation::NodeMappings;
use crate::model::wake::{ManagedMembers, ManagedPoolStats, ManagedTarget, NodeEvent, WakeDemand};
use crate::model::NodeConfig;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/config", put(config))
        .route("/managed", put(managed))
        .route("/mappings", put(mappings))
        .route("/events", get(events))
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

async fn managed(State(node): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&node, &headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized".into());
    }
    let members: ManagedMembers = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid managed members: {e}"),
            )
        }
    };
    match node.apply_managed(members).await {
        Ok(status) => Json(status).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `PUT /mappings`: lbd's whole set of federation mappings (issue 18).
async fn mappings(State(node): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&node, &headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized".into());
    }
    // serde's message could quote a token: only where it failed is said.
    let mappings: NodeMappings = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid mappings: {:?} error at line {} column {}",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            )
        }
    };
    Json(node.apply_mappings(mappings).await).into_response()
}

/// How often an idle events stream gets a `Keepalive` line.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /events`: NDJSON, `Hello` first, then a `Wake` for every target
/// holding requests now (they were held while no lbd listened: a node just
/// started, or lbd restarted), then every event as it happens. A subscriber
/// that falls behind loses the oldest events (the request path never waits
/// for it); demand is sent again while it lasts.
async fn events(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if !authorized(&node, &headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized".into());
    }
    let hello = NodeEvent::Hello {
        node_id: node.node_id.clone(),
        managed_version: node.wake.version(),
    };
    // Subscribed before the held targets are read, so a request held in
    // between is in one or the other.
    let events = node.wake.subscribe();
    let mut first = vec![hello];
    first.extend(held_demand(&node.wake.stats()));
    let stream = event_lines(first, events, KEEPALIVE);
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// The demand of targets with requests held now.
fn held_demand(stats: &[ManagedPoolStats]) -> impl Iterator<Item = NodeEvent> + '_ {
    stats.iter().filter(|t| t.queued > 0).map(|t| {
        NodeEvent::Wake(WakeDemand {
            target: ManagedTarget {
                pool: t.pool.clone(),
                resource: t.resource.clone(),
            },
            queued: t.queued,
            // Held requests are in flight; those on members are not known
            // here, and with requests held the members are too few anyway.
            in_flight: t.queued,
            ready: t.ready,
        })
    })
}

fn event_lines(
    first: Vec<NodeEvent>,
    events: tokio::sync::broadcast::Receiver<NodeEvent>,
    keepalive: std::time::Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    use tokio::sync::broadcast::error::RecvError;
    let state = (std::collections::VecDeque::from(first), events);
    futures_util::stream::unfold(state, move |(mut first, mut events)| async move {
        let event = match first.pop_front() {
            Some(leading) => leading,
            None => loop {
                match tokio::time::timeout(keepalive, events.recv()).await {
                    Err(_) => break NodeEvent::Keepalive,
                    Ok(Ok(event)) => break event,
                    Ok(Err(RecvError::Lagged(n))) => {
                        tracing::debug!("events: a slow subscriber lost {n} events");
                    }
                    Ok(Err(RecvError::Closed)) => return None,
                }
            },
        };
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok(Bytes::from(line)), (first, events)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn the_stream_says_hello_then_events_then_keepalives() {
        let (tx, rx) = tokio::sync::broadcast::channel(4);
        let hello = NodeEvent::Hello {
            node_id: "7".into(),
            managed_version: None,
        };
        let mut lines = Box::pin(event_lines(vec![hello], rx, KEEPALIVE));
        let first = lines.next().await.unwrap().unwrap();
        assert!(first.starts_with(b"{\"kind\":\"hello\""), "{first:?}");
        tx.send(NodeEvent::Keepalive).unwrap();
        assert_eq!(
            &lines.next().await.unwrap().unwrap()[..],
            b"{\"kind\":\"keepalive\"}\n"
        );
        // Nothing sent: a keepalive after the interval.
        let idle = lines.next().await.unwrap().unwrap();
        assert_eq!(&idle[..], b"{\"kind\":\"keepalive\"}\n");
    }

    #[test]
    fn targets_holding_requests_are_demand_on_a_new_stream() {
        let held = ManagedPoolStats {
            pool: "default".into(),
            queued: 3,
            ..ManagedPoolStats::default()
        };
        let idle = ManagedPoolStats {
            pool: "api".into(),
            ready: 1,
            ..ManagedPoolStats::default()
        };
        let demand: Vec<NodeEvent> = held_demand(&[held, idle]).collect();
        match &demand[..] {
            [NodeEvent::Wake(d)] => {
                assert_eq!(
                    (d.target.pool.as_str(), d.queued, d.ready),
                    ("default", 3, 0)
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
