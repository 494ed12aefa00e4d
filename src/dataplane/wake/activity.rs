//! A managed member's response body that keeps the member open (not idle)
//! until hyper drops it: sent in full or abandoned. A 30 s download counts
//! for its 30 s, not for the instant its head went out.

use crate::dataplane::idle::Counted;
use crate::dataplane::stats::OpenGuard;

/// The member's [`OpenGuard`] held by the body, as `idle::Counted` holds a
/// request's stream guard.
pub type OpenBody<B> = Counted<B, OpenGuard>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::pool::full_body;
    use crate::dataplane::stats::MemberCounters;
    use http_body_util::BodyExt;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;

    #[tokio::test]
    async fn the_member_is_open_until_the_body_is_gone() {
        let c = Arc::new(MemberCounters::default());
        let body = OpenBody::new(full_body("hello"), OpenGuard::new(c.clone()));
        assert_eq!(c.open.load(Relaxed), 1);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(c.open.load(Relaxed), 0);
    }
}
