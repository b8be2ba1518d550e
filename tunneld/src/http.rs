//! `GET /metrics` over HTTP for Prometheus (`metrics.listen`).
//!
//! A deliberately small HTTP/1.1 server: it reads one request head (at
//! most [`MAX_HEAD`] bytes within [`CLIENT_TIMEOUT`]), answers `GET
//! /metrics` (and `HEAD`) from the latest [`StatusCell`] snapshot, anything
//! else with 404 or 405, and closes the connection. It never touches the
//! data path and serves clients on the control socket's bounded client
//! threads, so a slow or hostile client costs one thread for two seconds.

use crate::control::{serve_clients, StatusCell};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest request head read: a scraper's GET with its headers is a few
/// hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The `/metrics` listener; stops on drop.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves `status` until dropped.
    pub fn start(addr: SocketAddr, status: Arc<StatusCell>) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                serve_clients(
                    || listener.accept().map(|(s, _)| s),
                    move |stream| {
                        if let Err(e) = answer(stream, &status) {
                            log::debug!("metrics client: {e}");
                        }
                    },
                    &stop2,
                )
            })?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address (the port chosen when `metrics.listen` gave 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { head_only: bool },
    NotFound,
    BadMethod,
    Malformed,
}

/// Parses the request line of `head` (the bytes up to the blank line).
fn parse(head: &[u8]) -> Request {
    let Ok(text) = std::str::from_utf8(head) else {
        return Request::Malformed;
    };
    let mut parts = text.lines().next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Request::Malformed;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Malformed;
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => Request::Metrics {
            head_only: method == "HEAD",
        },
        ("GET" | "HEAD", _) => Request::NotFound,
        _ => Request::BadMethod,
    }
}

/// Reads until the end of the request head; `None` if the client sent
/// more than [`MAX_HEAD`] bytes without one.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while head.len() < MAX_HEAD {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            return Ok(Some(head));
        }
    }
    Ok(None)
}

fn answer(mut stream: TcpStream, status: &StatusCell) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let request = match read_head(&mut stream)? {
        Some(head) => parse(&head),
        None => Request::Malformed,
    };
    let (code, kind, body, head_only) = match request {
        Request::Metrics { head_only } => (
            "200 OK",
            crate::metrics::CONTENT_TYPE,
            status.get().prometheus(),
            head_only,
        ),
        Request::NotFound => (
            "404 Not Found",
            "text/plain",
            "only /metrics is served here\n".into(),
            false,
        ),
        Request::BadMethod => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".into(),
            false,
        ),
        Request::Malformed => (
            "400 Bad Request",
            "text/plain",
            "bad request\n".into(),
            false,
        ),
    };
    let mut reply = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        reply.push_str(&body);
    }
    stream.write_all(reply.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Status;

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(request).expect("send");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Request::Metrics { head_only: false }
        );
        assert_eq!(
            parse(b"HEAD /metrics?x=1 HTTP/1.0"),
            Request::Metrics { head_only: true }
        );
        assert_eq!(parse(b"GET / HTTP/1.1"), Request::NotFound);
        assert_eq!(parse(b"POST /metrics HTTP/1.1"), Request::BadMethod);
        assert_eq!(parse(b"GET /metrics"), Request::Malformed);
        assert_eq!(parse(b"\xff\xfe"), Request::Malformed);
        assert_eq!(parse(b""), Request::Malformed);
    }

    #[test]
    fn serves_metrics_and_refuses_the_rest() {
        let status = Arc::new(StatusCell::new(Status {
            interface: "t9".into(),
            ..Status::default()
        }));
        let mut s = Status::default();
        s.counters.rx_bytes = 4242;
        status.publish(s);
        let server =
            MetricsServer::start("127.0.0.1:0".parse().expect("addr"), status).expect("bind");
        let addr = server.local_addr();
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("application/openmetrics-text"), "{ok}");
        assert!(
            ok.contains("tunneld_rx_bytes_total{interface=\"t9\"} 4242\n"),
            "{ok}"
        );
        assert!(get(addr, b"GET /x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, b"PUT /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        // A head that never ends is cut off at MAX_HEAD.
        let huge = vec![b'a'; MAX_HEAD + 100];
        assert!(get(addr, &huge).starts_with("HTTP/1.1 400"));
        // Clients that connect and send nothing do not block the next one.
        let idle: Vec<TcpStream> = (0..3)
            .map(|_| TcpStream::connect(addr).expect("idle client"))
            .collect();
        let again = get(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(again.starts_with("HTTP/1.1 200 OK\r\n"), "{again}");
        drop(idle);
    }
}
