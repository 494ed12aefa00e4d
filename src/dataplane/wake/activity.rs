//! A managed member's response body that keeps the member open (not idle)
//! until hyper drops it: sent in full or abandoned. A 30 s download counts
//! for its 30 s, not for the instant its head went out.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};

use crate::dataplane::stats::OpenGuard;

pub struct OpenBody<B> {
    inner: B,
    _open: OpenGuard,
}

impl<B> OpenBody<B> {
    pub fn new(inner: B, open: OpenGuard) -> Self {
        OpenBody { inner, _open: open }
    }
}

impl<B: Body + Unpin> Body for OpenBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

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
