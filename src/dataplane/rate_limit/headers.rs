//! The response fields of the rate-limit stage, in the syntax of
//! draft-ietf-httpapi-ratelimit-headers-10 (September 2025): both fields are
//! Structured Field Lists (RFC 9651) of one String item naming the policy,
//! `RateLimit-Policy: "api";q=100;w=60` (quota, window in seconds, and
//! `qu="content-bytes"` for a bytes limit; `request` is the default unit and
//! left out) and `RateLimit: "api";r=7;t=12` (remaining quota units, seconds
//! until the whole quota is back). Plus `Retry-After` (RFC 9110 §10.2.3) and
//! our `X-RateLimit-Name` on a 429.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::dataplane::http::short;
use crate::dataplane::pool::ProxyBody;
use crate::model::policy::rate_limit::LimitUnit;

pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const X_RATELIMIT_NAME: HeaderName = HeaderName::from_static("x-ratelimit-name");

/// Whole seconds, rounded up: a client that waits that long is not early.
pub fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `RateLimit-Policy` for a limit enforcing `quota` units per `period_s`.
/// The name is a validated policy name (`[A-Za-z0-9._-]`), so it needs no
/// escaping inside an sf-string.
pub fn policy(name: &str, quota: u64, period_s: u32, unit: LimitUnit) -> HeaderValue {
    let unit = match unit {
        LimitUnit::Requests => "",
        LimitUnit::Bytes => ";qu=\"content-bytes\"",
    };
    value(format!("\"{name}\";q={quota};w={period_s}{unit}"))
}

/// `RateLimit`: what is left of the policy now, and when it is whole again.
pub fn state(name: &str, remaining: u64, reset: Duration) -> HeaderValue {
    value(format!(
        "\"{name}\";r={remaining};t={}",
        whole_seconds_up(reset)
    ))
}

fn value(s: String) -> HeaderValue {
    // Only ASCII digits, quotes and a validated name: always a valid value.
    // Taking the String's buffer saves a copy (and an allocation) on every
    // response that carries the fields.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s))
        .unwrap_or_else(|_| HeaderValue::from_static("\"invalid\""))
}

/// The 429 for a request over limit `name`.
pub fn too_many_requests(
    name: &str,
    policy: HeaderValue,
    retry_after: Duration,
    reset: Duration,
) -> Response<ProxyBody> {
    let retry_s = whole_seconds_up(retry_after).max(1);
    let body = format!("lb-node: rate limit {name} exceeded; retry in {retry_s} s\n");
    let mut resp = short(StatusCode::TOO_MANY_REQUESTS, body);
    let h = resp.headers_mut();
    h.insert(RETRY_AFTER, HeaderValue::from(retry_s));
    h.insert(RATELIMIT_POLICY, policy);
    h.insert(RATELIMIT, state(name, 0, reset));
    h.insert(X_RATELIMIT_NAME, value(name.to_string()));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_use_the_drafts_structured_syntax() {
        assert_eq!(
            policy("api", 100, 60, LimitUnit::Requests),
            "\"api\";q=100;w=60"
        );
        assert_eq!(
            policy("up", 1000, 10, LimitUnit::Bytes),
            "\"up\";q=1000;w=10;qu=\"content-bytes\""
        );
        assert_eq!(
            state("api", 7, Duration::from_millis(11_001)),
            "\"api\";r=7;t=12"
        );
    }

    #[test]
    fn seconds_round_up_and_retry_after_is_at_least_one() {
        assert_eq!(whole_seconds_up(Duration::from_secs(2)), 2);
        assert_eq!(whole_seconds_up(Duration::from_nanos(2_000_000_001)), 3);
        let r = too_many_requests(
            "api",
            policy("api", 5, 10, LimitUnit::Requests),
            Duration::from_millis(1),
            Duration::from_secs(10),
        );
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        assert_eq!(r.headers()[RATELIMIT], "\"api\";r=0;t=10");
        assert_eq!(r.headers()[RATELIMIT_POLICY], "\"api\";q=5;w=10");
        assert_eq!(r.headers()[X_RATELIMIT_NAME], "api");
    }
}
