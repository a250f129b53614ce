//! The `/metrics` HTTP listener: a task of its own that answers GET and HEAD of
//! `/metrics` with a snapshot asked of the daemon's task, encoded as OpenMetrics when the
//! client asks for it and as the classic text format otherwise.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

use super::{encode, to_classic_text, Ask, CLASSIC, OPENMETRICS};

/// Longest request head read.
const HEAD_MAX: usize = 8192;
/// How long a client may take to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most clients served at once; others are closed at once.
const MAX_CLIENTS: usize = 32;

/// Serves `/metrics` on `listener` until the daemon's task goes away.
pub async fn serve(listener: TcpListener, daemon: mpsc::Sender<Ask>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::debug!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("metrics: {MAX_CLIENTS} clients already; connection closed");
            continue;
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CLIENT_TIMEOUT, answer(conn, daemon)).await;
            drop(slot);
        });
    }
}

/// A parsed request head: method, path (without query) and whether the client takes
/// OpenMetrics.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    path: String,
    openmetrics: bool,
}

fn parse_head(text: &str) -> Option<Head> {
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    if !first.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target).to_string();
    let openmetrics = lines
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
        .any(|(_, v)| v.contains("application/openmetrics-text"));
    Some(Head {
        method,
        path,
        openmetrics,
    })
}

async fn answer(mut conn: TcpStream, daemon: mpsc::Sender<Ask>) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break String::from_utf8_lossy(&buf[..end]).into_owned();
        }
        if buf.len() > HEAD_MAX {
            let _ = respond(
                &mut conn,
                "431 Request Header Fields Too Large",
                CLASSIC,
                "request head too large\n",
                true,
            )
            .await;
            return;
        }
    };
    let Some(head) = parse_head(&head) else {
        let _ = respond(&mut conn, "400 Bad Request", CLASSIC, "bad request\n", true).await;
        return;
    };
    let with_body = head.method != "HEAD";
    if head.method != "GET" && head.method != "HEAD" {
        let _ = respond(
            &mut conn,
            "405 Method Not Allowed",
            CLASSIC,
            "only GET and HEAD\n",
            true,
        )
        .await;
        return;
    }
    if head.path != "/metrics" {
        let _ = respond(
            &mut conn,
            "404 Not Found",
            CLASSIC,
            "metrics are at /metrics\n",
            with_body,
        )
        .await;
        return;
    }
    let (tx, rx) = oneshot::channel();
    if daemon.send(tx).await.is_err() {
        return;
    }
    let snapshot = match rx.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let body = format!("reading the data path's counters failed: {e}\n");
            let _ = respond(
                &mut conn,
                "500 Internal Server Error",
                CLASSIC,
                &body,
                with_body,
            )
            .await;
            return;
        }
        Err(_) => return,
    };
    let text = encode(snapshot);
    let (kind, body) = if head.openmetrics {
        (OPENMETRICS, text)
    } else {
        (CLASSIC, to_classic_text(&text))
    };
    let _ = respond(&mut conn, "200 OK", kind, &body, with_body).await;
}

async fn respond(
    conn: &mut TcpStream,
    status: &str,
    kind: &str,
    body: &str,
    with_body: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    if with_body {
        conn.write_all(body.as_bytes()).await?;
    }
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        let h = parse_head("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5").unwrap();
        assert_eq!(
            h,
            Head {
                method: "GET".into(),
                path: "/metrics".into(),
                openmetrics: true
            }
        );
        let h = parse_head("HEAD / HTTP/1.0\r\naccept: */*").unwrap();
        assert_eq!(
            (h.method.as_str(), h.path.as_str(), h.openmetrics),
            ("HEAD", "/", false)
        );
        assert_eq!(parse_head("GET /metrics"), None);
        assert_eq!(parse_head("garbage"), None);
    }
}
