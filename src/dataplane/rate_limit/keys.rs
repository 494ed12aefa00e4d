//! What one limit makes of a request: whether it applies (method and path
//! filters), the key it counts the request under, and what the request costs.

use std::borrow::Cow;

use http::header::{COOKIE, TRANSFER_ENCODING};

use super::stage::LimitRequest;
use crate::model::policy::rate_limit::{LimitKey, LimitUnit};
use crate::model::policy::RateLimit;

/// Whether the limit's `method` and `path_prefix` filters select the request.
pub fn applies(limit: &RateLimit, req: &LimitRequest<'_>) -> bool {
    let method_ok =
        limit.method.is_empty() || limit.method.iter().any(|m| m == req.method.as_str());
    let path_ok = limit
        .path_prefix
        .as_deref()
        .is_none_or(|p| req.path.starts_with(p));
    method_ok && path_ok
}

/// The value the request is counted under. `None`: the request carries no
/// such key (no such header or cookie, no auth token) and this limit does
/// not count it, as a limit per user does not count anonymous requests.
pub fn key<'a>(key: &LimitKey, req: &'a LimitRequest<'_>) -> Option<Cow<'a, [u8]>> {
    match key {
        LimitKey::ClientIp => Some(Cow::Owned(match req.client_ip {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => v4.octets().to_vec(),
                None => a.octets().to_vec(),
            },
        })),
        LimitKey::AuthToken => req.auth_token.map(|t| Cow::Borrowed(t.as_bytes())),
        // The first value: a client repeating the header gains nothing, as
        // it could send another value anyway.
        LimitKey::Header(name) => req
            .headers
            .get(name.as_str())
            .map(|v| Cow::Borrowed(v.as_bytes())),
        LimitKey::Cookie(name) => cookie(req, name).map(|v| Cow::Borrowed(v.as_bytes())),
    }
}

/// The first cookie `name` in any `Cookie` field (RFC 6265 §5.4: `a=1; b=2`;
/// HTTP/2 clients may send one field per cookie).
fn cookie<'a>(req: &'a LimitRequest<'_>, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
}

/// What the request costs under the limit; `None`: nothing to count.
///
/// Requests cost 1. Bytes cost the request body's declared length
/// (Content-Length). A request without a body costs nothing and is not
/// counted by a bytes limit. A body of unknown length (HTTP/1.1 chunked,
/// `Transfer-Encoding` without `Content-Length`) cannot be measured before it
/// is forwarded, so it is charged as the whole burst: a client cannot get
/// around a bytes limit by leaving out the length, and a full budget still
/// lets one such request through per refill.
pub fn cost(limit: &RateLimit, req: &LimitRequest<'_>) -> Option<u64> {
    match limit.unit {
        LimitUnit::Requests => Some(1),
        LimitUnit::Bytes => match req.body_bytes {
            Some(0) => None,
            Some(n) => Some(n),
            None if req.headers.contains_key(TRANSFER_ENCODING) => Some(limit.burst),
            None => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::RateLimitSpec;
    use http::{HeaderMap, HeaderValue, Method};

    fn limit(json: &str) -> RateLimit {
        serde_json::from_str::<RateLimitSpec>(json)
            .unwrap()
            .validate()
            .unwrap()
    }

    fn request<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> LimitRequest<'a> {
        LimitRequest {
            method,
            path,
            headers,
            client_ip: "127.0.0.9".parse().unwrap(),
            auth_token: None,
            body_bytes: None,
        }
    }

    #[test]
    fn method_and_path_filters_select_requests() {
        let l = limit(
            r#"{"name":"a","key":"client_ip","method":["post"],"path_prefix":"/api/","period":1,"threshold":1}"#,
        );
        let h = HeaderMap::new();
        assert!(applies(&l, &request(&Method::POST, "/api/x", &h)));
        assert!(!applies(&l, &request(&Method::GET, "/api/x", &h)));
        assert!(!applies(&l, &request(&Method::POST, "/other", &h)));
        let all = limit(r#"{"name":"a","key":"client_ip","period":1,"threshold":1}"#);
        assert!(applies(&all, &request(&Method::DELETE, "/", &h)));
    }

    #[test]
    fn keys_come_from_the_ip_token_header_or_cookie_and_may_be_absent() {
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("alice"));
        h.append(COOKIE, HeaderValue::from_static("theme=dark; sid=\"s-1\""));
        let m = Method::GET;
        let mut r = request(&m, "/", &h);
        let k = |spec: &str, r: &LimitRequest<'_>| {
            key(&LimitKey::try_from(spec.to_string()).unwrap(), r).map(|c| c.into_owned())
        };
        assert_eq!(k("client_ip", &r), Some(vec![127, 0, 0, 9]));
        assert_eq!(k("header:X-User", &r), Some(b"alice".to_vec()));
        assert_eq!(k("cookie:sid", &r), Some(b"s-1".to_vec()));
        assert_eq!(k("cookie:none", &r), None);
        assert_eq!(k("header:X-Other", &r), None);
        assert_eq!(k("auth_token", &r), None);
        r.auth_token = Some("qwerty123");
        assert_eq!(k("auth_token", &r), Some(b"qwerty123".to_vec()));
        // An IPv4 client over an IPv6 socket is the same client.
        r.client_ip = "::ffff:127.0.0.9".parse().unwrap();
        assert_eq!(k("client_ip", &r), Some(vec![127, 0, 0, 9]));
    }

    #[test]
    fn bytes_cost_the_declared_length_and_chunked_bodies_the_burst() {
        let bytes = limit(
            r#"{"name":"b","key":"client_ip","unit":"bytes","period":60,"threshold":1000,"burst":500}"#,
        );
        let reqs = limit(r#"{"name":"r","key":"client_ip","period":60,"threshold":10}"#);
        let mut h = HeaderMap::new();
        let m = Method::POST;
        let mut r = request(&m, "/", &h);
        assert_eq!(cost(&reqs, &r), Some(1));
        assert_eq!(cost(&bytes, &r), None, "no body");
        r.body_bytes = Some(0);
        assert_eq!(cost(&bytes, &r), None);
        r.body_bytes = Some(321);
        assert_eq!(cost(&bytes, &r), Some(321));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let r = request(&m, "/", &h);
        assert_eq!(cost(&bytes, &r), Some(500));
    }
}
