//! SMTP into HTTP (`traffic_type: smtp`, issue 17 §2): lb-node speaks SMTP
//! (RFC 5321) to clients and POSTs each accepted message to the
//! instance's HTTP backends. `command.rs` parses a line, `session.rs` is
//! the conversation's state machine, `data.rs` reads lines and messages,
//! `deliver.rs` does AUTH, the rate limit and the POST, `reply.rs` holds
//! the replies; this file is the connection: admission, the read/reply
//! loop with its idle timeout, and the STARTTLS seam.

pub mod command;
pub mod data;
pub mod deliver;
pub mod reply;
pub mod session;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{ActiveConfig, Node};
use crate::model::smtp::Smtp;
use data::{Line, Message};
use deliver::Client;
use reply::Reply;
use session::{Features, Limits, Session, Step};

/// A client stream: plain TCP, or TLS after STARTTLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The TLS config STARTTLS upgrades with; `None`: STARTTLS is not offered.
/// The instance's certificates (the `tls` object) are not wired to smtp
/// instances yet: this is where they come in.
pub type TlsConfig = Option<Arc<rustls::ServerConfig>>;

/// Serves SMTP clients until `stop` turns true.
pub async fn serve(node: Arc<Node>, listener: Arc<TcpListener>, stop: watch::Receiver<bool>) {
    let stop_conns = stop.clone();
    super::accept_loop(listener, stop, move |stream, peer| {
        serve_client(node.clone(), stream, peer, stop_conns.clone())
    })
    .await
}

async fn serve_client(
    node: Arc<Node>,
    mut stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let Some(_conn) = node.counters.admit(node.max_connections.load(Relaxed)) else {
        let _ = stream
            .write_all(&reply::too_many_connections().to_bytes())
            .await;
        return;
    };
    let _ = stream.set_nodelay(true);
    let Some(active) = node.active.load_full() else {
        let _ = stream.write_all(&reply::shutting_down().to_bytes()).await;
        return;
    };
    let smtp = active.config.smtp.clone().unwrap_or_default();
    let conn = Conn::new(Box::new(stream), &smtp);
    let tls = starttls_config(&active);
    if let Err(e) = converse(&node, &active, conn, peer, &smtp, tls, stop).await {
        tracing::debug!("smtp client {peer}: {e}");
    }
}

/// What STARTTLS upgrades with: the instance's certificate once the `tls`
/// object reaches smtp instances (the TLS termination work builds the
/// `rustls::ServerConfig` from it; this is where it plugs in). Until then
/// STARTTLS is neither offered nor accepted.
fn starttls_config(_active: &ActiveConfig) -> TlsConfig {
    None
}

/// The node's name in the banner and EHLO: its address literal (§4.1.3).
fn hostname(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// One client's stream with its read buffer and the replies not yet sent.
pub struct Conn {
    io: BufReader<Box<dyn Io>>,
    out: Vec<u8>,
    idle: Duration,
    max_line: usize,
}

/// What the next read gave.
enum Input {
    Line(Vec<u8>),
    TooLong,
    /// Closed by the client, or no command within the idle timeout
    /// (`true`), or the listener stops (`false`: the 421 goes first).
    End(Option<Reply>),
}

impl Conn {
    pub fn new(io: Box<dyn Io>, smtp: &Smtp) -> Conn {
        Conn {
            io: BufReader::new(io),
            out: Vec::new(),
            idle: Duration::from_secs(u64::from(smtp.idle_timeout)),
            max_line: smtp.max_line_length as usize,
        }
    }

    fn queue(&mut self, r: &Reply) {
        r.write_to(&mut self.out);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            let io = self.io.get_mut();
            io.write_all(&out).await?;
            io.flush().await?;
        }
        Ok(())
    }

    /// The next command line. Replies are sent when no pipelined command
    /// is waiting in the buffer (RFC 2920: one write per group).
    async fn next(&mut self, stop: &mut watch::Receiver<bool>) -> std::io::Result<Input> {
        if self.io.buffer().is_empty() {
            self.flush().await?;
        }
        let read = data::read_line(&mut self.io, self.max_line);
        tokio::select! {
            biased;
            r = tokio::time::timeout(self.idle, read) => match r {
                Err(_) => Ok(Input::End(Some(reply::idle_timeout()))),
                Ok(Ok(Line::Line(l))) => Ok(Input::Line(l)),
                Ok(Ok(Line::TooLong)) => Ok(Input::TooLong),
                Ok(Ok(Line::Closed)) => Ok(Input::End(None)),
                Ok(Err(e)) => Err(e),
            },
            _ = stop.wait_for(|s| *s) => Ok(Input::End(Some(reply::shutting_down()))),
        }
    }

    /// The message after the 354; `None`: no line for the idle timeout (a
    /// client silent in the middle of a message is as idle as one between
    /// commands).
    async fn message(&mut self, max: u64) -> std::io::Result<Option<Message>> {
        self.flush().await?;
        match data::read_message(&mut self.io, max, self.idle).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The conversation on `conn` until QUIT, a close, a timeout or too many
/// bad commands. `tls`: offered by STARTTLS when given.
async fn converse(
    node: &Node,
    active: &ActiveConfig,
    mut conn: Conn,
    peer: SocketAddr,
    smtp: &Smtp,
    tls: TlsConfig,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let limits = Limits {
        max_message_bytes: smtp.max_message_bytes,
        max_recipients: smtp.max_recipients,
        max_bad_commands: smtp.max_bad_commands,
    };
    let features = Features {
        auth: !active.auth.is_empty(),
        starttls: tls.is_some(),
    };
    let mut session = Session::new(limits, features, hostname(active.config.listen.ip()));
    let mut upstream = Vec::new();
    conn.queue(&session.banner());
    loop {
        let step = match conn.next(&mut stop).await? {
            Input::Line(line) => session.line(&line),
            Input::TooLong => session.line_too_long(),
            Input::End(last) => {
                if let Some(r) = last {
                    conn.queue(&r);
                }
                return conn.flush().await;
            }
        };
        // Each login and message goes by the config in force now (its
        // members, users and limits), not the one the connection began with.
        let current = node.active.load_full();
        let client = Client {
            node,
            active: current.as_deref().unwrap_or(active),
            peer,
            upstream: &upstream,
        };
        let step = match step {
            Step::Authenticate { user, password } => {
                conn.flush().await?;
                let (result, named) =
                    deliver::authenticate(&client, &smtp.deliver_path, &user, &password).await;
                upstream = named;
                session.authenticated(result)
            }
            Step::Data(go) => {
                conn.queue(&go);
                let Some(message) = conn.message(session.max_message_bytes()).await? else {
                    conn.queue(&reply::idle_timeout());
                    return conn.flush().await;
                };
                let envelope = session.end_data();
                let answer = match (message, envelope) {
                    (Message::Closed, _) | (_, None) => return Ok(()),
                    (Message::TooBig, _) => reply::message_too_big(),
                    (Message::Complete(body), Some(env)) => {
                        let client = Client {
                            upstream: &upstream,
                            ..client
                        };
                        deliver::deliver(&client, &smtp.deliver_path, &env, Bytes::from(body)).await
                    }
                };
                // No backend: the service is not available (§3.8).
                if answer.code == 421 {
                    Step::Close(answer)
                } else {
                    Step::Reply(answer)
                }
            }
            step => step,
        };
        match step {
            Step::Reply(r) => conn.queue(&r),
            Step::Close(r) => {
                conn.queue(&r);
                return conn.flush().await;
            }
            Step::StartTls(r) => {
                conn.queue(&r);
                conn = starttls(conn, tls.clone()).await?;
                session.tls_started();
            }
            // The session gives these only from `line`, handled above.
            Step::Authenticate { .. } | Step::Data(_) => {
                conn.queue(&Reply::new(451, "4.3.0", "Internal error"));
            }
        }
    }
}

/// Sends the 220 and turns the connection into TLS. Pipelined plaintext
/// after STARTTLS is dropped (RFC 3207 §5: it must not be believed).
async fn starttls(mut conn: Conn, tls: TlsConfig) -> std::io::Result<Conn> {
    conn.flush().await?;
    let Some(config) = tls else {
        return Err(std::io::Error::other("STARTTLS without a TLS config"));
    };
    let (idle, max_line) = (conn.idle, conn.max_line);
    let plain = conn.io.into_inner();
    let accepted =
        tokio::time::timeout(idle, tokio_rustls::TlsAcceptor::from(config).accept(plain))
            .await
            .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
    Ok(Conn {
        io: BufReader::new(Box::new(accepted)),
        out: Vec::new(),
        idle,
        max_line,
    })
}

#[cfg(test)]
mod tests;
