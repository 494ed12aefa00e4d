//! One SMTP conversation's state machine (RFC 5321 §4.1.4, RFC 4954 AUTH):
//! pure, no I/O. The connection (`conn.rs`) feeds it lines and the outcome
//! of what it asked for (an auth decision, a message read), and writes the
//! replies it gives, in order, which is all PIPELINING needs.

use std::borrow::Cow;

use base64::Engine as _;

use super::command::{self, Command, Mechanism};
use super::reply::{self, Reply};

/// The limits of the `smtp` object that the conversation enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: u64,
    pub max_recipients: u32,
    pub max_bad_commands: u32,
}

/// What the node offers on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// The instance has auth: AUTH is offered and MAIL needs it.
    pub auth: bool,
    /// A TLS config is there and the connection is not TLS yet. AUTH then
    /// waits for STARTTLS: no password crosses in the clear where it need not.
    pub starttls: bool,
}

/// What the connection does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Reply(Reply),
    /// Reply, then close.
    Close(Reply),
    /// Ask the auth stage, then give its outcome to [`Session::authenticated`].
    Authenticate {
        user: String,
        password: String,
    },
    /// Send the 354, read the message, then call [`Session::end_data`].
    Data(Reply),
    /// Send `220 2.0.0 Ready to start TLS`, upgrade, then call
    /// [`Session::tls_started`].
    StartTls(Reply),
}

/// The envelope of one message: what the backend gets in headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub helo: String,
    /// The auth decision's `auth_token` (the user's name for `basic`).
    pub auth_token: Option<String>,
}

/// The auth stage's answer about a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    Granted {
        auth_token: Option<String>,
    },
    Refused,
    /// The auth service could not decide (`failure: deny`).
    Unavailable,
}

#[derive(Debug)]
enum Pending {
    /// `AUTH PLAIN` without an initial response: the next line is it.
    Plain,
    /// `AUTH LOGIN`: the user name, then the password.
    LoginUser,
    LoginPassword {
        user: String,
    },
}

#[derive(Debug)]
struct Transaction {
    mail_from: String,
    rcpt_to: Vec<String>,
}

#[derive(Debug)]
pub struct Session {
    limits: Limits,
    features: Features,
    /// The name this node gives itself in the banner and EHLO.
    hostname: String,
    helo: Option<String>,
    /// `Some` once authenticated (the token may be absent: `failure: allow`).
    authed: Option<Option<String>>,
    pending: Option<Pending>,
    tx: Option<Transaction>,
    bad_commands: u32,
}

impl Session {
    pub fn new(limits: Limits, features: Features, hostname: String) -> Session {
        Session {
            limits,
            features,
            hostname,
            helo: None,
            authed: None,
            pending: None,
            tx: None,
            bad_commands: 0,
        }
    }

    pub fn banner(&self) -> Reply {
        Reply::bare(220, format!("{} ESMTP lbaas ready", self.hostname))
    }

    /// One line from the client, without its CRLF.
    pub fn line(&mut self, line: &[u8]) -> Step {
        if let Some(pending) = self.pending.take() {
            return self.auth_response(pending, line);
        }
        match command::parse(line) {
            Ok(c) => self.command(c),
            Err(r) => self.bad(r),
        }
    }

    /// A line over `max_line_length` (its rest was discarded).
    pub fn line_too_long(&mut self) -> Step {
        self.pending = None;
        self.bad(reply::line_too_long())
    }

    /// A refusal that counts towards `max_bad_commands`; the one that
    /// reaches it closes the connection instead.
    fn bad(&mut self, r: Reply) -> Step {
        self.bad_commands += 1;
        if self.bad_commands >= self.limits.max_bad_commands {
            Step::Close(reply::too_many_bad_commands())
        } else {
            Step::Reply(r)
        }
    }

    fn command(&mut self, c: Command) -> Step {
        match c {
            Command::Ehlo(domain) => Step::Reply(self.greet(domain, true)),
            Command::Helo(domain) => Step::Reply(self.greet(domain, false)),
            Command::Quit => Step::Close(reply::bye()),
            Command::Noop => Step::Reply(Reply::ok("OK")),
            Command::Rset => {
                self.tx = None;
                Step::Reply(Reply::ok("Reset"))
            }
            Command::Vrfy => Step::Reply(Reply::new(252, "2.1.5", "Cannot VRFY user")),
            Command::Help => Step::Reply(Reply::new(214, "2.0.0", "See RFC 5321")),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
            Command::Mail { from, size } => self.mail(from, size),
            Command::Rcpt { to } => self.rcpt(to),
            Command::Data => self.data(),
        }
    }

    fn greet(&mut self, domain: String, ehlo: bool) -> Reply {
        // EHLO/HELO also reset the transaction (§4.1.4).
        self.tx = None;
        self.helo = Some(domain.clone());
        let first = format!("{} greets {domain}", self.hostname);
        if !ehlo {
            return Reply::bare(250, first);
        }
        let mut lines: Vec<Cow<'static, str>> = vec![
            first.into(),
            format!("SIZE {}", self.limits.max_message_bytes).into(),
            "8BITMIME".into(),
            "PIPELINING".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.features.starttls {
            lines.push("STARTTLS".into());
        }
        if self.features.auth && self.authed.is_none() && !self.features.starttls {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        Reply::multi(250, lines)
    }

    fn starttls(&mut self) -> Step {
        if !self.features.starttls {
            return self.bad(Reply::new(502, "5.5.1", "STARTTLS not available"));
        }
        Step::StartTls(Reply::new(220, "2.0.0", "Ready to start TLS"))
    }

    /// After the TLS handshake: the client starts over (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        self.features.starttls = false;
        self.helo = None;
        self.authed = None;
        self.tx = None;
        self.pending = None;
    }

    fn auth(&mut self, mechanism: Mechanism, initial: Option<String>) -> Step {
        if !self.features.auth {
            return self.bad(reply::bad_sequence("AUTH not available"));
        }
        if self.features.starttls {
            // RFC 4954 §6: the instance has TLS, so credentials wait for it.
            return self.bad(Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism: STARTTLS first",
            ));
        }
        if self.helo.is_none() {
            return self.bad(reply::bad_sequence("Send EHLO first"));
        }
        if self.authed.is_some() {
            return self.bad(reply::bad_sequence("Already authenticated"));
        }
        if self.tx.is_some() {
            return self.bad(reply::bad_sequence("AUTH not allowed during a transaction"));
        }
        match (mechanism, initial) {
            (Mechanism::Plain, None) => self.challenge(Pending::Plain, ""),
            (Mechanism::Plain, Some(i)) => self.auth_response(Pending::Plain, i.as_bytes()),
            // "Username:" and "Password:", base64 (the de facto LOGIN dialogue).
            (Mechanism::Login, None) => self.challenge(Pending::LoginUser, "VXNlcm5hbWU6"),
            (Mechanism::Login, Some(i)) => self.auth_response(Pending::LoginUser, i.as_bytes()),
        }
    }

    fn challenge(&mut self, pending: Pending, text: &'static str) -> Step {
        self.pending = Some(pending);
        Step::Reply(Reply::bare(334, text))
    }

    /// A base64 line answering a challenge (or an initial response).
    fn auth_response(&mut self, pending: Pending, line: &[u8]) -> Step {
        if line == b"*" {
            return Step::Reply(Reply::new(501, "5.0.0", "Authentication cancelled"));
        }
        // RFC 4954 §4: "=" is an empty initial response.
        let decoded = if line == b"=" {
            Some(Vec::new())
        } else {
            base64::engine::general_purpose::STANDARD.decode(line).ok()
        };
        let Some(text) = decoded.and_then(|d| String::from_utf8(d).ok()) else {
            return self.bad(Reply::new(501, "5.5.2", "Invalid base64"));
        };
        match pending {
            Pending::Plain => {
                // authzid NUL authcid NUL password (RFC 4616); authzid ignored.
                let mut parts = text.splitn(3, '\0');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(_), Some(user), Some(password)) => Step::Authenticate {
                        user: user.to_string(),
                        password: password.to_string(),
                    },
                    _ => self.bad(Reply::new(501, "5.5.2", "Malformed PLAIN response")),
                }
            }
            Pending::LoginUser => {
                self.challenge(Pending::LoginPassword { user: text }, "UGFzc3dvcmQ6")
            }
            Pending::LoginPassword { user } => Step::Authenticate {
                user,
                password: text,
            },
        }
    }

    /// The outcome of the `Authenticate` step.
    pub fn authenticated(&mut self, result: AuthResult) -> Step {
        match result {
            AuthResult::Granted { auth_token } => {
                self.authed = Some(auth_token);
                Step::Reply(reply::auth_ok())
            }
            AuthResult::Refused => self.bad(reply::auth_failed()),
            AuthResult::Unavailable => Step::Reply(reply::auth_unavailable()),
        }
    }

    fn mail(&mut self, from: String, size: Option<u64>) -> Step {
        if self.helo.is_none() {
            return self.bad(reply::bad_sequence("Send EHLO first"));
        }
        if self.features.auth && self.authed.is_none() {
            return self.bad(reply::auth_required());
        }
        if self.tx.is_some() {
            return self.bad(reply::bad_sequence("Nested MAIL command"));
        }
        if size.is_some_and(|s| s > self.limits.max_message_bytes) {
            return Step::Reply(reply::message_too_big());
        }
        self.tx = Some(Transaction {
            mail_from: from,
            rcpt_to: Vec::new(),
        });
        Step::Reply(Reply::new(250, "2.1.0", "Sender OK"))
    }

    fn rcpt(&mut self, to: String) -> Step {
        let max = self.limits.max_recipients as usize;
        let Some(tx) = self.tx.as_mut() else {
            return self.bad(reply::bad_sequence("Send MAIL first"));
        };
        if tx.rcpt_to.len() >= max {
            return Step::Reply(Reply::new(452, "4.5.3", "Too many recipients"));
        }
        tx.rcpt_to.push(to);
        Step::Reply(Reply::new(250, "2.1.5", "Recipient OK"))
    }

    fn data(&mut self) -> Step {
        match &self.tx {
            None => self.bad(reply::bad_sequence("Send MAIL first")),
            Some(tx) if tx.rcpt_to.is_empty() => {
                self.bad(Reply::new(554, "5.5.1", "No valid recipients"))
            }
            Some(_) => Step::Data(Reply::bare(354, "End data with <CR><LF>.<CR><LF>")),
        }
    }

    /// The message was read: its envelope (the transaction ends here,
    /// whatever comes of the delivery, §4.1.1.4).
    pub fn end_data(&mut self) -> Option<Envelope> {
        let tx = self.tx.take()?;
        Some(Envelope {
            mail_from: tx.mail_from,
            rcpt_to: tx.rcpt_to,
            helo: self.helo.clone().unwrap_or_default(),
            auth_token: self.authed.clone().flatten(),
        })
    }

    pub fn max_message_bytes(&self) -> u64 {
        self.limits.max_message_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_message_bytes: 1000,
        max_recipients: 2,
        max_bad_commands: 3,
    };

    fn session(auth: bool) -> Session {
        Session::new(
            LIMITS,
            Features {
                auth,
                starttls: false,
            },
            "[127.0.0.1]".into(),
        )
    }

    fn code(step: Step) -> u16 {
        match step {
            Step::Reply(r) | Step::Data(r) | Step::StartTls(r) => r.code,
            Step::Close(r) => 1000 + r.code,
            Step::Authenticate { .. } => 0,
        }
    }

    fn say(s: &mut Session, line: &str) -> u16 {
        code(s.line(line.as_bytes()))
    }

    #[test]
    fn a_plain_transaction_gives_its_envelope() {
        let mut s = session(false);
        let Step::Reply(ehlo) = s.line(b"EHLO client.example") else {
            panic!()
        };
        let text = String::from_utf8(ehlo.to_bytes()).unwrap();
        assert!(
            text.contains("250-SIZE 1000\r\n") && text.contains("PIPELINING"),
            "{text}"
        );
        assert!(!text.contains("AUTH"), "no auth configured: {text}");
        assert_eq!(say(&mut s, "MAIL FROM:<a@x.example>"), 250);
        assert_eq!(say(&mut s, "RCPT TO:<b@y.example>"), 250);
        assert_eq!(say(&mut s, "RCPT TO:<c@y.example>"), 250);
        assert_eq!(
            say(&mut s, "RCPT TO:<d@y.example>"),
            452,
            "over max_recipients"
        );
        assert_eq!(say(&mut s, "DATA"), 354);
        let env = s.end_data().unwrap();
        assert_eq!(env.mail_from, "a@x.example");
        assert_eq!(env.rcpt_to, ["b@y.example", "c@y.example"]);
        assert_eq!(env.helo, "client.example");
        assert_eq!(env.auth_token, None);
        // The transaction is over: DATA again is out of sequence.
        assert_eq!(say(&mut s, "DATA"), 503);
        assert_eq!(say(&mut s, "QUIT"), 1221);
    }

    #[test]
    fn commands_out_of_sequence_are_refused() {
        let mut s = session(false);
        assert_eq!(say(&mut s, "MAIL FROM:<a@x.example>"), 503, "before EHLO");
        assert_eq!(say(&mut s, "HELO c"), 250);
        assert_eq!(say(&mut s, "RCPT TO:<b@y.example>"), 503, "before MAIL");
        assert_eq!(say(&mut s, "MAIL FROM:<a@x.example> SIZE=1001"), 552);
        assert_eq!(say(&mut s, "MAIL FROM:<a@x.example>"), 250);
        assert_eq!(say(&mut s, "DATA"), 1421, "third bad command closes");
    }

    #[test]
    fn too_many_bad_commands_close_the_connection() {
        let mut s = session(false);
        assert_eq!(say(&mut s, "FROB"), 500);
        assert_eq!(code(s.line_too_long()), 500);
        assert_eq!(say(&mut s, "FROB"), 1421);
    }

    #[test]
    fn rset_and_ehlo_end_the_transaction() {
        let mut s = session(false);
        say(&mut s, "EHLO c");
        assert_eq!(say(&mut s, "MAIL FROM:<>"), 250);
        assert_eq!(say(&mut s, "RSET"), 250);
        assert_eq!(say(&mut s, "MAIL FROM:<>"), 250);
        say(&mut s, "EHLO c");
        assert_eq!(say(&mut s, "MAIL FROM:<>"), 250);
    }

    #[test]
    fn auth_plain_and_login_ask_for_a_decision() {
        let patient = Limits {
            max_bad_commands: 10,
            ..LIMITS
        };
        let features = Features {
            auth: true,
            starttls: false,
        };
        let mut s = Session::new(patient, features, "h".into());
        say(&mut s, "EHLO c");
        assert_eq!(say(&mut s, "MAIL FROM:<a@x.example>"), 530);
        // "\0ann\0pw" in one line.
        let step = s.line(b"AUTH PLAIN AGFubgBwdw==");
        assert_eq!(
            step,
            Step::Authenticate {
                user: "ann".into(),
                password: "pw".into()
            }
        );
        assert_eq!(code(s.authenticated(AuthResult::Refused)), 535);
        // LOGIN: user and password in turn.
        assert_eq!(say(&mut s, "AUTH LOGIN"), 334);
        assert_eq!(say(&mut s, "YW5u"), 334);
        assert_eq!(
            s.line(b"cHc="),
            Step::Authenticate {
                user: "ann".into(),
                password: "pw".into()
            }
        );
        let granted = AuthResult::Granted {
            auth_token: Some("tok".into()),
        };
        assert_eq!(code(s.authenticated(granted)), 235);
        assert_eq!(say(&mut s, "AUTH PLAIN"), 503, "already authenticated");
        assert_eq!(say(&mut s, "MAIL FROM:<a@x.example>"), 250);
        say(&mut s, "RCPT TO:<b@y.example>");
        say(&mut s, "DATA");
        assert_eq!(s.end_data().unwrap().auth_token.as_deref(), Some("tok"));
    }

    #[test]
    fn auth_challenges_take_cancel_and_bad_base64() {
        let mut s = session(true);
        say(&mut s, "EHLO c");
        assert_eq!(say(&mut s, "AUTH PLAIN"), 334);
        assert_eq!(say(&mut s, "*"), 501);
        assert_eq!(say(&mut s, "AUTH PLAIN"), 334);
        assert_eq!(say(&mut s, "not base64!"), 501);
        // Without auth configured AUTH is not offered.
        let mut plain = session(false);
        say(&mut plain, "EHLO c");
        assert_eq!(say(&mut plain, "AUTH PLAIN AGFubgBwdw=="), 503);
    }

    #[test]
    fn starttls_is_offered_only_with_a_tls_config_and_resets_the_session() {
        let mut s = Session::new(
            LIMITS,
            Features {
                auth: false,
                starttls: true,
            },
            "h".into(),
        );
        let Step::Reply(ehlo) = s.line(b"EHLO c") else {
            panic!()
        };
        assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"));
        assert_eq!(say(&mut s, "STARTTLS"), 220);
        s.tls_started();
        assert_eq!(say(&mut s, "MAIL FROM:<>"), 503, "EHLO again after TLS");
        let Step::Reply(ehlo) = s.line(b"EHLO c") else {
            panic!()
        };
        assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"));
        assert_eq!(say(&mut session(false), "STARTTLS"), 502);
    }

    #[test]
    fn with_tls_available_auth_waits_for_starttls() {
        let mut s = Session::new(
            LIMITS,
            Features {
                auth: true,
                starttls: true,
            },
            "h".into(),
        );
        let Step::Reply(ehlo) = s.line(b"EHLO c") else {
            panic!()
        };
        assert!(
            !ehlo.lines.iter().any(|l| l.starts_with("AUTH")),
            "{ehlo:?}"
        );
        assert_eq!(say(&mut s, "AUTH PLAIN AGFubgBwdw=="), 538);
        assert_eq!(say(&mut s, "STARTTLS"), 220);
        s.tls_started();
        let Step::Reply(ehlo) = s.line(b"EHLO c") else {
            panic!()
        };
        assert!(
            ehlo.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"),
            "{ehlo:?}"
        );
        assert!(matches!(
            s.line(b"AUTH PLAIN AGFubgBwdw=="),
            Step::Authenticate { .. }
        ));
    }
}
