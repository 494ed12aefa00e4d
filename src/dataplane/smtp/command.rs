//! The SMTP command parser (RFC 5321 §4.1): one line, without its CRLF,
//! into a [`Command`] or the reply that says what is wrong with it. Pure;
//! the session decides whether a command fits the conversation.

use super::reply::{self, Reply};

/// A path of `MAIL FROM`/`RCPT TO`, without its angle brackets (empty for
/// the null reverse path `<>`).
pub type Mailbox = String;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail {
        from: Mailbox,
        size: Option<u64>,
    },
    Rcpt {
        to: Mailbox,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth {
        mechanism: Mechanism,
        initial: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

/// The longest mailbox accepted (RFC 5321 §4.5.3.1.3: 256 octets for a path).
const MAX_PATH: usize = 256;

pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    let line = std::str::from_utf8(line)
        .ok()
        .filter(|l| l.is_ascii())
        .ok_or_else(|| reply::syntax("Commands are ASCII"))?;
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    let no_args = |c: Command| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(reply::syntax("This command takes no argument"))
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "HELO" => domain(rest).map(Command::Helo),
        "EHLO" => domain(rest).map(Command::Ehlo),
        "MAIL" => mail(rest),
        "RCPT" => rcpt(rest),
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "QUIT" => no_args(Command::Quit),
        "STARTTLS" => no_args(Command::StartTls),
        // NOOP and HELP may carry a string, which is ignored.
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" | "EXPN" => Ok(Command::Vrfy),
        "AUTH" => auth(rest),
        _ => Err(reply::unknown_command()),
    }
}

fn domain(rest: &str) -> Result<String, Reply> {
    let ok = !rest.is_empty() && rest.len() <= 255 && rest.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(rest.to_string())
    } else {
        Err(reply::syntax("HELO/EHLO needs a domain or address literal"))
    }
}

/// `FROM:<path> [SIZE=n] [BODY=7BIT|8BITMIME]`.
fn mail(rest: &str) -> Result<Command, Reply> {
    let (from, params) = path_after(rest, "FROM:")?;
    let mut size = None;
    for param in params {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match key.to_ascii_uppercase().as_str() {
            "SIZE" => {
                size = Some(
                    value
                        .parse()
                        .map_err(|_| reply::syntax("SIZE takes a number of octets"))?,
                )
            }
            "BODY" if ["7BIT", "8BITMIME"].contains(&value.to_ascii_uppercase().as_str()) => {}
            _ => return Err(unknown_parameter()),
        }
    }
    Ok(Command::Mail { from, size })
}

/// `TO:<path>`; no parameters are advertised for RCPT.
fn rcpt(rest: &str) -> Result<Command, Reply> {
    let (to, mut params) = path_after(rest, "TO:")?;
    if params.next().is_some() {
        return Err(unknown_parameter());
    }
    if to.is_empty() {
        return Err(bad_mailbox());
    }
    Ok(Command::Rcpt { to })
}

fn unknown_parameter() -> Reply {
    Reply::new(555, "5.5.4", "Parameter not recognized or not implemented")
}

fn bad_mailbox() -> Reply {
    Reply::new(501, "5.1.3", "Bad mailbox address syntax")
}

/// The `<path>` after `keyword` (case-insensitive, a space after the colon
/// tolerated as many clients send one) and the parameters after it.
fn path_after<'a>(
    rest: &'a str,
    keyword: &str,
) -> Result<(Mailbox, impl Iterator<Item = &'a str>), Reply> {
    let head = rest.get(..keyword.len()).unwrap_or("");
    if !head.eq_ignore_ascii_case(keyword) {
        return Err(reply::syntax(
            "Expected MAIL FROM:<address> or RCPT TO:<address>",
        ));
    }
    let after = rest[keyword.len()..].trim_start();
    let inner = after
        .strip_prefix('<')
        .and_then(|a| a.split_once('>'))
        .ok_or_else(bad_mailbox)?;
    let (path, params) = inner;
    // A source route (`<@a,@b:user@c>`) is accepted and ignored (§4.1.2).
    let path = match path.strip_prefix('@') {
        Some(route) => route.split_once(':').map_or("", |(_, p)| p),
        None => path,
    };
    // The envelope goes to the backend in headers, the recipients joined by
    // commas: a mailbox holds no comma, space, bracket or control character.
    let clean = path.len() <= MAX_PATH
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"<>,".contains(&b));
    if !clean || (!path.is_empty() && !path.contains('@')) {
        return Err(bad_mailbox());
    }
    if !params.is_empty() && !params.starts_with(' ') {
        return Err(bad_mailbox());
    }
    Ok((path.to_string(), params.split_whitespace()))
}

fn auth(rest: &str) -> Result<Command, Reply> {
    let (mechanism, initial) = rest.split_once(' ').unwrap_or((rest, ""));
    let mechanism = match mechanism.to_ascii_uppercase().as_str() {
        "PLAIN" => Mechanism::Plain,
        "LOGIN" => Mechanism::Login,
        "" => return Err(reply::syntax("AUTH needs a mechanism")),
        _ => {
            return Err(Reply::new(
                504,
                "5.5.4",
                "Unrecognized authentication mechanism",
            ))
        }
    };
    let initial = initial.trim();
    Ok(Command::Auth {
        mechanism,
        initial: (!initial.is_empty()).then(|| initial.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line.as_bytes()).unwrap_or_else(|r| panic!("{line}: {r:?}"))
    }

    fn code(line: &str) -> u16 {
        parse(line.as_bytes()).unwrap_err().code
    }

    #[test]
    fn commands_are_case_insensitive_and_take_their_arguments() {
        assert_eq!(
            ok("ehlo client.example"),
            Command::Ehlo("client.example".into())
        );
        assert_eq!(ok("HELO [127.0.0.1]"), Command::Helo("[127.0.0.1]".into()));
        assert_eq!(
            ok("MAIL FROM:<a@b.example> SIZE=1200 BODY=8BITMIME"),
            Command::Mail {
                from: "a@b.example".into(),
                size: Some(1200)
            }
        );
        assert_eq!(
            ok("mail from: <>"),
            Command::Mail {
                from: String::new(),
                size: None
            }
        );
        assert_eq!(
            ok("RCPT TO:<@relay.example:c@d.example>"),
            Command::Rcpt {
                to: "c@d.example".into()
            }
        );
        assert_eq!(ok("NOOP whatever"), Command::Noop);
        assert_eq!(
            ok("AUTH PLAIN AGFubgBwdw=="),
            Command::Auth {
                mechanism: Mechanism::Plain,
                initial: Some("AGFubgBwdw==".into())
            }
        );
        assert_eq!(
            ok("auth login"),
            Command::Auth {
                mechanism: Mechanism::Login,
                initial: None
            }
        );
    }

    #[test]
    fn malformed_commands_get_their_reply_codes() {
        assert_eq!(code("FROB"), 500);
        assert_eq!(code("EHLO"), 501);
        assert_eq!(code("MAIL TO:<a@b>"), 501);
        assert_eq!(code("MAIL FROM:a@b"), 501);
        assert_eq!(code("MAIL FROM:<a@b> SIZE=x"), 501);
        assert_eq!(code("MAIL FROM:<a@b> NOTIFY=NEVER"), 555);
        assert_eq!(code("RCPT TO:<>"), 501);
        assert_eq!(code("RCPT TO:<a,b@c>"), 501);
        assert_eq!(code("RCPT TO:<nobody>"), 501);
        assert_eq!(code("DATA now"), 501);
        assert_eq!(code("AUTH CRAM-MD5"), 504);
        assert_eq!(code("MAIL FROM:<é@b>"), 501);
    }
}
