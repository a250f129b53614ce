//! The daemon's side of the control socket: it accepts connections on a task of its own
//! and hands each request, with a channel for its answer, to the daemon's task.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};

use super::{Request, Response};

/// A control request and where its answer goes.
pub type Call = (Request, oneshot::Sender<Response>);

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve_client(conn, tx.clone()));
        }
    });
    Ok((
        Socket {
            path: path.to_owned(),
        },
        rx,
    ))
}

/// Answers one control connection: a JSON request line in, a JSON line out.
async fn serve_client(conn: tokio::net::UnixStream, calls: mpsc::Sender<Call>) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let (read, mut write) = conn.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read);
    let got = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    let resp = match got {
        Ok(Ok(n)) if n > 0 => match serde_json::from_str::<Request>(&line) {
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
            Err(e) => Response::error(format!("bad request: {e}")),
        },
        _ => return,
    };
    let mut text = serde_json::to_string(&resp).unwrap_or_else(|e| {
        format!("{{\"ok\":false,\"message\":\"cannot encode the answer: {e}\"}}")
    });
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}
