//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463):
//! one type, rendered as one or more `code[-| ]text` lines.

use std::borrow::Cow;

/// One reply: a code, an enhanced code (absent on the banner and the
/// AUTH challenges, RFC 2034 §3) and its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<&'static str>,
    pub lines: Vec<Cow<'static, str>>,
}

impl Reply {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced code (220 banner, 334 challenges).
    pub fn bare(code: u16, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply (EHLO): no enhanced code on any line.
    pub fn multi(code: u16, lines: Vec<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines,
        }
    }

    /// Appends the reply as it goes on the wire.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{sep}", self.code).as_bytes());
            if let Some(e) = self.enhanced {
                out.extend_from_slice(e.as_bytes());
                out.push(b' ');
            }
            // Never a CR or LF inside a line: a client's text echoed back
            // must not make a reply of its own.
            out.extend(line.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    /// A negative reply (4xx, 5xx).
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    pub fn ok(text: &'static str) -> Reply {
        Reply::new(250, "2.0.0", text)
    }
}

// The replies the node gives of its own, named so the session and the
// delivery stage say the same thing for the same case.

pub fn bye() -> Reply {
    Reply::new(221, "2.0.0", "Bye")
}

pub fn bad_sequence(text: &'static str) -> Reply {
    Reply::new(503, "5.5.1", text)
}

pub fn syntax(text: &'static str) -> Reply {
    Reply::new(501, "5.5.2", text)
}

pub fn unknown_command() -> Reply {
    Reply::new(500, "5.5.2", "Command not recognized")
}

pub fn line_too_long() -> Reply {
    Reply::new(500, "5.5.6", "Line too long")
}

pub fn too_many_bad_commands() -> Reply {
    Reply::new(421, "4.7.0", "Too many bad commands, closing connection")
}

pub fn idle_timeout() -> Reply {
    Reply::new(421, "4.4.2", "Idle timeout, closing connection")
}

pub fn shutting_down() -> Reply {
    Reply::new(421, "4.3.2", "Service shutting down, closing connection")
}

pub fn too_many_connections() -> Reply {
    Reply::new(421, "4.3.2", "Too many connections, try again later")
}

/// No backend could take the message (none up, none answered).
pub fn no_backend() -> Reply {
    Reply::new(421, "4.3.2", "No backend available, try again later")
}

pub fn message_too_big() -> Reply {
    Reply::new(
        552,
        "5.3.4",
        "Message size exceeds fixed maximum message size",
    )
}

pub fn auth_required() -> Reply {
    Reply::new(530, "5.7.0", "Authentication required")
}

pub fn auth_failed() -> Reply {
    Reply::new(535, "5.7.8", "Authentication credentials invalid")
}

pub fn auth_unavailable() -> Reply {
    Reply::new(454, "4.7.0", "Temporary authentication failure")
}

pub fn auth_ok() -> Reply {
    Reply::new(235, "2.7.0", "Authentication successful")
}

pub fn rate_limited() -> Reply {
    Reply::new(451, "4.7.1", "Rate limit exceeded, try again later")
}

pub fn accepted() -> Reply {
    Reply::new(250, "2.0.0", "Message accepted for delivery")
}

pub fn backend_refused_temporarily() -> Reply {
    Reply::new(451, "4.3.0", "Backend refused the message temporarily")
}

pub fn backend_refused() -> Reply {
    Reply::new(554, "5.0.0", "Backend refused the message")
}

pub fn backend_timeout() -> Reply {
    Reply::new(451, "4.4.1", "Backend did not answer in time")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_continued_with_a_dash_and_end_with_a_space() {
        let r = Reply::multi(250, vec!["a".into(), "SIZE 10".into(), "PIPELINING".into()]);
        assert_eq!(
            String::from_utf8(r.to_bytes()).unwrap(),
            "250-a\r\n250-SIZE 10\r\n250 PIPELINING\r\n"
        );
        assert_eq!(
            rate_limited().to_bytes(),
            b"451 4.7.1 Rate limit exceeded, try again later\r\n"
        );
    }

    #[test]
    fn echoed_text_cannot_break_a_line() {
        let r = Reply::bare(250, "x\r\n250 injected".to_string());
        assert_eq!(r.to_bytes(), b"250 x250 injected\r\n");
    }
}
