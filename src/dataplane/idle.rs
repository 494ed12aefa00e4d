//! Idle deadlines, so a peer that stays connected but does nothing cannot
//! hold a `max_connections` slot for ever: a byte relay (TCP instances,
//! upgraded HTTP tunnels) with no byte in either direction for
//! `client_idle_ms` is closed (`Activity`), and so is an HTTP client
//! connection with no request open for as long (`Streams`), like nginx's
//! `keepalive_timeout`. hyper has no such setting for HTTP/2: its keep-alive
//! pings only find peers that are gone, not live ones that never ask.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};
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

/// One finished request in `Streams::state`'s high half.
const FINISHED: u64 = 1 << 32;
/// `Streams::state`'s low half: the requests open now.
const OPEN: u64 = FINISHED - 1;

/// The requests a client connection has open (HTTP/2 streams, or HTTP/1's
/// one at a time). One word for both halves, so a request costs one atomic
/// add when it starts and one when it ends, and no clock read: the low half
/// counts open requests, the high half finished ones (wrapping), so a
/// request that starts and ends between two looks of `quiet_for` still
/// shows as activity.
#[derive(Default)]
pub struct Streams {
    state: AtomicU64,
}

impl Streams {
    /// Counts a request as open until the guard drops (see `Counted`).
    pub fn open(self: &Arc<Self>) -> StreamGuard {
        self.state.fetch_add(1, Relaxed);
        StreamGuard(self.clone())
    }

    /// Whether any request ever started on the connection.
    pub fn any_opened(&self) -> bool {
        self.state.load(Relaxed) != 0
    }

    /// Resolves once no request was open for `idle`, counted from the
    /// connection's start or from the end of its last request: at `idle` to
    /// `idle` and a quarter after that. It looks four times per `idle`
    /// rather than being woken by requests, which keeps them cheap; an idle
    /// connection costs a timer wake per quarter.
    pub async fn quiet_for(&self, idle: Duration) {
        let tick = (idle / 4).max(Duration::from_millis(1));
        let mut seen = self.state.load(Relaxed);
        let mut quiet_since = Instant::now();
        loop {
            let deadline = quiet_since + idle;
            tokio::time::sleep_until((Instant::now() + tick).min(deadline)).await;
            let now = self.state.load(Relaxed);
            if now != seen || now & OPEN != 0 {
                seen = now;
                quiet_since = Instant::now();
            } else if Instant::now() >= deadline {
                return;
            }
        }
    }
}

/// A request's place in `Streams`, given back on drop (its response sent,
/// or the request abandoned: a client's reset drops it too).
pub struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // Open minus one, finished plus one, in one add (open is >= 1 here).
        self.0.state.fetch_add(FINISHED - 1, Relaxed);
    }
}

/// A response body that keeps a guard (by default its request's place in
/// `Streams`) until hyper drops it, i.e. until it was sent in full or
/// abandoned: a response that trickles for longer than `client_idle_ms`
/// keeps its connection, and a managed member with a download going stays
/// open (`wake::activity`).
pub struct Counted<B, G = StreamGuard> {
    inner: B,
    _open: G,
}

impl<B, G> Counted<B, G> {
    pub fn new(inner: B, open: G) -> Self {
        Counted { inner, _open: open }
    }
}

impl<B: Body + Unpin, G: Unpin> Body for Counted<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    // Forwarded: hyper sets END_STREAM on an empty body's HEADERS and
    // Content-Length from these.
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A future that is polled only when one of its own wakers fired, not each
/// time the task it shares is woken. A client connection's deadlines (its
/// handshake, idle and stop watches) race the connection in one `select!`,
/// which polls every branch at every wake: once per request, a timer and a
/// watch channel were polled for nothing. Wrapped, they cost two atomic
/// operations per wake and are polled when a timer or the stop fires.
pub struct OwnWakes<'a, F> {
    inner: Pin<&'a mut F>,
    flag: Arc<WakeFlag>,
}

struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, std::sync::atomic::Ordering::Release);
        self.task.wake();
    }
}

impl<'a, F: Future> OwnWakes<'a, F> {
    pub fn new(inner: Pin<&'a mut F>) -> Self {
        OwnWakes {
            inner,
            // Woken, so that the first poll registers the inner wakers.
            flag: Arc::new(WakeFlag {
                woken: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
        }
    }
}

impl<F: Future> Future for OwnWakes<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered before the flag is read: a wake between the two finds
        // the task's waker and polls again.
        self.flag.task.register(cx.waker());
        if !self
            .flag
            .woken
            .swap(false, std::sync::atomic::Ordering::Acquire)
        {
            return Poll::Pending;
        }
        let waker = Waker::from(self.flag.clone());
        self.inner.as_mut().poll(&mut Context::from_waker(&waker))
    }
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

    /// A future that counts its polls and is ready at its second.
    struct CountPolls<'a>(&'a std::cell::Cell<u32>);

    impl Future for CountPolls<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.0.set(self.0.get() + 1);
            if self.0.get() >= 2 {
                Poll::Ready(())
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn own_wakes_polls_only_after_its_own_wakers_fire() {
        // A timer that the task's other wakes must not poll.
        let timer = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(timer);
        let mut watched = OwnWakes::new(timer.as_mut());
        let noop = Waker::noop();
        let mut cx = Context::from_waker(noop);
        assert!(Pin::new(&mut watched).poll(&mut cx).is_pending());
        assert!(!watched.flag.woken.load(Relaxed));
        // The timer's wake fires when the clock passes it; then it is polled.
        tokio::time::advance(Duration::from_millis(150)).await;
        assert!(watched.flag.woken.load(Relaxed));
        assert!(Pin::new(&mut watched).poll(&mut cx).is_ready());

        // And an inner future that wakes itself is polled again.
        let polls = std::cell::Cell::new(0);
        let counting = CountPolls(&polls);
        tokio::pin!(counting);
        let mut watched = OwnWakes::new(counting.as_mut());
        assert!(Pin::new(&mut watched).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut watched).poll(&mut cx).is_ready());
        assert_eq!(polls.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn own_wakes_skips_polls_without_a_wake() {
        let polls = std::cell::Cell::new(0);
        struct Never<'a>(&'a std::cell::Cell<u32>);
        impl Future for Never<'_> {
            type Output = ();
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                self.0.set(self.0.get() + 1);
                Poll::Pending
            }
        }
        let never = Never(&polls);
        tokio::pin!(never);
        let mut watched = OwnWakes::new(never.as_mut());
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..10 {
            assert!(Pin::new(&mut watched).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.get(), 1, "polled only the first time");
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    const IDLE: Duration = Duration::from_millis(1000);

    /// Whether `quiet_for(IDLE)` resolves within `within` from now.
    async fn quiet_within(s: &Streams, within: Duration) -> bool {
        tokio::time::timeout(within, s.quiet_for(IDLE))
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_requests_is_quiet_after_idle() {
        let s = Streams::default();
        let start = Instant::now();
        s.quiet_for(IDLE).await;
        assert_eq!(start.elapsed(), IDLE);
        assert!(!s.any_opened());
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_request_holds_it_off_and_its_end_restarts_the_wait() {
        let s = Arc::new(Streams::default());
        let guard = s.open();
        assert!(s.any_opened());
        let watcher = {
            let s = s.clone();
            tokio::spawn(async move {
                s.quiet_for(IDLE).await;
                Instant::now()
            })
        };
        tokio::time::sleep(IDLE * 10).await;
        assert!(!watcher.is_finished(), "quiet with a request open");
        let ended = Instant::now();
        drop(guard);
        let quiet_at = watcher.await.unwrap();
        let after = quiet_at - ended;
        assert!(after >= IDLE && after <= IDLE + IDLE / 4, "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_between_two_looks_still_counts() {
        let s = Arc::new(Streams::default());
        let watch = s.quiet_for(IDLE);
        tokio::pin!(watch);
        // Past the first look (at a quarter), then a request comes and goes
        // before the second.
        assert!(tokio::time::timeout(IDLE * 3 / 8, &mut watch)
            .await
            .is_err());
        let ended = Instant::now();
        drop(s.open());
        watch.await;
        assert!(ended.elapsed() >= IDLE, "{:?}", ended.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_body_counts_until_dropped() {
        let s = Arc::new(Streams::default());
        let mut body = Counted::new(Full::new(bytes::Bytes::from_static(b"hi")), s.open());
        assert_eq!(body.size_hint().exact(), Some(2));
        assert!(!body.is_end_stream());
        assert!(
            !quiet_within(&s, IDLE * 3).await,
            "quiet while the body is unsent"
        );
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hi");
        assert!(body.is_end_stream());
        drop(body);
        assert!(quiet_within(&s, IDLE * 2).await);
    }

    #[test]
    fn the_halves_do_not_mix() {
        let s = Arc::new(Streams::default());
        let guards: Vec<_> = (0..3).map(|_| s.open()).collect();
        assert_eq!(s.state.load(Relaxed), 3);
        drop(guards);
        assert_eq!(s.state.load(Relaxed), 3 * FINISHED);
    }
}
