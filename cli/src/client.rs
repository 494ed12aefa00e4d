//! A small blocking client of lbd's action API: a [`RequestEnvelope`] out,
//! the answer's `info` read into a model type.

use std::time::Duration;

use lbaas::model::{RequestEnvelope, ResponseEnvelope, ResponseStatus};
use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach lbd at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{message} ({code})")]
    Api { code: String, message: String },
    #[error("unexpected answer from lbd ({status}): {body}")]
    BadAnswer { status: u16, body: String },
    #[error("unexpected answer from lbd: {0}")]
    Unexpected(String),
}

/// An answer's `info`, typed, and as lbd sent it (what `-o json` prints,
/// so a field this lbctl does not know yet is still shown).
pub struct Reply<T> {
    pub value: T,
    pub raw: Value,
}

/// A 429 whose `Retry-After` is at most this many seconds is waited out and
/// sent again, once; a longer one is not worth blocking a command line on.
const MAX_RETRY_AFTER: u64 = 4;

pub struct ApiClient {
    url: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl ApiClient {
    pub fn new(url: &str, token: String) -> Self {
        // lbd is local: a proxy from the environment must never see its token.
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client always builds");
        ApiClient {
            url: url.trim_end_matches('/').to_string(),
            token,
            http,
        }
    }

    /// Sends a request; returns its `info` on success.
    pub fn call<T: DeserializeOwned>(
        &self,
        request: &RequestEnvelope,
    ) -> Result<Reply<T>, ClientError> {
        let (answer, retry_after) =
            self.exchange(serde_json::to_vec(request).expect("a request always serializes"))?;
        match answer.status {
            ResponseStatus::Successful => {
                let raw = answer.info.unwrap_or(Value::Null);
                let value =
                    T::deserialize(&raw).map_err(|e| ClientError::Unexpected(e.to_string()))?;
                Ok(Reply { value, raw })
            }
            ResponseStatus::Fail => {
                let e = answer.error.unwrap_or(lbaas::model::ErrorBody {
                    code: "unknown".into(),
                    message: "no error given".into(),
                });
                // Say when trying again makes sense, as lbd's header does.
                let message = match retry_after {
                    Some(secs) => format!("{}; retry after {secs} s", e.message),
                    None => e.message,
                };
                Err(ClientError::Api {
                    code: e.code,
                    message,
                })
            }
        }
    }

    /// Sends a body as-is; returns the parsed answer, failed or not.
    pub fn send_raw(&self, body: Vec<u8>) -> Result<ResponseEnvelope, ClientError> {
        self.exchange(body).map(|(answer, _)| answer)
    }

    /// Sends a body, waiting out one short 429 (see [`MAX_RETRY_AFTER`]);
    /// returns the answer and, when it is still a 429, its `Retry-After`.
    fn exchange(&self, body: Vec<u8>) -> Result<(ResponseEnvelope, Option<u64>), ClientError> {
        let mut answer = self.post(body.clone())?;
        if let Some(secs) = answer.retry_after.filter(|s| *s <= MAX_RETRY_AFTER) {
            std::thread::sleep(Duration::from_secs(secs));
            answer = self.post(body)?;
        }
        let status = answer.status;
        let envelope = serde_json::from_str(&answer.text).map_err(|_| ClientError::BadAnswer {
            status,
            body: answer.text.chars().take(200).collect(),
        })?;
        Ok((envelope, answer.retry_after))
    }

    fn post(&self, body: Vec<u8>) -> Result<HttpAnswer, ClientError> {
        let resp = self
            .http
            .post(format!("{}/api", self.url))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .map_err(|e| ClientError::Connect {
                url: self.url.clone(),
                reason: error_chain(&e),
            })?;
        let status = resp.status().as_u16();
        // Only the delay-seconds form: lbd sends no HTTP dates.
        let retry_after = (status == 429)
            .then(|| resp.headers().get(reqwest::header::RETRY_AFTER))
            .flatten()
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        let text = resp.text().map_err(|e| ClientError::Connect {
            url: self.url.clone(),
            reason: e.to_string(),
        })?;
        Ok(HttpAnswer {
            status,
            retry_after,
            text,
        })
    }
}

/// One HTTP answer, before its body is read as an envelope.
struct HttpAnswer {
    status: u16,
    /// Seconds, on a 429 that says.
    retry_after: Option<u64>,
    text: String,
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out = format!("{out}: {s}");
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbaas::model::{Action, ObjectType};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    const LIMITED: &str = r#"{"status":"fail","action":"info","type":"whoami","error":{"code":"rate_limited","message":"too many requests"}}"#;
    const OK: &str = r#"{"status":"successful","action":"info","type":"whoami","info":{"user":"alice","role":"member"}}"#;

    /// A one-thread HTTP server on 127.0.0.1 answering each request with the
    /// next of `answers` (status, Retry-After, body); counts the requests.
    fn server(answers: Vec<(u16, Option<u64>, &'static str)>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for (status, retry_after, body) in answers {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut request = vec![0; length];
                reader.read_exact(&mut request).unwrap();
                seen.fetch_add(1, Ordering::SeqCst);
                let retry = retry_after.map_or(String::new(), |s| format!("Retry-After: {s}\r\n"));
                let mut stream = reader.into_inner();
                write!(
                    stream,
                    "HTTP/1.1 {status} X\r\n{retry}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
        });
        (url, count)
    }

    fn whoami(url: &str) -> Result<Reply<lbaas::model::WhoAmI>, ClientError> {
        let request = RequestEnvelope {
            action: Action::Info,
            object_type: ObjectType::Whoami,
            info: serde_json::json!({}),
        };
        ApiClient::new(url, "t".into()).call(&request)
    }

    #[test]
    fn a_short_429_is_waited_out_and_sent_again_once() {
        let (url, count) = server(vec![(429, Some(1), LIMITED), (200, None, OK)]);
        let start = Instant::now();
        let reply = whoami(&url).unwrap();
        assert_eq!(reply.value.user, "alice");
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert!(start.elapsed() >= Duration::from_secs(1));

        // Limited again after the retry: the error, not a third try.
        let (url, count) = server(vec![(429, Some(1), LIMITED), (429, Some(1), LIMITED)]);
        let e = whoami(&url).err().unwrap().to_string();
        assert!(
            e.contains("rate_limited") && e.contains("retry after 1 s"),
            "{e}"
        );
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_long_429_is_an_error_at_once() {
        let (url, count) = server(vec![(429, Some(30), LIMITED), (200, None, OK)]);
        let start = Instant::now();
        let e = whoami(&url).err().unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(count.load(Ordering::SeqCst), 1);
        match e {
            ClientError::Api { code, message } => {
                assert_eq!(code, "rate_limited");
                assert_eq!(message, "too many requests; retry after 30 s");
            }
            other => panic!("{other}"),
        }
        // No Retry-After at all: no retry either.
        let (url, count) = server(vec![(429, None, LIMITED), (200, None, OK)]);
        assert!(whoami(&url).is_err());
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
