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
        let answer =
            self.send_raw(serde_json::to_vec(request).expect("a request always serializes"))?;
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
                Err(ClientError::Api {
                    code: e.code,
                    message: e.message,
                })
            }
        }
    }

    /// Sends a body as-is; returns the parsed answer, failed or not.
    pub fn send_raw(&self, body: Vec<u8>) -> Result<ResponseEnvelope, ClientError> {
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
        let text = resp.text().map_err(|e| ClientError::Connect {
            url: self.url.clone(),
            reason: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|_| ClientError::BadAnswer {
            status,
            body: text.chars().take(200).collect(),
        })
    }
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
