//! The `/metrics` HTTP listener: a task of its own, serving HTTP/1 with hyper. It
//! answers GET and HEAD of `/metrics` with a snapshot asked of the daemon's task,
//! encoded as OpenMetrics when the client asks for it and as the classic text format
//! otherwise. Every connection carries one request and is closed after the answer.

use std::time::Duration;

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

use super::{encode, to_classic_text, Ask, CLASSIC, OPENMETRICS};
use crate::newest::Shared;

/// Longest request head (request line and headers), in bytes; a longer one is answered
/// 431 and the connection closed.
const HEAD_MAX: usize = 8192;
/// Most request headers; more are answered 431.
const HEADERS_MAX: usize = 64;
/// How long a client may take to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most clients held at once; a new one beyond closes the oldest.
const MAX_CLIENTS: usize = 32;

/// The daemon's task has gone (the daemon is stopping): the connection is closed
/// without an answer.
#[derive(Debug, thiserror::Error)]
#[error("the daemon's task has gone")]
struct DaemonGone;

/// Serves `/metrics` on `listener` until the daemon's task goes away.
pub async fn serve(listener: TcpListener, daemon: mpsc::Sender<Ask>) {
    let held = Shared::new(MAX_CLIENTS);
    let http = http_builder();
    loop {
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::debug!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Beyond MAX_CLIENTS the oldest connection is closed: idle clients cannot keep
        // a scraper out.
        let (id, evicted) = held.admit();
        let (daemon, http, held) = (daemon.clone(), http.clone(), held.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::timeout(CLIENT_TIMEOUT, client(&http, conn, daemon)) => {}
                Ok(()) = evicted => {
                    tracing::debug!("metrics: {MAX_CLIENTS} clients; the oldest closed");
                }
            }
            held.release(id);
        });
    }
}

/// Returns: hyper's HTTP/1 server settings for metrics clients: one request per
/// connection, answered even if the client has shut its side down, a bounded head,
/// and header names written as `Content-Type` (as before hyper, and as scripts
/// grepping the head expect).
fn http_builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.keep_alive(false)
        // A client may shut its side down once its request is sent (`nc -N`).
        .half_close(true)
        .max_header_size(HEAD_MAX)
        .max_headers(HEADERS_MAX)
        .title_case_headers(true)
        .auto_date_header(false);
    b
}

/// Serves one client connection until its answer is written.
async fn client(http: &http1::Builder, conn: TcpStream, daemon: mpsc::Sender<Ask>) {
    let service = service_fn(|req| answer(req, daemon.clone()));
    if let Err(e) = http.serve_connection(TokioIo::new(conn), service).await {
        tracing::debug!("metrics: client: {e}");
    }
}

/// Returns: whether the client takes OpenMetrics (Prometheus says so in `Accept`).
fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers().get_all(ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.contains("application/openmetrics-text"))
    })
}

/// Answers one request: routing, the snapshot, and its encoding.
/// Returns: the response, or [`DaemonGone`] to close the connection without one.
async fn answer(
    req: Request<Incoming>,
    daemon: mpsc::Sender<Ask>,
) -> Result<Response<Full<Bytes>>, DaemonGone> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    if req.uri().path() != "/metrics" {
        return Ok(plain(StatusCode::NOT_FOUND, "metrics are at /metrics\n"));
    }
    let (tx, rx) = oneshot::channel();
    daemon.send(tx).await.map_err(|_| DaemonGone)?;
    let snapshot = match rx.await.map_err(|_| DaemonGone)? {
        Ok(s) => s,
        Err(e) => {
            let body = format!("reading the data path's counters failed: {e}\n");
            return Ok(plain(StatusCode::INTERNAL_SERVER_ERROR, body));
        }
    };
    let text = encode(snapshot);
    Ok(if wants_openmetrics(&req) {
        respond(StatusCode::OK, OPENMETRICS, text)
    } else {
        respond(StatusCode::OK, CLASSIC, to_classic_text(&text))
    })
}

/// Returns: a classic-text answer (errors are plain text too).
fn plain(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    respond(status, CLASSIC, body.into())
}

/// Returns: an answer of `status` with `body` of type `kind`. hyper writes its
/// `Content-Length`, and leaves the body out for HEAD.
fn respond(status: StatusCode, kind: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http_body_util::{BodyExt as _, Empty};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::{metrics::Snapshot, status::Status};

    /// A snapshot with nothing in it, or a failure to read one.
    fn snapshot(ok: bool) -> Result<Snapshot, String> {
        if !ok {
            return Err("map lookup failed".into());
        }
        Ok(Snapshot {
            status: Status {
                config: "t.yaml".into(),
                virtual_servers: Vec::new(),
                verdicts: Default::default(),
                flow_table_entries: 0,
                syns_past_flow_table: 0,
                flow_table_size: 1024,
                announce_table: None,
                withdrawn: false,
                announcements: Vec::new(),
            },
            probes: Vec::new(),
            reloads_ok: 0,
            reloads_failed: 0,
            last_reload_ok: true,
        })
    }

    /// Serves on loopback with a fake daemon that answers every ask with
    /// [`snapshot`]`(ok)` after `delay`. Returns: the address.
    async fn server(ok: bool, delay: Duration) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel::<Ask>(4);
        tokio::spawn(async move {
            while let Some(ask) = rx.recv().await {
                tokio::time::sleep(delay).await;
                let _ = ask.send(snapshot(ok));
            }
        });
        tokio::spawn(serve(l, tx));
        addr
    }

    /// One request with hyper's client. Returns: status, content type and body.
    async fn request(
        addr: SocketAddr,
        method: Method,
        path: &str,
        accept: Option<&str>,
    ) -> (u16, String, String) {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path);
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        let resp = sender
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        let kind = resp.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, kind, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn negotiates_the_format_and_routes() {
        let addr = server(true, Duration::ZERO).await;
        let (status, kind, body) = request(addr, Method::GET, "/metrics?x=1", None).await;
        assert_eq!((status, kind.as_str()), (200, CLASSIC));
        assert!(body.contains("# TYPE xdpvs_build_info gauge\n"), "{body}");
        assert!(!body.contains("# EOF"));

        let prometheus = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5";
        let (status, kind, body) = request(addr, Method::GET, "/metrics", Some(prometheus)).await;
        assert_eq!((status, kind.as_str()), (200, OPENMETRICS));
        assert!(body.ends_with("# EOF\n"), "{body}");

        let (status, kind, body) = request(addr, Method::HEAD, "/metrics", None).await;
        assert_eq!((status, kind.as_str(), body.as_str()), (200, CLASSIC, ""));

        let (status, _, body) = request(addr, Method::GET, "/", Some("*/*")).await;
        assert_eq!((status, body.as_str()), (404, "metrics are at /metrics\n"));
        let (status, _, body) = request(addr, Method::POST, "/metrics", None).await;
        assert_eq!((status, body.as_str()), (405, "only GET and HEAD\n"));
    }

    #[tokio::test]
    async fn a_failed_snapshot_is_a_500_with_the_reason() {
        let addr = server(false, Duration::ZERO).await;
        let (status, _, body) = request(addr, Method::GET, "/metrics", None).await;
        assert_eq!(status, 500);
        assert_eq!(
            body,
            "reading the data path's counters failed: map lookup failed\n"
        );
    }

    /// Sends `raw` and reads until the server closes. Returns: what came back.
    async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let _ = c.write_all(raw).await;
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_client_that_half_closes_after_its_request_is_answered() {
        // The answer comes after the client's EOF, as a daemon's snapshot takes time.
        let addr = server(true, Duration::from_millis(200)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        c.shutdown().await.unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
    }

    #[tokio::test]
    async fn one_request_per_connection_with_title_case_headers() {
        let addr = server(true, Duration::ZERO).await;
        let out = raw_exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.contains("\r\nContent-Type: text/plain; version=0.0.4"),
            "{out}"
        );
        assert!(out.contains("\r\nConnection: close\r\n"), "{out}");
        assert_eq!(out.matches("HTTP/1.1 200").count(), 1, "{out}");
    }

    #[tokio::test]
    async fn oversized_heads_are_refused() {
        let addr = server(true, Duration::ZERO).await;
        let big = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(HEAD_MAX)
        );
        let out = raw_exchange(addr, big.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
        let many: String = (0..=HEADERS_MAX).map(|i| format!("X-{i}: y\r\n")).collect();
        let out = raw_exchange(
            addr,
            format!("GET /metrics HTTP/1.1\r\n{many}\r\n").as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
        let out = raw_exchange(addr, b"garbage\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    }

    #[tokio::test]
    async fn idle_clients_cannot_keep_a_scrape_out() {
        let addr = server(true, Duration::ZERO).await;
        // MAX_CLIENTS connections that send nothing: a scrape after them closes the
        // oldest and is answered.
        let mut idle = Vec::new();
        for _ in 0..MAX_CLIENTS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let out = tokio::time::timeout(
            Duration::from_secs(2),
            raw_exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
        )
        .await
        .expect("answered at once");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        let mut oldest = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), idle[0].read_to_end(&mut oldest))
            .await
            .expect("the oldest idle client closed at once")
            .unwrap();
        assert!(oldest.is_empty(), "closed without an answer");
    }
}
