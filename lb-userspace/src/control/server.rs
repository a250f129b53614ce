//! The daemon's side of the control socket: it accepts connections on a task of its own
//! and hands each request, with a channel for its answer, to the daemon's task.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};

use super::{Request, Response};
use crate::newest::Shared;

/// A control request and where its answer goes.
pub type Call = (Request, oneshot::Sender<Response>);

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request line, in bytes, newline included. A request is a few hundred bytes;
/// a longer line is answered with an error as soon as this much has arrived, so a
/// client cannot make the daemon hold an unbounded line in memory.
const REQUEST_MAX: usize = 64 * 1024;
/// How long the answer may take to be written: a client that never reads it is cut off
/// rather than holding its task and descriptor for ever.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Most connections waiting to send their request line. A new connection beyond this
/// closes the oldest waiting one (answered "busy"): clients that hold connections open
/// without a request cannot lock out one that sends its request at once, and the
/// daemon holds at most this many such connections (a descriptor and a small buffer
/// each).
const WAITING_MAX: usize = 256;

/// The bound control socket; the file is removed on drop.
pub struct Socket {
    path: PathBuf,
}

impl Socket {
    /// Returns: the socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Creates the control socket at `path` (mode 0600) and a task accepting its
/// connections. Refuses to replace a socket another daemon answers on.
/// Returns: the socket (removed when dropped) and the channel requests arrive on.
pub fn listen(path: &Path) -> anyhow::Result<(Socket, mpsc::Receiver<Call>)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if super::client::answers(path) {
            anyhow::bail!(
                "another xdpvs daemon answers on {}; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    // Created 0600 from the start: no window in which others could connect.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = tokio::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("control socket {}", path.display()))?;
    let (tx, rx) = mpsc::channel::<Call>(16);
    let waiting = Shared::new(WAITING_MAX);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    let (id, evicted) = waiting.admit();
                    let (waiting, tx) = (waiting.clone(), tx.clone());
                    tokio::spawn(async move {
                        serve_client(conn, tx, evicted, || waiting.release(id)).await;
                        waiting.release(id);
                    });
                }
                // Out of descriptors, say: the socket must outlive it, so wait and
                // accept again rather than leave the loop (and the socket unanswered).
                Err(e) => {
                    tracing::warn!("control socket: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok((
        Socket {
            path: path.to_owned(),
        },
        rx,
    ))
}

/// How the wait for a request line ended.
enum Got {
    /// The read ended: the line's length (0 at end of stream), or an error.
    Line(std::io::Result<usize>),
    TimedOut,
    /// Closed to make room for a newer connection.
    Evicted,
}

/// Answers one control connection: a JSON request line in, a JSON line out. A line
/// that is not a request (not JSON, not UTF-8, an unknown command, too long) gets an
/// error answer; a client that sends nothing within [`REQUEST_TIMEOUT`] is closed
/// without one; one closed to make room (`evicted`) before its line arrived is told
/// so. `request_read` is called once the wait for the request line is over.
async fn serve_client(
    conn: tokio::net::UnixStream,
    calls: mpsc::Sender<Call>,
    evicted: oneshot::Receiver<()>,
    request_read: impl FnOnce(),
) {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    // The socket's mode keeps others out; its caller's credentials are checked too,
    // for a socket whose mode or directory someone loosened. A refused caller's
    // request is read like any other (so that its client, which writes before it
    // reads, gets the answer), then refused.
    let refusal = refuse_caller(&conn);
    let (read, mut write) = conn.into_split();
    let mut line = Vec::new();
    let mut reader = tokio::io::BufReader::new(read.take(REQUEST_MAX as u64 + 1));
    let got = tokio::select! {
        r = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)) => match r {
            Ok(r) => Got::Line(r),
            Err(_) => Got::TimedOut,
        },
        Ok(()) = evicted => Got::Evicted,
    };
    request_read();
    let resp = match got {
        Got::Evicted => {
            tracing::debug!("control socket: {WAITING_MAX} connections waiting for a request; the oldest closed");
            Response::error(format!(
                "busy: {WAITING_MAX} connections were waiting to send a request and this was the oldest; try again"
            ))
        }
        Got::Line(Ok(0)) => return,
        Got::Line(Ok(n)) if n > REQUEST_MAX => {
            tracing::warn!("control socket: request longer than {REQUEST_MAX} bytes refused");
            Response::error(format!(
                "bad request: longer than {REQUEST_MAX} bytes without a newline"
            ))
        }
        Got::Line(Ok(_)) if refusal.is_some() => Response::error(refusal.unwrap_or_default()),
        Got::Line(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                if calls.send((req, tx)).await.is_err() {
                    return;
                }
                match rx.await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
            Err(e) => {
                tracing::warn!("control socket: bad request refused: {e}");
                Response::error(format!("bad request: {e}"))
            }
        },
        Got::Line(Err(e)) => {
            tracing::debug!("control socket: reading a request: {e}");
            return;
        }
        Got::TimedOut => {
            tracing::debug!("control socket: no request within {REQUEST_TIMEOUT:?}; closed");
            return;
        }
    };
    let mut text = serde_json::to_string(&resp).unwrap_or_else(|e| {
        format!("{{\"ok\":false,\"message\":\"cannot encode the answer: {e}\"}}")
    });
    text.push('\n');
    let sent = tokio::time::timeout(ANSWER_TIMEOUT, write.write_all(text.as_bytes())).await;
    if sent.is_err() {
        tracing::debug!(
            "control socket: the answer was not read within {ANSWER_TIMEOUT:?}; closed"
        );
    }
}

/// Returns: why the peer of `conn` may not use the control socket (it is neither root
/// nor the daemon's own user, by SO_PEERCRED), or `None`.
fn refuse_caller(conn: &tokio::net::UnixStream) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    match conn.peer_cred() {
        Ok(c) if c.uid() == 0 || c.uid() == own => None,
        Ok(c) => {
            tracing::warn!(uid = c.uid(), pid = ?c.pid(), "control socket: a caller that is not root refused");
            Some(format!(
                "permission denied: uid {} may not use the control socket (root only)",
                c.uid()
            ))
        }
        Err(e) => {
            tracing::warn!("control socket: the caller's credentials are unknown ({e}); refused");
            Some("permission denied: the caller's credentials are unknown".to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::UnixStream,
    };

    use super::*;

    /// Listens on a fresh socket with a fake daemon answering every request with
    /// `answer`. Returns: the socket (removed on drop) and its directory, for the test
    /// to remove.
    fn server(answer: Response) -> (Socket, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "xdpvs-control-{}-{}",
            std::process::id(),
            next_id()
        ));
        let (socket, mut calls) = listen(&dir.join("s.sock")).unwrap();
        tokio::spawn(async move {
            while let Some((_, reply)) = calls.recv().await {
                let _ = reply.send(answer.clone());
            }
        });
        (socket, dir)
    }

    /// Returns: a number unique in this process, for directory names.
    fn next_id() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    /// Returns: whether the peer of `c` has closed its end (without reading anything).
    fn hung_up(c: &UnixStream) -> bool {
        use std::os::fd::AsRawFd as _;
        let mut p = libc::pollfd {
            fd: c.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n == 1 && p.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
    }

    /// Sends `raw` (without closing) and reads the one answer line. Returns: it.
    async fn exchange(path: &Path, raw: &[u8]) -> String {
        let mut c = UnixStream::connect(path).await.unwrap();
        c.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut out))
            .await
            .expect("answered at once")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn lines_that_are_not_requests_get_an_error_answer() {
        let (s, dir) = server(Response::ok("fine"));
        for (raw, says) in [
            (&b"\xff\xfe garbage\n"[..], "bad request"),
            (b"{not json\n", "bad request"),
            (
                br#"{"cmd":"format_disks"}"#,
                "unknown variant `format_disks`",
            ),
        ] {
            let raw = [raw, b"\n"].concat();
            let out = exchange(s.path(), &raw).await;
            let r: Response = serde_json::from_str(&out).unwrap();
            assert!(!r.ok, "{out}");
            assert!(r.message.unwrap().contains(says), "{out}");
        }
        let out = exchange(s.path(), b"{\"cmd\":\"status\"}\n").await;
        assert_eq!(out, "{\"ok\":true,\"message\":\"fine\"}\n");
        drop(s);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_endless_line_is_refused_once_it_passes_the_limit() {
        let (s, dir) = server(Response::ok("fine"));
        let mut c = UnixStream::connect(s.path()).await.unwrap();
        let (mut read, mut write) = c.split();
        let started = Instant::now();
        // Up to 10 MB without a newline, the connection kept open: the answer must
        // come once the limit is passed, not after the whole line or a timeout.
        let send = async {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..160 {
                if write.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        };
        let mut out = Vec::new();
        let answer = async {
            let mut buf = [0u8; 4096];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(3), async { tokio::join!(send, answer) })
            .await
            .expect("refused well before the request timeout");
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("longer than 65536 bytes"), "{out:?}");
        assert!(started.elapsed() < REQUEST_TIMEOUT);
        drop(s);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_client_that_never_reads_its_answer_is_cut_off() {
        // An answer far larger than the socket's buffers.
        const BIG: usize = 8 << 20;
        let (s, dir) = server(Response::ok("y".repeat(BIG)));
        let mut c = UnixStream::connect(s.path()).await.unwrap();
        c.write_all(b"{\"cmd\":\"status\"}\n").await.unwrap();
        // Not a byte read until the daemon hangs up (or a generous deadline passes):
        // reading earlier would let the whole answer through.
        let deadline = Instant::now() + ANSWER_TIMEOUT * 4;
        while !hung_up(&c) {
            assert!(Instant::now() < deadline, "the daemon never hung up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
            .await
            .expect("closed by the daemon")
            .unwrap();
        assert!(
            out.len() < BIG,
            "the whole answer waited for the client ({} bytes)",
            out.len()
        );
        drop(s);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn connections_without_a_request_cannot_lock_out_one_with_a_request() {
        let (s, dir) = server(Response::ok("fine"));
        // Twice as many idle connections as are kept waiting.
        let mut idle = Vec::new();
        for _ in 0..2 * WAITING_MAX {
            idle.push(UnixStream::connect(s.path()).await.unwrap());
        }
        let started = Instant::now();
        let out = exchange(s.path(), b"{\"cmd\":\"status\"}\n").await;
        assert_eq!(out, "{\"ok\":true,\"message\":\"fine\"}\n");
        assert!(started.elapsed() < REQUEST_TIMEOUT, "answered at once");
        // The oldest were closed, each told why; the newest still wait.
        let mut busy = 0;
        for c in &mut idle[..WAITING_MAX] {
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut out))
                .await
                .expect("closed at once")
                .unwrap();
            let r: Response = serde_json::from_slice(&out).unwrap();
            assert!(r.message.unwrap().starts_with("busy:"));
            busy += 1;
        }
        assert_eq!(busy, WAITING_MAX);
        assert!(
            !hung_up(&idle[2 * WAITING_MAX - 1]),
            "the newest still waits"
        );
        drop(s);
        let _ = std::fs::remove_dir_all(dir);
    }
}
