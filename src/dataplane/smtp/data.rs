//! Reading from the client: command lines capped at `max_line_length`, and
//! a message after `DATA` up to the lone `.` line (RFC 5321 §4.1.1.4), with
//! dot-unstuffing (§4.5.2) and the `max_message_bytes` cap. The bytes are
//! kept as the client sent them otherwise (CRLF line ends included), which
//! is what the backend gets as the body.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One read line.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// Without its line end.
    Line(Vec<u8>),
    /// Longer than the cap; the rest of it was read and dropped.
    TooLong,
    /// The client closed (a partial last line is dropped too).
    Closed,
}

/// What came after `DATA`.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Complete(Vec<u8>),
    /// Over the cap; read to its end and dropped.
    TooBig,
    Closed,
}

/// Reads through the next LF, keeping at most `cap` bytes of the line
/// (line end included) in `out`. Returns the bytes the line had and
/// whether it ended with an LF (false: the stream ended first).
async fn read_capped<R: AsyncBufRead + Unpin>(
    r: &mut R,
    out: &mut Vec<u8>,
    cap: usize,
) -> io::Result<(usize, bool)> {
    let mut seen = 0;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok((seen, false));
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let n = chunk.len();
        seen += n;
        r.consume(n);
        if done {
            return Ok((seen, true));
        }
    }
}

fn strip_line_end(line: &mut Vec<u8>) {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
}

/// One command line of at most `max` bytes, CRLF included.
pub async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    let (seen, complete) = read_capped(r, &mut line, max).await?;
    if !complete {
        return Ok(Line::Closed);
    }
    if seen > max {
        return Ok(Line::TooLong);
    }
    strip_line_end(&mut line);
    Ok(Line::Line(line))
}

/// The message after `DATA`, unstuffed, of at most `max` bytes; each line
/// must come within `idle` (an `io::ErrorKind::TimedOut` error otherwise),
/// so a long message on a slow link is not cut off, a silent client is.
pub async fn read_message<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: u64,
    idle: Duration,
) -> io::Result<Message> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let mut body = Vec::new();
    let mut too_big = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        // Enough to tell a line that fits from one that does not.
        let cap = max.saturating_sub(body.len()).saturating_add(3);
        let (seen, complete) = tokio::time::timeout(idle, read_capped(r, &mut line, cap))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        if !complete {
            return Ok(Message::Closed);
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(if too_big {
                Message::TooBig
            } else {
                Message::Complete(body)
            });
        }
        if too_big {
            continue;
        }
        let stuffed = usize::from(line.first() == Some(&b'.'));
        if seen - stuffed > max - body.len() {
            too_big = true;
            body = Vec::new();
            continue;
        }
        body.extend_from_slice(&line[stuffed..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(5);

    async fn message(input: &[u8], max: u64) -> Message {
        let mut r = input;
        read_message(&mut r, max, IDLE).await.unwrap()
    }

    #[tokio::test]
    async fn a_message_ends_at_the_lone_dot_and_is_unstuffed() {
        let input = b"Subject: x\r\n\r\n..\r\n..leading dot\r\nend\r\n.\r\nQUIT\r\n";
        let mut r = &input[..];
        let m = read_message(&mut r, 1000, IDLE).await.unwrap();
        assert_eq!(
            m,
            Message::Complete(b"Subject: x\r\n\r\n.\r\n.leading dot\r\nend\r\n".to_vec())
        );
        // What follows the message is left for the next command.
        assert_eq!(r, b"QUIT\r\n");
    }

    #[tokio::test]
    async fn an_oversize_message_is_read_to_its_end_and_refused() {
        let input = b"0123456789\r\n0123456789\r\n.\r\nNOOP\r\n";
        let mut r = &input[..];
        assert_eq!(
            read_message(&mut r, 20, IDLE).await.unwrap(),
            Message::TooBig
        );
        assert_eq!(r, b"NOOP\r\n");
        // Exactly the cap fits.
        assert!(matches!(message(input, 24).await, Message::Complete(b) if b.len() == 24));
        assert_eq!(message(b"abc\r\n", 100).await, Message::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_silent_in_the_middle_of_a_message_times_out() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"Subject: x\r\n").await.unwrap();
        let mut r = tokio::io::BufReader::new(server);
        let e = read_message(&mut r, 1000, IDLE).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test]
    async fn command_lines_are_capped() {
        let input = b"NOOP\r\nAAAAAAAAAAAAAAAAAAAA\r\nQUIT\n";
        let mut r = &input[..];
        assert_eq!(
            read_line(&mut r, 10).await.unwrap(),
            Line::Line(b"NOOP".to_vec())
        );
        assert_eq!(read_line(&mut r, 10).await.unwrap(), Line::TooLong);
        assert_eq!(
            read_line(&mut r, 10).await.unwrap(),
            Line::Line(b"QUIT".to_vec())
        );
        assert_eq!(read_line(&mut r, 10).await.unwrap(), Line::Closed);
        let mut partial = &b"NOO"[..];
        assert_eq!(read_line(&mut partial, 10).await.unwrap(), Line::Closed);
    }
}
