//! What lb-node does with HTTP/2 clients (prior knowledge) that hold a
//! connection without using it, against the real binary: a connection with
//! no stream open for `client_idle_ms` gets GOAWAY and is closed, one with a
//! stream in progress is not, a client that stops answering pings is
//! closed, and an oversized header list never reaches a backend.
//!
//! Most tests speak raw frames, to see exactly which frames the node sends
//! (GOAWAY, PING) and to answer or ignore PINGs on purpose.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::backends::HttpBackend;
use common::node::{config_with, free_addr, wait_status, LbNode};
use serde_json::{json, Value};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

/// `client_idle_ms` of the nodes here: small, so the tests take seconds.
const IDLE: Duration = Duration::from_millis(1000);

/// An HTTP node in front of `backend` with `client_idle_ms` = `IDLE` and a
/// first-byte timeout long enough for the slow responses below.
fn h2_node(backend: SocketAddr, extra: Value) -> (LbNode, SocketAddr) {
    let node = LbNode::start();
    let listen = free_addr();
    let mut config = config_with(
        1,
        "http",
        listen,
        &[backend],
        json!({"timeouts": {"connect_ms": 1000, "first_byte_ms": 20_000, "backend_idle_ms": 30_000,
            "client_idle_ms": IDLE.as_millis() as u64, "handshake_ms": 5000}}),
    );
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let (s, v) = node.put_config(&config);
    assert_eq!(s, 200, "{v}");
    (node, listen)
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn ends_stream(&self, stream: u32) -> bool {
        self.stream == stream && matches!(self.kind, DATA | HEADERS) && self.flags & END_STREAM != 0
    }
}

/// What `H2::read` ended with.
#[derive(Debug)]
enum Got {
    Frame(Frame),
    /// The node closed the connection (FIN or reset).
    Closed,
}

/// A raw HTTP/2 client connection. As a live client it ACKs SETTINGS and,
/// unless told not to, PINGs.
struct H2 {
    conn: TcpStream,
    answer_pings: bool,
    pings_seen: usize,
}

impl H2 {
    fn connect(addr: SocketAddr, answer_pings: bool) -> H2 {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        let mut h2 = H2 {
            conn,
            answer_pings,
            pings_seen: 0,
        };
        h2.send(SETTINGS, 0, 0, &[]);
        h2
    }

    fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        let mut frame = len.to_be_bytes()[1..].to_vec();
        frame.extend([kind, flags]);
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        self.conn.write_all(&frame).unwrap();
    }

    /// A GET of `path` on `stream` (odd, increasing), no body.
    fn get(&mut self, stream: u32, path: &str) {
        // HPACK: :method GET and :scheme http from the static table, then
        // :path and :authority as literals with an indexed name.
        let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
        block.extend(path.as_bytes());
        block.extend([0x01, 1, b't']);
        self.send(HEADERS, END_HEADERS | END_STREAM, stream, &block);
    }

    /// The next frame the node sends (handling SETTINGS and PINGs on the
    /// way), or its close; panics if neither came within `limit`.
    fn read(&mut self, limit: Duration) -> Got {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "nothing from the node within {limit:?}");
            self.conn.set_read_timeout(Some(left)).unwrap();
            let mut head = [0u8; 9];
            match self.conn.read_exact(&mut head) {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                    ) =>
                {
                    return Got::Closed
                }
                Err(e) => panic!("nothing from the node within {limit:?}: {e}"),
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            self.conn.read_exact(&mut payload).unwrap();
            let frame = Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload,
            };
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => self.send(SETTINGS, ACK, 0, &[]),
                PING if frame.flags & ACK == 0 => {
                    self.pings_seen += 1;
                    if self.answer_pings {
                        self.send(PING, ACK, 0, &frame.payload);
                    }
                }
                _ => return Got::Frame(frame),
            }
        }
    }

    /// Frames until `stream` has ended; panics on a GOAWAY or a close first.
    /// The frames, the response's first (HEADERS) when it came.
    fn finish(&mut self, stream: u32, limit: Duration) -> (Vec<Frame>, Instant) {
        let mut frames = Vec::new();
        let mut headers_at = None;
        loop {
            match self.read(limit) {
                Got::Frame(f) if f.kind == GOAWAY => {
                    panic!("GOAWAY with stream {stream} open: {f:?}")
                }
                Got::Frame(f) => {
                    if f.kind == HEADERS && f.stream == stream {
                        headers_at.get_or_insert_with(Instant::now);
                    }
                    let done = f.ends_stream(stream);
                    frames.push(f);
                    if done {
                        return (frames, headers_at.expect("a HEADERS frame"));
                    }
                }
                Got::Closed => panic!("closed with stream {stream} open; got {frames:?}"),
            }
        }
    }

    /// Waits for the node's GOAWAY (other frames are skipped); its error
    /// code, and how long it took.
    fn goaway(&mut self, limit: Duration) -> (u32, Duration) {
        let start = Instant::now();
        loop {
            match self.read(limit) {
                Got::Frame(f) if f.kind == GOAWAY => {
                    let code = u32::from_be_bytes(f.payload[4..8].try_into().unwrap());
                    return (code, start.elapsed());
                }
                Got::Frame(_) => {}
                Got::Closed => panic!("closed without GOAWAY"),
            }
        }
    }

    /// Waits for the close (other frames are skipped); how long it took.
    fn closed(&mut self, limit: Duration) -> Duration {
        let start = Instant::now();
        while let Got::Frame(_) = self.read(limit) {}
        start.elapsed()
    }
}

/// A `:status: 200` HEADERS frame (static table index 8).
fn is_200(frames: &[Frame]) -> bool {
    frames
        .iter()
        .any(|f| f.kind == HEADERS && f.payload.first() == Some(&0x88))
}

fn body(frames: &[Frame]) -> String {
    let data = frames.iter().filter(|f| f.kind == DATA);
    data.map(|f| String::from_utf8_lossy(&f.payload).into_owned())
        .collect()
}

#[test]
fn a_quiet_h2_connection_gets_goaway_and_is_closed_after_client_idle_ms() {
    let a = HttpBackend::start("a");
    let (node, listen) = h2_node(a.addr(), json!({}));
    let mut h2 = H2::connect(listen, true);
    h2.get(1, "/");
    let (frames, _) = h2.finish(1, Duration::from_secs(5));
    assert!(is_200(&frames), "{frames:?}");
    assert_eq!(body(&frames), "a");
    // A live client (it answers the node's pings, so they alone would keep
    // the connection) that asks nothing more.
    let (code, took) = h2.goaway(Duration::from_secs(10));
    assert_eq!(code, 0, "GOAWAY's error code is not NO_ERROR");
    assert!(took >= IDLE * 9 / 10, "GOAWAY too early: {took:?}");
    h2.closed(Duration::from_secs(5));
    wait_status(&node, "its slot is free again", |st| {
        st["stats"]["active_connections"] == 0
    });
}

#[test]
fn an_h2_stream_in_progress_keeps_its_connection_past_client_idle_ms() {
    let a = HttpBackend::start("a");
    let (_node, listen) = h2_node(a.addr(), json!({}));
    let mut h2 = H2::connect(listen, true);
    // Waiting for its response, for two and a half idle times.
    let start = Instant::now();
    h2.get(1, "/sleep/2500");
    let (frames, _) = h2.finish(1, Duration::from_secs(10));
    assert!(is_200(&frames), "{frames:?}");
    assert!(start.elapsed() >= IDLE * 2, "{:?}", start.elapsed());
    // A response whose body trickles for 2.4 s: its headers are long sent
    // (the member answered at once), its stream still open.
    h2.get(3, "/drip/9");
    let (frames, headers_at) = h2.finish(3, Duration::from_secs(10));
    assert_eq!(body(&frames), "aaaaaaaaa");
    assert!(
        headers_at.elapsed() >= IDLE * 2,
        "{:?}",
        headers_at.elapsed()
    );
    // The node does close idle connections: it was the streams that kept this one.
    let (code, _) = h2.goaway(Duration::from_secs(10));
    assert_eq!(code, 0);
    h2.closed(Duration::from_secs(5));
}

#[test]
fn an_h2_client_that_does_not_answer_pings_is_closed_with_a_stream_open() {
    let a = HttpBackend::start("a");
    let (_node, listen) = h2_node(a.addr(), json!({}));
    let mut h2 = H2::connect(listen, false);
    // A stream open all along, so it is not the idle close that ends it.
    h2.get(1, "/sleep/8000");
    let start = Instant::now();
    loop {
        match h2.read(Duration::from_secs(7)) {
            Got::Closed => break,
            Got::Frame(f) if f.kind == HEADERS => panic!("the response came: {f:?}"),
            Got::Frame(_) => {}
        }
    }
    let took = start.elapsed();
    assert!(h2.pings_seen > 0, "closed without a ping");
    // A ping after IDLE without other frames, then at most min(IDLE, 20 s) for its ACK.
    assert!(took >= IDLE, "closed too early: {took:?}");
    assert!(took < Duration::from_secs(6), "closed late: {took:?}");
}

/// A GET with one `x-big` header of `size` bytes on a fresh HTTP/2
/// connection (the `h2` crate as the client): the response's status, or the
/// error the stream or connection ended with.
fn h2_get_with_header(listen: SocketAddr, size: usize) -> Result<u16, h2::Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await?;
        tokio::spawn(conn);
        let mut client = client.ready().await?;
        let req = http::Request::get(format!("http://{listen}/"))
            .header("x-big", "a".repeat(size))
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true)?;
        let resp = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .expect("no answer within 10 s")?;
        Ok(resp.status().as_u16())
    })
}

#[test]
fn an_oversized_h2_header_list_is_refused_and_never_reaches_the_backend() {
    let a = HttpBackend::start("a");
    let (_node, listen) = h2_node(a.addr(), json!({"max_header_bytes": 16384}));
    // Over the configured limit (a HEADERS and a CONTINUATION frame): h2
    // answers 431 itself, the connection stays usable.
    assert_eq!(h2_get_with_header(listen, 20 * 1024).unwrap(), 431);
    // Over the default 64 KiB, on a node without the setting.
    let (_other, default_limit) = h2_node(a.addr(), json!({}));
    assert_eq!(h2_get_with_header(default_limit, 100 * 1024).unwrap(), 431);
    assert_eq!(a.hits(), 0, "the backend saw an oversized request");
    // A large but allowed header list passes.
    assert_eq!(h2_get_with_header(listen, 8 * 1024).unwrap(), 200);
    assert_eq!(a.hits(), 1);
}
