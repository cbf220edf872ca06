//! `graft serve` as a process: it says where it listens, answers, and on SIGTERM lets the
//! running request finish, refuses new connections and exits cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn request(addr: &str, body: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

#[cfg(unix)]
#[test]
fn sigterm_finishes_running_requests_then_exits() {
    let Some(model) = graft_tests::real_model() else {
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args([
            "serve",
            "--port",
            "0",
            "--shutdown-timeout",
            "60",
            "--model",
        ])
        .arg(&model)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // "graft serve: http://127.0.0.1:PORT — …"
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "graft serve ended: {line}"
        );
        if let Some(rest) = line.strip_prefix("graft serve: http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let body = r#"{"model":"x","messages":[{"role":"user","content":"Tell me about the sea."}],"max_tokens":40,"temperature":0,"stream":true}"#;
    // an unknown model: 404, the server is up
    let mut s = request(&addr, body);
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    // a running request …
    // (the base's name in the API is the --model argument)
    let body = body.replace("\"x\"", &format!("\"{}\"", model.display()));
    let s = request(&addr, &body);
    let mut r = BufReader::new(s);
    let mut got = String::new();
    while !got.contains("data: ") {
        let mut l = String::new();
        assert!(r.read_line(&mut l).unwrap() > 0, "{got}");
        got.push_str(&l);
    }
    // … then SIGTERM
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    assert_eq!(rest.matches("data: [DONE]").count(), 1, "{rest}");
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "graft serve did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        TcpStream::connect(&addr).is_err(),
        "still accepting after shutdown"
    );
    let mut tail = String::new();
    err.read_to_string(&mut tail).unwrap();
    assert!(tail.contains("shutting down"), "{tail}");
}
