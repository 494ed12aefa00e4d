//! Aggregated lists, the pure part: the opaque marker (each provider's
//! position), the query each provider gets, and the merge of their pages
//! by `sort_key` with `limit`. Each provider is asked for `limit + 1`
//! items after its own position, so the node knows which providers have
//! more without fetching everything (mixmatch fetched all and cut).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The largest `limit` a client may ask for.
pub const MAX_LIMIT: usize = 10_000;

/// Where a provider is in the walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    /// Nothing of it returned yet.
    Start,
    /// The id of its last item returned.
    After(String),
    /// All of it returned.
    Done,
}

/// Every provider's position; a provider it does not name is at `Start`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor(pub BTreeMap<String, Position>);

impl Cursor {
    pub fn decode(marker: &str) -> Result<Cursor, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(marker)
            .map_err(|_| "the marker is not one this endpoint made".to_string())?;
        serde_json::from_slice(&bytes)
            .map_err(|_| "the marker is not one this endpoint made".into())
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("a cursor serializes"))
    }

    pub fn position(&self, provider: &str) -> &Position {
        self.0.get(provider).unwrap_or(&Position::Start)
    }
}

/// What the client asked of the list: its `limit` and `marker`, and the
/// rest of its query, passed on to every provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub limit: Option<usize>,
    pub cursor: Cursor,
    pub rest: Vec<String>,
}

impl ListQuery {
    pub fn parse(query: Option<&str>) -> Result<ListQuery, String> {
        let mut q = ListQuery {
            limit: None,
            cursor: Cursor::default(),
            rest: Vec::new(),
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "limit" => {
                    let n: usize = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| format!("limit must be 1 to {MAX_LIMIT}"))?;
                    q.limit = Some(n);
                }
                "marker" => q.cursor = Cursor::decode(value)?,
                _ => q.rest.push(pair.to_string()),
            }
        }
        Ok(q)
    }

    /// The query one provider gets; `None` when it is done.
    pub fn for_provider(&self, provider: &str) -> Option<String> {
        let mut parts = self.rest.clone();
        if let Some(limit) = self.limit {
            parts.push(format!("limit={}", limit + 1));
        }
        match self.cursor.position(provider) {
            Position::Done => return None,
            Position::After(id) => parts.push(format!("marker={}", percent_encode(id))),
            Position::Start => {}
        }
        Some(parts.join("&"))
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// One provider's answer: the items under `list_key`, in its order.
#[derive(Debug, Clone)]
pub struct ProviderPage {
    pub provider: String,
    pub items: Vec<Value>,
}

/// The merged answer: items with the provider each came from, and the
/// marker for the next page while more remain.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub items: Vec<(String, Value)>,
    pub next: Option<Cursor>,
}

/// An item's id (a string, or a number as text).
pub fn id_of(item: &Value, id_key: &str) -> Option<String> {
    match item.get(id_key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            Some(Value::Number(_)) => 0,
            Some(Value::String(_)) => 1,
            Some(_) => 2,
            None => 3,
        }
    }
    match (a, b) {
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Merges the pages of the providers that answered (`failed` did not:
/// they keep their positions, so the next page asks them again).
pub fn merge(
    query: &ListQuery,
    pages: Vec<ProviderPage>,
    failed: &[String],
    sort_key: &str,
    id_key: &str,
) -> Merged {
    let mut all: Vec<(String, Value)> = pages
        .iter()
        .flat_map(|p| p.items.iter().map(|i| (p.provider.clone(), i.clone())))
        .collect();
    all.sort_by(|(pa, a), (pb, b)| {
        compare(a.get(sort_key), b.get(sort_key))
            .then_with(|| pa.cmp(pb))
            .then_with(|| compare(a.get(id_key), b.get(id_key)))
    });
    let Some(limit) = query.limit else {
        return Merged {
            items: all,
            next: None,
        };
    };
    all.truncate(limit);
    let mut next = query.cursor.clone();
    let mut more = false;
    for page in &pages {
        let mine: Vec<&Value> = all
            .iter()
            .filter(|(p, _)| *p == page.provider)
            .map(|(_, v)| v)
            .collect();
        let position = if page.items.len() > mine.len() {
            more = true;
            match mine.last().and_then(|v| id_of(v, id_key)) {
                Some(id) => Position::After(id),
                None => query.cursor.position(&page.provider).clone(),
            }
        } else {
            Position::Done
        };
        next.0.insert(page.provider.clone(), position);
    }
    // A provider that failed is asked again on the next page; but a page
    // with nothing in it and only failed providers left would loop.
    if !failed.is_empty() && !all.is_empty() {
        more = true;
    }
    Merged {
        items: all,
        next: more.then_some(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn page<S: AsRef<str>>(provider: &str, ids: &[S]) -> ProviderPage {
        ProviderPage {
            provider: provider.into(),
            items: ids.iter().map(|i| json!({"id": i.as_ref()})).collect(),
        }
    }

    /// Serves one provider's list as the fixture does: sorted, after the
    /// marker, at most `limit`.
    fn serve(ids: &[&str], query: &str) -> Vec<String> {
        let mut limit = usize::MAX;
        let mut marker = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (n, v) = pair.split_once('=').unwrap();
            match n {
                "limit" => limit = v.parse().unwrap(),
                "marker" => marker = Some(v.to_string()),
                _ => {}
            }
        }
        let mut ids: Vec<&str> = ids.to_vec();
        ids.sort();
        ids.into_iter()
            .filter(|i| marker.as_deref().is_none_or(|m| *i > m))
            .take(limit)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn walking_with_a_limit_returns_every_item_once_in_order() {
        let providers: [(&str, &[&str]); 3] = [
            ("sp1", &["a1", "c1", "e1"]),
            ("sp2", &["b2", "d2"]),
            ("sp3", &["a3", "f3", "g3", "h3"]),
        ];
        let mut seen = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..20 {
            let q = match &marker {
                Some(m) => format!("limit=2&marker={m}"),
                None => "limit=2".into(),
            };
            let query = ListQuery::parse(Some(&q)).unwrap();
            let pages = providers
                .iter()
                .filter_map(|(name, ids)| {
                    let pq = query.for_provider(name)?;
                    assert!(pq.contains("limit=3"), "{pq}");
                    Some(page(name, &serve(ids, &pq)))
                })
                .collect();
            let merged = merge(&query, pages, &[], "id", "id");
            assert!(merged.items.len() <= 2);
            seen.extend(
                merged
                    .items
                    .iter()
                    .map(|(_, v)| v["id"].as_str().unwrap().to_string()),
            );
            match merged.next {
                Some(c) => marker = Some(c.encode()),
                None => break,
            }
        }
        let mut all: Vec<String> = providers
            .iter()
            .flat_map(|(_, ids)| ids.iter().map(|s| s.to_string()))
            .collect();
        all.sort();
        assert_eq!(seen, all);
    }

    #[test]
    fn without_a_limit_everything_merges_and_no_marker_comes() {
        let q = ListQuery::parse(Some("status=ok")).unwrap();
        assert_eq!(q.for_provider("sp1").as_deref(), Some("status=ok"));
        let m = merge(
            &q,
            vec![page("sp1", &["b"]), page("sp2", &["a"])],
            &[],
            "id",
            "id",
        );
        assert_eq!(m.items[0].0, "sp2");
        assert!(m.next.is_none());
    }

    #[test]
    fn a_failed_provider_keeps_its_place_and_bad_markers_are_refused() {
        let q = ListQuery::parse(Some("limit=1")).unwrap();
        let m = merge(&q, vec![page("sp1", &["a"])], &["sp2".into()], "id", "id");
        let next = m.next.unwrap();
        assert_eq!(next.position("sp1"), &Position::Done);
        assert_eq!(next.position("sp2"), &Position::Start);
        let empty = merge(
            &q,
            vec![page::<&str>("sp1", &[])],
            &["sp2".into()],
            "id",
            "id",
        );
        assert!(empty.next.is_none(), "no endless walk over a dead provider");
        assert!(ListQuery::parse(Some("marker=garbage!")).is_err());
        assert!(ListQuery::parse(Some("limit=0")).is_err());
        let c = Cursor(BTreeMap::from([(
            "sp1".into(),
            Position::After("x y".into()),
        )]));
        let q = ListQuery::parse(Some(&format!("marker={}", c.encode()))).unwrap();
        assert_eq!(q.for_provider("sp1").as_deref(), Some("marker=x%20y"));
    }

    #[test]
    fn numbers_sort_as_numbers() {
        let q = ListQuery::parse(None).unwrap();
        let p = ProviderPage {
            provider: "a".into(),
            items: vec![json!({"id": 10}), json!({"id": 9})],
        };
        let m = merge(&q, vec![p], &[], "id", "id");
        assert_eq!(m.items[0].1["id"], 9);
        assert_eq!(id_of(&m.items[1].1, "id").as_deref(), Some("10"));
    }
}
