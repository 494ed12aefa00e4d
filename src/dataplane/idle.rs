//! Idle deadlines for byte relays (TCP instances, upgraded HTTP tunnels): a
//! relay with no byte in either direction for `client_idle_ms` is closed, so
//! a silent peer cannot hold a `max_connections` slot for ever.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a relay last moved a byte, shared by its two directions.
pub struct Activity {
    start: Instant,
    /// Milliseconds after `start`; an atomic because both directions stamp it.
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Records that bytes moved now.
    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Relaxed);
    }

    /// Resolves once nothing moved for `idle`; races the relay in a `select!`.
    pub async fn expired(&self, idle: Duration) {
        loop {
            let deadline = self.start + Duration::from_millis(self.last_ms.load(Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that stamps `activity` whenever it reads bytes. Stamping reads is
/// enough: in a relay every byte written was read from the other side first.
pub struct Tracked<'a, T> {
    pub inner: T,
    pub activity: &'a Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The error a relay ends with when its idle deadline passed.
pub fn timed_out(idle: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no bytes either way for {} ms", idle.as_millis()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_after_idle_and_a_touch_pushes_it_back() {
        let a = Activity::default();
        let idle = Duration::from_millis(100);
        tokio::time::advance(Duration::from_millis(60)).await;
        a.touch();
        let start = Instant::now();
        a.expired(idle).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }
}
