//! The CLI's side of the control socket: one request, one answer.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::{Request, Response};

/// A failure to reach the daemon or to understand it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no xdpvs daemon is listening on {0} (is `xdpvs run` running? is this the right --socket?)"
    )]
    NotRunning(String),
    #[error("permission denied on {0}: the control socket is root's")]
    Denied(String),
    #[error("talking to the daemon on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon's answer is not understood: {0}")]
    Protocol(String),
}

/// Returns: whether a daemon answers on `socket` (a connection is accepted).
pub fn answers(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

/// Sends `req` to the daemon at `socket`. Returns: its response.
pub fn request(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let p = socket.display().to_string();
    let mut s = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(p.clone())
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Denied(p.clone()),
        _ => ClientError::Io {
            path: p.clone(),
            source: e,
        },
    })?;
    let io = |e| ClientError::Io {
        path: p.clone(),
        source: e,
    };
    // A status walks the connection table; a reload re-reads the file.
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line = serde_json::to_string(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(format!("{e}: {answer:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_daemon_is_said_plainly() {
        let e = request(Path::new("/nonexistent/xdpvs.sock"), &Request::Status).unwrap_err();
        assert!(
            e.to_string().contains("no xdpvs daemon is listening"),
            "{e}"
        );
    }
}
