//! A minimal HTTP/1.0 server that answers every request with its own name, and a
//! client: enough to see which real server answered, with kernels verifying checksums.
//! For https probes, a test CA and a TLS server, both from the `openssl` command.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::netns::Netns;

/// Status the server answers `GET /health` with, unless changed through
/// [`NamedServer::health_status`].
pub const HEALTHY: u16 = 200;

/// Returns: the N of a `GET /bytes/N` request.
fn bytes_asked(req: &[u8]) -> Option<usize> {
    let rest = req.strip_prefix(b"GET /bytes/")?;
    let end = rest.iter().position(|b| *b == b' ')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Returns: `n` bytes of a pattern that a lost, repeated or reordered segment
/// would break (letters by position).
pub fn pattern(n: usize) -> String {
    (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect()
}

/// A server running on a thread inside a namespace; stops on drop. It answers:
/// - `GET /health`: an empty page with status [`NamedServer::health_status`] (probes;
///   not counted);
/// - `GET /bytes/N`: 200 with N bytes of [`pattern`] (large responses: path MTU),
///   counted;
/// - any other GET: 200 with its name, counted in `served`;
/// - `ECHO\n`: its name on a line, then everything it receives back, until the client
///   closes (a long-lived stream, on a thread of its own);
/// - a connection that sends nothing (a TCP probe): closed, not counted.
pub struct NamedServer {
    stop: Arc<AtomicBool>,
    pub served: Arc<AtomicU64>,
    pub health_status: Arc<std::sync::atomic::AtomicU16>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn echo(mut conn: TcpStream, name: &str, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    if conn.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl NamedServer {
    /// A stopped server (a placeholder for one that was stopped).
    pub fn idle() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(true)),
            served: Arc::new(AtomicU64::new(0)),
            health_status: Arc::new(std::sync::atomic::AtomicU16::new(HEALTHY)),
            thread: None,
        }
    }

    /// Serves `name` on `bind` inside `ns`.
    pub fn start(ns: &Netns, bind: SocketAddr, name: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let health_status = Arc::new(std::sync::atomic::AtomicU16::new(HEALTHY));
        let (s, c, h, name) = (
            stop.clone(),
            served.clone(),
            health_status.clone(),
            name.to_string(),
        );
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let l = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
            l.set_nonblocking(true).expect("nonblocking");
            ready_tx.send(()).expect("ready");
            let mut streams = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        // A client that stopped reading (a stalled download) must not
                        // hold the server, nor its drop, for ever.
                        let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
                        let mut buf = [0u8; 1024];
                        let n = conn.read(&mut buf).unwrap_or(0);
                        let req = &buf[..n];
                        if req.starts_with(b"ECHO\n") {
                            let (s, name) = (s.clone(), name.clone());
                            streams.push(std::thread::spawn(move || echo(conn, &name, &s)));
                            continue;
                        }
                        let (status, body, counted) = if req.starts_with(b"GET /health ") {
                            (h.load(Ordering::Relaxed), String::new(), false)
                        } else if let Some(n) = bytes_asked(req) {
                            (200, pattern(n), true)
                        } else if req.starts_with(b"GET ") {
                            (200, format!("{name}\n"), true)
                        } else {
                            continue;
                        };
                        let resp = format!("HTTP/1.0 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                        if conn.write_all(resp.as_bytes()).is_ok() && counted {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            drop(l);
            for t in streams {
                let _ = t.join();
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server did not start");
        Self {
            stop,
            served,
            health_status,
            thread: Some(thread),
        }
    }
}

impl Drop for NamedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A long-lived TCP stream to an echoing [`NamedServer`]: every chunk sent must come
/// back byte for byte.
pub struct Stream {
    conn: TcpStream,
    /// The server that answered.
    pub server: String,
    /// The client's end of the connection.
    pub local: SocketAddr,
    /// Bytes sent and echoed back intact.
    pub verified: u64,
    chunks: u64,
}

impl Stream {
    /// Opens a stream to `addr`. Returns: the stream, or the error.
    pub fn open(addr: SocketAddr, timeout: Duration) -> Result<Self, String> {
        let mut conn =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
        conn.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        conn.write_all(b"ECHO\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut name = Vec::new();
        let mut b = [0u8; 1];
        while b[0] != b'\n' {
            let n = conn.read(&mut b).map_err(|e| format!("read name: {e}"))?;
            if n == 0 {
                return Err("closed before the server named itself".into());
            }
            name.push(b[0]);
        }
        let local = conn
            .local_addr()
            .map_err(|e| format!("local address: {e}"))?;
        Ok(Self {
            conn,
            server: String::from_utf8_lossy(&name).trim().to_string(),
            local,
            verified: 0,
            chunks: 0,
        })
    }

    /// Sends the next 100-byte chunk (its number and a pattern) and checks the echo.
    /// Returns: the error if the echo is missing or differs.
    pub fn chunk(&mut self) -> Result<(), String> {
        let n = self.chunks;
        let mut data = format!("chunk {n:010} ").into_bytes();
        data.extend((0..100 - data.len()).map(|i| b'a' + ((n as usize + i) % 26) as u8));
        self.conn
            .write_all(&data)
            .map_err(|e| format!("chunk {n}: write: {e}"))?;
        let mut back = vec![0u8; data.len()];
        self.conn
            .read_exact(&mut back)
            .map_err(|e| format!("chunk {n}: read: {e}"))?;
        if back != data {
            return Err(format!("chunk {n}: echo differs"));
        }
        self.chunks += 1;
        self.verified += data.len() as u64;
        Ok(())
    }

    /// Returns: chunks verified so far.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }
}

/// Sends `request` to `addr` and reads the answer until the server closes.
/// Returns: the response head and body.
fn exchange(
    addr: SocketAddr,
    request: &str,
    timeout: Duration,
) -> Result<(String, String), String> {
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    exchange_on(s, request, timeout)
}

/// Sends `request` on connection `s` and reads the response to its end.
/// Returns: the response head and body.
fn exchange_on(
    mut s: TcpStream,
    request: &str,
    timeout: Duration,
) -> Result<(String, String), String> {
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("bad response {resp:?}"))?;
    Ok((head.to_string(), body.to_string()))
}

/// One GET to `addr`. Returns: the body, or the error.
pub fn get(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    get_from(addr, timeout).map(|(_, body)| body)
}

/// One GET to `addr`. Returns: the connection's local address and the body, or the
/// error.
pub fn get_from(addr: SocketAddr, timeout: Duration) -> Result<(SocketAddr, String), String> {
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    let local = s.local_addr().map_err(|e| format!("local address: {e}"))?;
    let (head, body) = exchange_on(s, "GET / HTTP/1.0\r\nHost: vip\r\n\r\n", timeout)?;
    if !head.starts_with("HTTP/1.0 200") {
        return Err(format!("status: {head}"));
    }
    Ok((local, body.trim().to_string()))
}

/// An HTTP/1.1 GET of `path` from `addr`, with an `Accept` header if given.
/// Returns: the response head (status line and headers) and the body, whatever the
/// status.
pub fn fetch(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
    timeout: Duration,
) -> Result<(String, String), String> {
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
    exchange(addr, &req, timeout)
}

/// A UDP server on a thread inside a namespace: answers each datagram with its name,
/// a colon and the datagram; stops on drop.
pub struct UdpEcho {
    /// Datagrams received.
    pub received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    pub fn start(ns: &Netns, bind: SocketAddr, name: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (s, c, name) = (stop.clone(), received.clone(), name.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let sock = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            ready_tx.send(()).expect("ready");
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    c.fetch_add(1, Ordering::Relaxed);
                    let mut out = format!("{name}:").into_bytes();
                    out.extend_from_slice(&buf[..n]);
                    let _ = sock.send_to(&out, peer);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("UDP server did not start");
        Self {
            received,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `payload` to `addr` and waits for one answer, retrying up to three times
/// (UDP may lose the first datagram while a neighbour is resolved).
/// Returns: the answer, or the error.
pub fn udp_exchange(
    addr: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("literal");
    let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut last = String::new();
    for _ in 0..3 {
        sock.send_to(payload, addr)
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = [0u8; 2048];
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from == addr => return Ok(buf[..n].to_vec()),
            Ok((_, from)) => last = format!("answer from {from}, not {addr}"),
            Err(e) => last = format!("recv: {e}"),
        }
    }
    Err(last)
}

/// A certificate authority of a test's own, made with `openssl` in a directory: its
/// certificate is what an https probe's `ca_file` names.
pub struct TestCa {
    dir: PathBuf,
    /// Base name of its files in `dir`.
    file: String,
    /// The CA's certificate (PEM).
    pub cert: PathBuf,
}

/// Runs `openssl` in `dir` with the words of `line`. Panics with its output if it fails.
fn openssl(dir: &Path, line: &str) {
    let out = Command::new("openssl")
        .args(line.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("openssl (cargo xtask setup installs Debian's openssl)");
    assert!(
        out.status.success(),
        "openssl {line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// Makes a CA with common name `name` (no spaces), its certificate and key as
    /// `<file>.pem` and `<file>.key` in `dir`.
    pub fn new(dir: &Path, file: &str, name: &str) -> Self {
        openssl(
            dir,
            &format!("req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN={name} -keyout {file}.key -out {file}.pem"),
        );
        Self {
            dir: dir.to_path_buf(),
            file: file.to_string(),
            cert: dir.join(format!("{file}.pem")),
        }
    }

    /// Issues a server certificate for DNS name `dns`, as `<file>.pem` and `<file>.key`
    /// in the CA's directory. Returns: the certificate's and the key's paths.
    pub fn issue(&self, file: &str, dns: &str) -> (PathBuf, PathBuf) {
        let ext = format!("subjectAltName=DNS:{dns}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n");
        std::fs::write(self.dir.join(format!("{file}.ext")), ext).expect("extensions file");
        openssl(
            &self.dir,
            &format!("req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN={dns} -keyout {file}.key -out {file}.csr"),
        );
        let ca = &self.file;
        openssl(
            &self.dir,
            &format!("x509 -req -days 2 -in {file}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial -extfile {file}.ext -out {file}.pem"),
        );
        let at = |ext: &str| self.dir.join(format!("{file}.{ext}"));
        (at("pem"), at("key"))
    }
}

/// An HTTPS server in a namespace: `openssl s_server -HTTP`, which answers `GET /name`
/// with the file `name` of its directory as a complete HTTP response; so `GET /health`
/// answers [`TlsServer::health_status`]'s status. Stopped with SIGTERM on drop.
pub struct TlsServer {
    child: Child,
    dir: PathBuf,
}

impl TlsServer {
    /// Serves on `bind` inside `ns` with certificate `cert` and key `key`, from `dir`
    /// (created); `/health` answers 200 until told otherwise. Waits until it listens.
    pub fn start(ns: &Netns, dir: &Path, bind: SocketAddr, cert: &Path, key: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("TLS server directory");
        let log = std::fs::File::create(dir.join("s_server.log")).expect("TLS server log");
        let child = Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "openssl", "s_server", "-quiet", "-HTTP",
            ])
            .arg("-accept")
            .arg(bind.to_string())
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("openssl s_server (cargo xtask setup installs Debian's openssl)");
        let s = Self {
            child,
            dir: dir.to_path_buf(),
        };
        s.health_status(HEALTHY);
        let listening = crate::wait_for(Duration::from_secs(5), || {
            !ns.exec(&["ss", "-Hltn", &format!("sport = :{}", bind.port())])
                .trim()
                .is_empty()
        });
        assert!(listening, "openssl s_server did not listen on {bind}");
        s
    }

    /// Makes `GET /health` answer `status` from now on.
    pub fn health_status(&self, status: u16) {
        let answer =
            format!("HTTP/1.0 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        // Renamed into place: the server never reads half a file.
        let new = self.dir.join("health.new");
        std::fs::write(&new, answer).expect("health answer");
        std::fs::rename(&new, self.dir.join("health")).expect("health answer");
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
