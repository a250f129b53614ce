//! One probe of one real: a TCP connect, a half-open TCP check (a SYN answered, from a
//! raw socket: [`half_open`]), an HTTP request (over TLS for `https`) whose status is
//! checked, or a DNS query over UDP, bounded by the probe's timeout. Stateless: the
//! rise/fall state machines that turn results into transitions live in [`super`].
//!
//! HTTP is spoken by hyper's client, one connection per probe; only the response's head
//! is read, then the connection is dropped. A TCP probe's connection is reset once
//! made, leaving no TIME_WAIT socket behind.

mod dns;
pub mod half_open;
mod tls;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    pin::pin,
    time::{Duration, Instant},
};

use http_body_util::Empty;
use hyper::{
    body::Bytes,
    client::conn::http1,
    header::{HeaderValue, ACCEPT, CONNECTION, HOST, USER_AGENT},
    Request,
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

pub use self::half_open::{HalfOpen, Sockets};
use crate::config::{CheckType, HealthCheck};

/// Why a half-open probe fails when the daemon has no raw sockets.
pub const HALF_OPEN_UNAVAILABLE: &str =
    "half-open probes need raw sockets, which the daemon could not open at start (CAP_NET_RAW)";

/// Largest response head read, in bytes (hyper's buffer): a real cannot make a probe
/// hold more.
const RESPONSE_HEAD_MAX: usize = 64 * 1024;
/// What the probe says it is.
const USER_AGENT_VALUE: &str = concat!("xdpvs-health/", env!("CARGO_PKG_VERSION"));

/// Why a probe failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connection was refused (RST): nothing listens on the port.
    Refused,
    /// No answer within the probe's timeout.
    Timeout(Duration),
    /// The real or its network is unreachable.
    Unreachable(String),
    /// HTTP: the status is not one of those expected.
    Status(u16),
    /// HTTP: what came back is not an HTTP response.
    BadResponse(String),
    /// HTTPS: the TLS handshake failed (certificate not trusted or not for the name,
    /// no common protocol, not TLS at all) or the TLS session broke.
    Tls(String),
    /// DNS: the server answered with an error code.
    Dns(String),
    /// Any other socket error.
    Io(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused => f.write_str("connection refused"),
            Failure::Timeout(d) => write!(f, "timeout after {}", crate::config::fmt_duration(*d)),
            Failure::Unreachable(e) => write!(f, "unreachable: {e}"),
            Failure::Status(s) => write!(f, "status {s}"),
            Failure::BadResponse(e) => write!(f, "bad response: {e}"),
            Failure::Tls(e) => write!(f, "tls: {e}"),
            Failure::Dns(e) => write!(f, "dns: {e}"),
            Failure::Io(e) => f.write_str(e),
        }
    }
}

/// Returns: what a socket error means for the probe.
fn io_failure(e: &std::io::Error) -> Failure {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => Failure::Refused,
        K::HostUnreachable | K::NetworkUnreachable => Failure::Unreachable(e.to_string()),
        _ => Failure::Io(e.to_string()),
    }
}

/// Returns: the failure of a real that closed the connection before its response.
fn closed_without_response() -> Failure {
    Failure::BadResponse("connection closed without a response".into())
}

/// Returns: what a failed HTTP exchange means for the probe: the TLS session's or the
/// socket's error when there is one under hyper's, else a bad response.
fn http_failure(e: hyper::Error) -> Failure {
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return tls::tls_failure(io).unwrap_or_else(|| match io.kind() {
                // A TLS session closed without close_notify.
                std::io::ErrorKind::UnexpectedEof => closed_without_response(),
                _ => io_failure(io),
            });
        }
        source = s.source();
    }
    if e.is_incomplete_message() {
        return closed_without_response();
    }
    Failure::BadResponse(e.to_string())
}

/// The Host header of an HTTP probe: the configured one, else the real's address (and
/// port when not 80), as a browser would write it.
fn host_header(addr: IpAddr, check: &HealthCheck) -> String {
    if let Some(h) = &check.host {
        return h.clone();
    }
    let a = match addr {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    if check.port == 80 {
        a
    } else {
        format!("{a}:{}", check.port)
    }
}

/// Returns: the probe's request: `GET path` with Host, User-Agent, `Accept: */*` and
/// `Connection: close`.
fn request(addr: IpAddr, check: &HealthCheck) -> Result<Request<Empty<Bytes>>, Failure> {
    let host = HeaderValue::from_bytes(host_header(addr, check).as_bytes());
    Request::get(check.path.as_str())
        .header(
            HOST,
            host.map_err(|e| Failure::Io(format!("Host header: {e}")))?,
        )
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header(ACCEPT, "*/*")
        .header(CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| Failure::Io(format!("request: {e}")))
}

/// Sends the probe's request on `io` and reads the response's head.
/// Returns: the status code.
async fn http_status<T>(io: T, addr: IpAddr, check: &HealthCheck) -> Result<u16, Failure>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::Builder::new()
        // Header names as `Host`, `User-Agent` (as before hyper; some servers care).
        .title_case_headers(true)
        .max_buf_size(RESPONSE_HEAD_MAX)
        .handshake(TokioIo::new(io))
        .await
        .map_err(http_failure)?;
    let req = request(addr, check)?;
    // The connection is driven here, beside the request, rather than on a task of its
    // own: a probe costs no spawn, and dropping both closes the socket.
    let mut conn = pin!(conn);
    let mut response = pin!(sender.send_request(req));
    let response = tokio::select! {
        biased;
        r = &mut response => r,
        _ = &mut conn => response.await,
    };
    Ok(response.map_err(http_failure)?.status().as_u16())
}

async fn probe_inner(addr: IpAddr, check: &HealthCheck) -> Result<(), Failure> {
    let target = SocketAddr::new(addr, check.port);
    match check.kind {
        CheckType::Dns => return dns::probe(target, &check.dns).await,
        // Probed by the half-open task when there is one (`super::Health`).
        CheckType::TcpHalfOpen => return Err(Failure::Io(HALF_OPEN_UNAVAILABLE.into())),
        _ => {}
    }
    let conn = TcpStream::connect(target)
        .await
        .map_err(|e| io_failure(&e))?;
    let status = match check.kind {
        CheckType::None | CheckType::Tcp | CheckType::Dns | CheckType::TcpHalfOpen => {
            // The connection proved the port open; it is closed with a reset (zero
            // linger) rather than FIN: no TIME_WAIT socket on this host per probe (a
            // minute each: 10,000 reals probed every second would hold 600,000, past
            // the kernel's tcp_max_tw_buckets), and two packets fewer for the real.
            // HAProxy closes its connect-only checks the same way. Best effort: the
            // probe has succeeded whatever this returns.
            let _ = conn.set_zero_linger();
            return Ok(());
        }
        CheckType::Http => http_status(conn, addr, check).await?,
        CheckType::Https => {
            let tls = tls::handshake(conn, target, check).await?;
            http_status(tls, addr, check).await?
        }
    };
    if check.status_ok(status) {
        Ok(())
    } else {
        Err(Failure::Status(status))
    }
}

/// Probes real `addr` once with `check`, within its timeout. A half-open probe fails
/// here: those are sent by the half-open task ([`HalfOpen`]).
/// Returns: the time the probe took, or why it failed.
pub async fn probe(addr: IpAddr, check: &HealthCheck) -> Result<Duration, Failure> {
    let start = Instant::now();
    match tokio::time::timeout(check.timeout, probe_inner(addr, check)).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(f)) => Err(f),
        Err(_) => Err(Failure::Timeout(check.timeout)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;

    fn check(kind: CheckType, port: u16) -> HealthCheck {
        HealthCheck {
            kind,
            port,
            path: "/health".into(),
            host: None,
            expect_status: vec![(200, 299)],
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(300),
            rise: 2,
            fall: 3,
            verify: crate::config::Verify::SystemRoots,
            dns: crate::config::DnsQuestion::default(),
        }
    }

    /// An HTTP server on loopback answering every request with `status` after `delay`.
    /// Returns: its port, and what it received first.
    async fn http_server(
        status: &'static str,
        delay: Duration,
    ) -> (u16, tokio::sync::oneshot::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            loop {
                let Ok((mut c, _)) = l.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 1024];
                let n = c.read(&mut buf).await.unwrap_or(0);
                if let Some(tx) = tx.take() {
                    let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
                tokio::time::sleep(delay).await;
                let _ = c.write_all(status.as_bytes()).await;
            }
        });
        (port, rx)
    }

    /// A port on loopback nothing listens on.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    const LO: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn tcp_probe_succeeds_on_a_listener_and_is_refused_without_one() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(probe(LO, &check(CheckType::Tcp, port)).await.is_ok());
        drop(l);
        assert_eq!(
            probe(LO, &check(CheckType::Tcp, closed_port())).await,
            Err(Failure::Refused)
        );
    }

    #[tokio::test]
    async fn a_tcp_probe_closes_its_connection_with_a_reset() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 16];
            std::io::Read::read(&mut c, &mut buf).map_err(|e| e.kind())
        });
        assert!(probe(LO, &check(CheckType::Tcp, port)).await.is_ok());
        // A FIN would read as the end of the stream (Ok(0)); the probe's reset reads as
        // an error.
        assert_eq!(
            server.join().unwrap(),
            Err(std::io::ErrorKind::ConnectionReset)
        );
    }

    #[tokio::test]
    async fn http_probe_matches_the_status_and_sends_path_and_host() {
        let (port, first) = http_server("HTTP/1.1 204 No Content\r\n\r\n", Duration::ZERO).await;
        let c = check(CheckType::Http, port);
        assert!(probe(LO, &c).await.is_ok());
        let req = first.await.unwrap();
        assert!(req.starts_with("GET /health HTTP/1.1\r\n"), "{req}");
        assert!(
            req.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")),
            "{req}"
        );
        let agent = format!(
            "\r\nUser-Agent: xdpvs-health/{}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(req.contains(&agent), "{req}");

        let (port, _) = http_server("HTTP/1.0 503 Unavailable\r\n\r\n", Duration::ZERO).await;
        assert_eq!(
            probe(LO, &check(CheckType::Http, port)).await,
            Err(Failure::Status(503))
        );
        let (port, _) = http_server("SSH-2.0-OpenSSH\r\n", Duration::ZERO).await;
        assert!(matches!(
            probe(LO, &check(CheckType::Http, port)).await,
            Err(Failure::BadResponse(_))
        ));
    }

    #[tokio::test]
    async fn a_slow_answer_is_a_timeout_within_the_bound() {
        let (port, _) = http_server("HTTP/1.1 200 OK\r\n\r\n", Duration::from_secs(5)).await;
        let c = check(CheckType::Http, port);
        let start = Instant::now();
        assert_eq!(probe(LO, &c).await, Err(Failure::Timeout(c.timeout)));
        let took = start.elapsed();
        assert!(
            took >= c.timeout && took < c.timeout + Duration::from_secs(1),
            "{took:?}"
        );
    }
}
