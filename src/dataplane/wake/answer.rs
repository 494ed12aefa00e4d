//! The node's own answers of the wake stage, and the cold-start header.

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use super::{HoldError, ResourceRefusal};
use crate::dataplane::http::short;
use crate::dataplane::pool::ProxyBody;
use crate::model::wake::{COLD_START_HEADER, WAKE_ERROR_HEADER};

/// The longest `X-Lbaas-Wake-Error` value: the reason is a backend's last
/// words, which can be long.
const MAX_REASON: usize = 256;

/// A reason as a header value: visible ASCII and spaces only (line breaks
/// and control bytes from a backend's output become spaces), bounded.
pub fn header_safe(reason: &str) -> HeaderValue {
    let clean: String = reason
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .take(MAX_REASON)
        .collect();
    let clean = clean.split_whitespace().collect::<Vec<_>>().join(" ");
    HeaderValue::from_str(&clean).unwrap_or(HeaderValue::from_static("start failed"))
}

pub fn refusal(error: HoldError) -> Response<ProxyBody> {
    match error {
        HoldError::Full => {
            let mut resp = short(
                StatusCode::SERVICE_UNAVAILABLE,
                "lb-node: too many requests wait for a backend to start\n",
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
        HoldError::Timeout(ms) => short(
            StatusCode::GATEWAY_TIMEOUT,
            format!("lb-node: no backend was ready within {ms} ms\n"),
        ),
        HoldError::StartFailed(reason) => {
            let mut resp = short(
                StatusCode::SERVICE_UNAVAILABLE,
                "lb-node: the backend failed to start\n",
            );
            resp.headers_mut().insert(
                HeaderName::from_static(WAKE_ERROR_HEADER),
                header_safe(&reason),
            );
            resp
        }
        HoldError::Gone => short(
            StatusCode::SERVICE_UNAVAILABLE,
            "lb-node: the pool is no longer managed\n",
        ),
    }
}

/// The answer to a request a `per_resource` pool does not route.
pub fn resource_refusal(refusal: ResourceRefusal) -> Response<ProxyBody> {
    match refusal {
        ResourceRefusal::NotFound => short(StatusCode::NOT_FOUND, "lb-node: no such resource\n"),
        ResourceRefusal::MissingGroup => short(StatusCode::FORBIDDEN, "lb-node: missing group\n"),
        ResourceRefusal::TooMany(max) => {
            let mut resp = short(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("lb-node: {max} resources (max_resources) are active and none is free\n"),
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
    }
}

/// Marks a response that waited for a cold start.
pub fn add_cold_start(resp: &mut Response<ProxyBody>, ms: u64) {
    resp.headers_mut().insert(
        HeaderName::from_static(COLD_START_HEADER),
        HeaderValue::from(ms),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backends_output_becomes_one_header_line() {
        let v = header_safe("Traceback:\r\n  File \"x\"\n\tboom\u{7}é");
        assert_eq!(v, "Traceback: File \"x\" boom");
        assert!(header_safe(&"x".repeat(1000)).len() <= MAX_REASON);
    }

    #[test]
    fn each_refusal_has_its_status() {
        let full = refusal(HoldError::Full);
        assert_eq!(full.status(), 503);
        assert_eq!(full.headers()[RETRY_AFTER], "1");
        assert_eq!(refusal(HoldError::Timeout(300)).status(), 504);
        let failed = refusal(HoldError::StartFailed("exit 1\n".into()));
        assert_eq!(failed.status(), 503);
        assert_eq!(failed.headers()[WAKE_ERROR_HEADER], "exit 1");
    }

    #[test]
    fn each_resource_refusal_has_its_status() {
        assert_eq!(resource_refusal(ResourceRefusal::NotFound).status(), 404);
        assert_eq!(
            resource_refusal(ResourceRefusal::MissingGroup).status(),
            403
        );
        let many = resource_refusal(ResourceRefusal::TooMany(3));
        assert_eq!(many.status(), 503);
        assert_eq!(many.headers()[RETRY_AFTER], "1");
    }
}
