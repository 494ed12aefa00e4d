//! `lb-node` on its own: the admin API contract and the proxy's behaviour,
//! against the real binary and real backends on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::backends::{http_get, HttpBackend};
use common::node::{config, free_addr, LbNode};
use serde_json::{json, Value};

/// Sends `n` requests on one keep-alive connection; returns the bodies.
fn keepalive_gets(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    (0..n)
        .map(|_| {
            write!(conn, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            read_response(&mut reader).1
        })
        .collect()
}

/// One response with a `Content-Length` body: its status code and body.
fn read_response(reader: &mut BufReader<TcpStream>) -> (String, String) {
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut len = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let code = status.split_whitespace().nth(1).unwrap_or("").to_string();
    (code, String::from_utf8(body).unwrap())
}

#[test]
fn admin_api_needs_the_secret() {
    let node = LbNode::start();
    for token in [None, Some("wrong")] {
        let mut get = node.http.get(format!("http://{}/status", node.admin));
        let mut put = node
            .http
            .put(format!("http://{}/config", node.admin))
            .body("{}");
        if let Some(t) = token {
            get = get.bearer_auth(t);
            put = put.bearer_auth(t);
        }
        assert_eq!(get.send().unwrap().status(), 401);
        assert_eq!(put.send().unwrap().status(), 401);
    }
    assert_eq!(node.status()["config_version"], Value::Null);
    let resp = node
        .http
        .put(format!("http://{}/config", node.admin))
        .bearer_auth(&node.secret)
        .body("{nope")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[test]
fn live_update_keeps_the_connection_and_switches_backends() {
    let (a, b, c) = (
        HttpBackend::start("a"),
        HttpBackend::start("b"),
        HttpBackend::start("c"),
    );
    let node = LbNode::start();
    let listen = free_addr();
    let (s, v) = node.put_config(&config(1, "http", listen, &[a.addr(), b.addr()]));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["config_version"], 1);
    assert_eq!(v["listening"], listen.to_string());

    // One client connection, kept alive across the change.
    let mut conn = TcpStream::connect(listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut get = || {
        write!(conn, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let mut body = [0u8; 1];
        reader.read_exact(&mut body).unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    };
    let before: Vec<String> = (0..4).map(|_| get()).collect();
    assert_eq!(before, ["a", "b", "a", "b"]);

    let (s, v) = node.put_config(&config(2, "http", listen, &[c.addr()]));
    assert_eq!((s, &v["config_version"]), (200, &json!(2)));
    let after: Vec<String> = (0..3).map(|_| get()).collect();
    assert_eq!(after, ["c", "c", "c"], "same connection, new backends");

    let stats = node.status()["stats"].clone();
    assert!(stats["requests_total"].as_u64().unwrap() >= 7, "{stats}");
    assert_eq!(stats["members"][0]["address"], c.addr().to_string());
    assert_eq!(stats["members"][0]["requests"], 3);
}

#[test]
fn keep_alive_round_robin_is_even() {
    let (a, b, c) = (
        HttpBackend::start("a"),
        HttpBackend::start("b"),
        HttpBackend::start("c"),
    );
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config(1, "http", listen, &[a.addr(), b.addr(), c.addr()]));
    let bodies = keepalive_gets(listen, 30);
    for name in ["a", "b", "c"] {
        assert_eq!(
            bodies.iter().filter(|b| *b == name).count(),
            10,
            "{bodies:?}"
        );
    }
}

#[test]
fn dead_member_gives_502_and_gets_routed_around() {
    let live = HttpBackend::start("live");
    let dead = free_addr();
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config(1, "http", listen, &[dead]));
    let (status, body) = http_get(listen, "/").unwrap();
    assert_eq!(status, 502);
    assert!(
        body.starts_with("lb-node: no backend answered") && body.contains(&dead.to_string()),
        "{body}"
    );
    assert_eq!(node.status()["stats"]["backend_errors"], 1);

    // With a live member too, every GET succeeds: a refused connect is retried elsewhere.
    node.put_config(&config(2, "http", listen, &[dead, live.addr()]));
    for _ in 0..6 {
        assert_eq!(http_get(listen, "/").unwrap(), (200, "live".to_string()));
    }
}

#[test]
fn a_failed_bind_keeps_the_old_config_serving() {
    let a = HttpBackend::start("a");
    let node = LbNode::start();
    let listen = free_addr();
    node.put_config(&config(1, "http", listen, &[a.addr()]));
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    let (s, v) = node.put_config(&config(2, "http", taken, &[a.addr()]));
    assert_eq!(s, 500);
    assert!(
        v["error"].as_str().unwrap().contains(&taken.to_string()),
        "{v}"
    );
    let status = node.status();
    assert_eq!(status["config_version"], 1);
    assert!(
        status["error"].as_str().unwrap().contains("bind"),
        "{status}"
    );
    assert_eq!(http_get(listen, "/").unwrap(), (200, "a".to_string()));
}

/// PUT /config with `patch` merged into the health check of a valid config.
fn with_health_check(mut c: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        c["health_check"][k] = v.clone();
    }
    c
}

#[test]
fn a_config_the_node_cannot_read_is_refused_and_the_old_one_serves() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let node = LbNode::start();
    let listen = free_addr();
    let good = with_health_check(
        config(1, "http", listen, &[a.addr()]),
        json!({"expected-codes": "200,204-206"}),
    );
    let (s, v) = node.put_config(&good);
    assert_eq!(s, 200, "{v}");
    // expected-codes is parsed on arrival: a bad one never reaches the checks.
    let bad_codes = with_health_check(
        config(2, "http", listen, &[b.addr()]),
        json!({"expected-codes": "2xx"}),
    );
    let (s, v) = node.put_config(&bad_codes);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("expected-codes"),
        "{v}"
    );
    // The tuning fields are flattened into the config; an unknown field
    // next to them is still refused, not ignored.
    for (key, value) in [("colour", json!("red")), ("max_conections", json!(1))] {
        let mut unknown = config(3, "http", listen, &[b.addr()]);
        unknown[key] = value;
        let (s, v) = node.put_config(&unknown);
        assert_eq!(s, 400, "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains(&format!("unknown field `{key}`")),
            "{v}"
        );
    }
    assert_eq!(node.status()["config_version"], 1);
    assert_eq!(http_get(listen, "/").unwrap(), (200, "a".to_string()));
}

#[test]
fn tcp_proxy_passes_half_close() {
    let echo = common::backends::EchoBackend::start();
    let node = LbNode::start();
    let listen = free_addr();
    let (s, v) = node.put_config(&config(1, "tcp", listen, &[echo.addr()]));
    assert_eq!(s, 200, "{v}");
    let mut conn = TcpStream::connect(listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"hello, half-closed world").unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    conn.read_to_string(&mut back).unwrap();
    assert_eq!(back, "hello, half-closed world");
    // Counted when the proxied connection ends, just after the client saw EOF.
    common::wait_for("bytes counted", Duration::from_secs(10), || {
        (node.status()["stats"]["bytes_in"] == 24).then_some(())
    });
}

/// A backend that answers the first request of each connection (keep-alive)
/// and resets the connection when a second request arrives on it, as a
/// backend that closes idle connections (or dies) just as one is reused.
/// Returns its address and the request lines it read.
fn resetting_backend() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let log = log.clone();
            std::thread::spawn(move || answer_once_then_reset(conn, &log));
        }
    });
    (addr, seen)
}

fn answer_once_then_reset(conn: TcpStream, log: &std::sync::Mutex<Vec<String>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    let mut answered = false;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        let _ = reader.read_exact(&mut body);
        // lb-node's health checks (`GET /`) are always answered.
        let is_check = request_line.starts_with("GET / ");
        if !is_check {
            log.lock()
                .unwrap()
                .push(request_line.trim_end().to_string());
        }
        if is_check || !answered {
            answered |= !is_check;
            let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            continue;
        }
        // SO_LINGER 0: close() sends a RST instead of a FIN.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        #[allow(unsafe_code)]
        // SAFETY: setsockopt on an open socket we own, with a valid linger struct.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::setsockopt(
                writer.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        return;
    }
}

#[test]
fn a_reset_kept_alive_connection_resends_a_get_but_never_a_post() {
    let (backend, seen) = resetting_backend();
    let node = LbNode::start();
    let listen = free_addr();
    let (s, v) = node.put_config(&config(1, "http", listen, &[backend]));
    assert_eq!(s, 200, "{v}");

    let mut conn = TcpStream::connect(listen).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut send = |request: &str| {
        conn.write_all(request.as_bytes()).unwrap();
        read_response(&mut reader).0
    };
    let get = "GET /a HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_eq!(send(get), "200", "a new connection");
    // The kept-alive backend connection is reset under it: sent again on a new one.
    assert_eq!(send(get), "200", "resent on a new connection");
    // A POST may have been acted on: the client is told, it is not sent twice.
    let post = "POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc";
    assert_eq!(send(post), "502");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("POST")).count(),
        1,
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|l| l.starts_with("GET /a")).count(),
        3,
        "{seen:?}"
    );
}
