//! The API's own rate limit against a real lbd with its default limits:
//! one token's burst of writes gets 429 `rate_limited` with `Retry-After`
//! while another token goes on, and calls without a valid token are
//! limited per address.

mod common;

use std::time::Instant;

use common::Lbd;
use serde_json::{json, Value};

/// One call: status, `Retry-After` (seconds) and the error code.
fn call(lbd: &Lbd, token: &str, body: &Value) -> (u16, Option<u64>, String) {
    let resp = lbd
        .http
        .post(format!("{}/api", lbd.url()))
        .bearer_auth(token)
        .json(body)
        .send()
        .expect("API request");
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").map(|v| {
        v.to_str()
            .unwrap()
            .parse::<u64>()
            .expect("Retry-After in seconds")
    });
    let answer: Value = resp.json().expect("API answers JSON");
    let code = answer["error"]["code"].as_str().unwrap_or("").to_string();
    (status, retry_after, code)
}

#[test]
fn a_burst_of_writes_gets_429_with_retry_after_and_another_token_is_not_limited() {
    let lbd = Lbd::start();
    let admin = lbd.token.clone();
    let bob = lbd.add_user("bob", "member");
    // A write that changes nothing: deleting a project that is not there.
    let write = json!({"action": "delete", "type": "project", "info": {"name": "nothing"}});
    let started = Instant::now();
    let answers: Vec<_> = (0..200).map(|_| call(&lbd, &admin, &write)).collect();
    let elapsed = started.elapsed().as_secs_f64();
    let limited: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    let passed = answers.iter().filter(|a| a.0 == 404).count();
    assert_eq!(
        limited.len() + passed,
        200,
        "only 404s and 429s: {answers:?}"
    );
    assert!(
        !limited.is_empty(),
        "200 writes in {elapsed:.2} s were never limited"
    );
    for (_, retry_after, code) in &limited {
        assert_eq!(code, "rate_limited");
        assert!(retry_after.is_some_and(|s| s >= 1), "{retry_after:?}");
    }
    // 40 at once plus 20 per second (one more for the partial second).
    let allowed = 40.0 + 20.0 * elapsed + 1.0;
    assert!(
        passed as f64 <= allowed,
        "{passed} writes passed in {elapsed:.2} s"
    );
    // Bob's budget is his own: neither his writes nor his reads wait.
    assert_eq!(call(&lbd, &bob, &write).0, 404);
    let read = json!({"action": "info", "type": "project"});
    assert_eq!(call(&lbd, &bob, &read).0, 200);
    // The admin's reads have their own budget too.
    assert_eq!(call(&lbd, &admin, &read).0, 200);
}

#[test]
fn calls_without_a_valid_token_are_limited_per_address() {
    let lbd = Lbd::start();
    let read = json!({"action": "info", "type": "project"});
    let answers: Vec<_> = (0..60).map(|_| call(&lbd, "not-a-token", &read)).collect();
    let unauthorized = answers.iter().filter(|a| a.0 == 401).count();
    let limited = answers.iter().filter(|a| a.0 == 429).count();
    assert_eq!(unauthorized + limited, 60, "{answers:?}");
    assert!(limited > 0, "60 guesses were never limited");
    assert!(unauthorized < 60);
    // A valid token from the same address is not held back by the guesses.
    assert_eq!(call(&lbd, &lbd.token, &read).0, 200);
    // Limited guesses are not written to the audit log (a flood of them
    // would be a flood of writes); the first ones are.
    let (status, audit) =
        lbd.api(&json!({"action": "info", "type": "audit", "info": {"limit": 1000}}));
    assert_eq!(status, 200, "{audit}");
    let refused = audit["info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == 401)
        .count();
    assert_eq!(refused, unauthorized);
}
