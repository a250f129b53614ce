//! A minimal HTTP/1.0 server that answers every request with its own name, and a
//! client: enough to see which real server answered, with kernels verifying checksums.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::netns::Netns;

/// A server running on a thread inside a namespace; stops on drop.
pub struct NamedServer {
    stop: Arc<AtomicBool>,
    pub served: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NamedServer {
    /// Serves `name` on `bind` inside `ns`.
    pub fn start(ns: &Netns, bind: SocketAddr, name: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (s, c, name) = (stop.clone(), served.clone(), name.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let l = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
            l.set_nonblocking(true).expect("nonblocking");
            ready_tx.send(()).expect("ready");
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 1024];
                        let _ = conn.read(&mut buf);
                        let body = format!("{name}\n");
                        let resp = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                        if conn.write_all(resp.as_bytes()).is_ok() {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server did not start");
        Self {
            stop,
            served,
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

/// One GET to `addr`. Returns: the body, or the error.
pub fn get(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("bad response {resp:?}"))?;
    if !head.starts_with("HTTP/1.0 200") {
        return Err(format!("status: {head}"));
    }
    Ok(body.trim().to_string())
}

/// A UDP server on a thread inside a namespace: answers each datagram with its name,
/// a colon and the datagram; stops on drop.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    pub fn start(ns: &Netns, bind: SocketAddr, name: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, name) = (stop.clone(), name.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            let sock = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            ready_tx.send(()).expect("ready");
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
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
