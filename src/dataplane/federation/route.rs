//! One federated request: a resource routed by its mapping (searched for
//! when unknown), or a list aggregated over every provider; each provider
//! gets its own token and project.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{request, Method, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use super::aggregate::{self, ListQuery, ProviderPage};
use super::search::{self, Outcome, Probe};
use super::{FederationStage, Matched, ProviderRoute};
use crate::dataplane::forward::{send_with_retry, Upstream};
use crate::dataplane::http::{client_response, failure_response, short};
use crate::dataplane::pool::{full_body, ProxyBody};
use crate::dataplane::{ActiveConfig, Node};
use crate::model::federation::{ResourceKey, ResourceMapping};
use crate::model::wake::NodeEvent;

use super::mappings::Lookup;

/// The providers that failed (a 502 or 504 of the node's own).
const FAILED_HEADER: &str = "x-federation-failed";
/// The providers left out of an aggregated list.
const PARTIAL_HEADER: &str = "x-federation-partial";
/// The provider that answered a resource request.
const PROVIDER_HEADER: &str = "x-federation-provider";
/// The largest provider list answer read for an aggregate.
const MAX_LIST_BYTES: usize = 16 << 20;

/// A request the federation took (`FederationStage::classify`).
pub struct Federated {
    pub matched: Matched,
    pub head: request::Parts,
    pub body: Incoming,
    pub peer: SocketAddr,
    /// It may be sent twice (idempotent, no body).
    pub retryable: bool,
}

pub async fn serve(
    node: &Arc<Node>,
    active: &ActiveConfig,
    fed: &FederationStage,
    req: Federated,
) -> Response<ProxyBody> {
    let Federated {
        matched,
        head,
        body,
        peer,
        retryable,
    } = req;
    let ctx = Ctx {
        node,
        active,
        fed,
        matched: &matched,
        peer,
    };
    match &matched {
        Matched::List { .. } => ctx.list(head).await,
        Matched::Resource { key, .. } => ctx.resource(key, head, body, retryable).await,
    }
}

struct Ctx<'a> {
    node: &'a Arc<Node>,
    active: &'a ActiveConfig,
    fed: &'a FederationStage,
    matched: &'a Matched,
    peer: SocketAddr,
}

impl Ctx<'_> {
    async fn resource(
        &self,
        key: &ResourceKey,
        head: request::Parts,
        body: Incoming,
        retryable: bool,
    ) -> Response<ProxyBody> {
        let now = Instant::now();
        let mapped = match self.node.federation.mappings.lookup(key, now) {
            Lookup::Mapped(name) => self.fed.provider(&name),
            Lookup::Missing => return not_found(key),
            Lookup::Unknown => None,
        };
        let reading = head.method == Method::GET || head.method == Method::HEAD;
        let provider = match mapped {
            Some(p) => p,
            None => match self.search(&head).await {
                Outcome::Found { provider, answer } => {
                    let p = &self.fed.providers[provider];
                    self.learn(key, &p.name);
                    if reading {
                        return self.answer(p, answer);
                    }
                    p
                }
                Outcome::Missing => {
                    self.node
                        .federation
                        .mappings
                        .miss(key, self.fed.negative_ttl, now);
                    return not_found(key);
                }
                Outcome::Failed(failed) => {
                    let names = self.names(failed.iter().map(|(i, _)| *i));
                    let reasons: Vec<String> = failed
                        .iter()
                        .map(|(i, r)| format!("{}: {r}", self.fed.providers[*i].name))
                        .collect();
                    tracing::debug!("search for {key:?}: {}", reasons.join("; "));
                    return failed_answer(
                        StatusCode::BAD_GATEWAY,
                        &names,
                        format!(
                            "lb-node: no provider had {} {}, and some failed: {}\n",
                            key.resource_type,
                            key.id,
                            reasons.join("; ")
                        ),
                    );
                }
                Outcome::TimedOut { pending, failed } => {
                    let names =
                        self.names(pending.into_iter().chain(failed.into_iter().map(|f| f.0)));
                    return failed_answer(
                        StatusCode::GATEWAY_TIMEOUT,
                        &names,
                        format!(
                            "lb-node: no provider answered for {} {} within {} ms\n",
                            key.resource_type,
                            key.id,
                            self.fed.search_timeout.as_millis()
                        ),
                    );
                }
            },
        };
        let deleting = head.method == Method::DELETE;
        let head = match self.for_provider(provider, head).await {
            Ok(h) => h,
            Err(reason) => return token_failure(provider, &reason),
        };
        match self.send(provider, head, body.boxed(), retryable).await {
            Ok(resp) => {
                if deleting && resp.status().is_success() {
                    self.node.federation.mappings.forget(key);
                    self.node.wake.emit(NodeEvent::MappingRemoved(key.clone()));
                }
                self.answer(provider, resp)
            }
            Err(resp) => resp,
        }
    }

    /// Asks every provider for the resource at once: the same GET (or
    /// HEAD), or a GET of the same path for other methods.
    async fn search(&self, head: &request::Parts) -> Outcome<Response<Incoming>> {
        let probes = self
            .fed
            .providers
            .iter()
            .enumerate()
            .map(|(i, p)| (i, self.probe(p, head)))
            .collect();
        search::search(probes, self.fed.search_timeout).await
    }

    async fn probe(&self, p: &ProviderRoute, head: &request::Parts) -> Probe<Response<Incoming>> {
        let mut h = head.clone();
        if h.method != Method::HEAD {
            h.method = Method::GET;
        }
        bodiless(&mut h);
        let h = match self.for_provider(p, h).await {
            Ok(h) => h,
            Err(reason) => return Probe::Failed(reason),
        };
        match self.send(p, h, empty(), true).await {
            Ok(resp) if resp.status().is_success() => Probe::Found(resp),
            Ok(resp) if resp.status() == StatusCode::NOT_FOUND => Probe::NotFound,
            Ok(resp) => Probe::Failed(format!("answered {}", resp.status())),
            Err(resp) => Probe::Failed(format!("lb-node {}", resp.status())),
        }
    }

    async fn list(&self, head: request::Parts) -> Response<ProxyBody> {
        let Matched::List {
            aggregate,
            resource_type,
            list_key,
            ..
        } = self.matched
        else {
            unreachable!("list() is called for lists")
        };
        let agg = self.fed.aggregate(*aggregate);
        let query = match ListQuery::parse(head.uri.query()) {
            Ok(q) => q,
            Err(reason) => return short(StatusCode::BAD_REQUEST, format!("lb-node: {reason}\n")),
        };
        let fetches = self.fed.providers.iter().filter_map(|p| {
            let q = query.for_provider(&p.name)?;
            let head = head.clone();
            Some(async move {
                let page = tokio::time::timeout(
                    self.fed.search_timeout,
                    self.fetch_page(p, head, &q, list_key),
                )
                .await
                .unwrap_or_else(|_| Err("no answer in time".into()));
                (p, page)
            })
        });
        let mut pages = Vec::new();
        let mut failed = Vec::new();
        for (p, page) in futures_util::future::join_all(fetches).await {
            match page {
                Ok(items) => pages.push(ProviderPage {
                    provider: p.name.clone(),
                    items,
                }),
                Err(reason) => {
                    tracing::debug!("list from {}: {reason}", p.name);
                    failed.push(p.name.clone());
                }
            }
        }
        if pages.is_empty() && !failed.is_empty() {
            return failed_answer(
                StatusCode::BAD_GATEWAY,
                &failed,
                "lb-node: no provider answered the list\n".into(),
            );
        }
        let merged = aggregate::merge(&query, pages, &failed, &agg.sort_key, &agg.id_key);
        for (provider, item) in &merged.items {
            if let Some(id) = aggregate::id_of(item, &agg.id_key) {
                let key = ResourceKey {
                    resource_type: resource_type.clone(),
                    id,
                };
                self.learn(&key, provider);
            }
        }
        let mut answer = serde_json::Map::new();
        let items: Vec<Value> = merged.items.into_iter().map(|(_, v)| v).collect();
        answer.insert(list_key.clone(), Value::Array(items));
        if let Some(next) = merged.next {
            answer.insert("next_marker".into(), Value::String(next.encode()));
        }
        let body = serde_json::to_vec(&answer).expect("a JSON object serializes");
        let len = body.len();
        let mut resp = Response::new(if head.method == Method::HEAD {
            full_body(Bytes::new())
        } else {
            full_body(body)
        });
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if !failed.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&failed.join(",")) {
                h.insert(HeaderName::from_static(PARTIAL_HEADER), v);
            }
        }
        resp
    }

    /// One provider's page: the array under `list_key` of its 2xx answer.
    async fn fetch_page(
        &self,
        p: &ProviderRoute,
        mut head: request::Parts,
        query: &str,
        list_key: &str,
    ) -> Result<Vec<Value>, String> {
        head.method = Method::GET;
        bodiless(&mut head);
        // The node reads the answer: it must come unencoded.
        head.headers.remove(header::ACCEPT_ENCODING);
        let mut head = self.for_provider(p, head).await?;
        let path = head.uri.path().to_string();
        set_target(&mut head, &path, Some(query))?;
        let resp = self
            .send(p, head, empty(), true)
            .await
            .map_err(|r| format!("lb-node {}", r.status()))?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        let bytes = Limited::new(resp.into_body(), MAX_LIST_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the list: {e}"))?
            .to_bytes();
        let mut v: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("the list is not JSON: {e}"))?;
        match v.get_mut(list_key).map(Value::take) {
            Some(Value::Array(items)) => Ok(items),
            _ => Err(format!("the answer has no array {list_key:?}")),
        }
    }

    /// The request as `p` gets it: its own token and project, when the
    /// client's token maps to one.
    async fn for_provider(
        &self,
        p: &ProviderRoute,
        mut head: request::Parts,
    ) -> Result<request::Parts, String> {
        let Some(token) = head
            .headers
            .get(&self.fed.token_header)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return Ok(head);
        };
        let project = match self.matched {
            Matched::Resource { project, .. } | Matched::List { project, .. } => project.as_deref(),
        };
        let remote = self
            .node
            .federation
            .tokens
            .remote(
                &self.node.federation.mappings,
                &p.name,
                p.token_url.as_ref(),
                &token,
                project.unwrap_or(""),
            )
            .await?;
        let Some(remote) = remote else {
            return Ok(head);
        };
        let value = HeaderValue::from_str(&remote.token)
            .map_err(|_| "the remote token is not a header value".to_string())?;
        head.headers.insert(self.fed.token_header.clone(), value);
        if project.is_some() {
            if remote.project.is_empty() || remote.project.contains(['/', '?', '#']) {
                return Err("the remote project is not one path segment".into());
            }
            let pattern = self.fed.pattern(self.matched);
            if let Some(path) = pattern.with_project(head.uri.path(), &remote.project) {
                let query = head.uri.query().map(str::to_string);
                set_target(&mut head, &path, query.as_deref())?;
            }
        }
        Ok(head)
    }

    /// One request to a provider's pool (with the pool's retry rule); the
    /// node's own 502/503/504 when no member answered.
    async fn send(
        &self,
        p: &ProviderRoute,
        head: request::Parts,
        body: ProxyBody,
        retryable: bool,
    ) -> Result<Response<Incoming>, Response<ProxyBody>> {
        let balancer = self.active.pool(p.pool);
        let Some(pick) = balancer.pick(0) else {
            return Err(short(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("lb-node: provider {} has no member up\n", p.name),
            ));
        };
        let upstream = Upstream::new(head, self.peer, None, retryable);
        match send_with_retry(&self.active.client, balancer, pick.member, upstream, body).await {
            Ok((resp, _)) => Ok(resp),
            Err(failure) => Err(failure_response(self.node, failure)),
        }
    }

    fn answer(&self, p: &ProviderRoute, resp: Response<Incoming>) -> Response<ProxyBody> {
        let mut resp = client_response(self.node, self.active, resp, None, None);
        if let Ok(v) = HeaderValue::from_str(&p.name) {
            resp.headers_mut()
                .insert(HeaderName::from_static(PROVIDER_HEADER), v);
        }
        resp
    }

    /// Remembers where a resource lives and tells lbd (once).
    fn learn(&self, key: &ResourceKey, provider: &str) {
        if self.node.federation.mappings.learn(key, provider) {
            self.node
                .wake
                .emit(NodeEvent::MappingLearned(ResourceMapping {
                    key: key.clone(),
                    provider: provider.to_string(),
                }));
        }
    }

    fn names(&self, providers: impl Iterator<Item = usize>) -> Vec<String> {
        let mut names: Vec<String> = providers
            .map(|i| self.fed.providers[i].name.clone())
            .collect();
        names.sort();
        names
    }
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed()
}

/// A head turned into one without a body (a search's GET).
fn bodiless(head: &mut request::Parts) {
    for name in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::EXPECT,
    ] {
        head.headers.remove(name);
    }
}

fn set_target(head: &mut request::Parts, path: &str, query: Option<&str>) -> Result<(), String> {
    let target = match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    };
    let mut parts = head.uri.clone().into_parts();
    parts.path_and_query = Some(
        target
            .parse()
            .map_err(|e| format!("target {target:?}: {e}"))?,
    );
    head.uri = Uri::from_parts(parts).map_err(|e| format!("target {target:?}: {e}"))?;
    Ok(())
}

fn not_found(key: &ResourceKey) -> Response<ProxyBody> {
    short(
        StatusCode::NOT_FOUND,
        format!(
            "lb-node: no provider has {} {}\n",
            key.resource_type, key.id
        ),
    )
}

fn failed_answer(status: StatusCode, providers: &[String], text: String) -> Response<ProxyBody> {
    let mut resp = short(status, text);
    if let Ok(v) = HeaderValue::from_str(&providers.join(",")) {
        resp.headers_mut()
            .insert(HeaderName::from_static(FAILED_HEADER), v);
    }
    resp
}

fn token_failure(p: &ProviderRoute, reason: &str) -> Response<ProxyBody> {
    tracing::warn!("provider {}: {reason}", p.name);
    failed_answer(
        StatusCode::BAD_GATEWAY,
        std::slice::from_ref(&p.name),
        format!("lb-node: provider {}: {reason}\n", p.name),
    )
}
