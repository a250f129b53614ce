//! Clients that keep running while a test does something to the balancer: requests in a
//! loop, a long-lived echoed TCP stream, a steady UDP flow. Each runs on threads inside
//! the client's namespace, is bounded in count, and stops on drop.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// One request of a [`Traffic`] client: when it ended, and who answered.
pub type Sample = (Instant, Result<String, String>);

/// A client sending requests in a loop (see [`Traffic::start`]).
pub struct Traffic {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    /// Starts a client in `ns` that sends one HTTP GET after another to `vip`, each
    /// with `timeout`, `every` apart, at most `max` of them, until stopped.
    pub fn start(
        ns: &Netns,
        vip: SocketAddr,
        every: Duration,
        timeout: Duration,
        max: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let (s, l) = (stop.clone(), log.clone());
        let thread = ns.spawn(move || {
            for _ in 0..max {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let r = crate::http::get(vip, timeout);
                l.lock().expect("traffic log").push((Instant::now(), r));
                std::thread::sleep(every);
            }
        });
        Traffic {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// Returns: the requests made so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.log.lock().expect("traffic log").clone()
    }

    /// Stops the client. Returns: every request made.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("traffic thread");
        }
        self.samples()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How a stream ended: (server, chunks, bytes) echoed intact, or the first error.
pub type StreamResult = Result<(String, u64, u64), String>;

/// The client of a long-lived stream (see [`StreamClient::open`]).
pub struct StreamClient {
    /// The real serving it.
    pub server: String,
    /// The client's end of the connection (its port names the flow).
    pub local: SocketAddr,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
    thread: Option<JoinHandle<StreamResult>>,
}

impl StreamClient {
    /// Opens a long-lived stream from `ns` to `vip` on a thread that sends a chunk every
    /// 100 ms until stopped, each echo awaited up to 3 s. Panics if it does not open
    /// within 5 s.
    pub fn open(ns: &Netns, vip: SocketAddr) -> Self {
        Self::open_with(ns, vip, Duration::from_secs(3))
    }

    /// As [`StreamClient::open`], each echo awaited up to `timeout`: a stream that must
    /// outlast a gap in forwarding (a failover) waits for TCP's retransmissions.
    pub fn open_with(ns: &Netns, vip: SocketAddr, timeout: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let progress = Arc::new(AtomicU64::new(0));
        let pr = progress.clone();
        let thread = ns.spawn(move || {
            let mut st = crate::http::Stream::open(vip, timeout)?;
            let _ = tx.send((st.server.clone(), st.local));
            while !s.load(Ordering::Relaxed) {
                st.chunk()?;
                pr.store(st.chunks(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok((st.server.clone(), st.chunks(), st.verified))
        });
        let (server, local) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the stream did not open");
        StreamClient {
            server,
            local,
            stop,
            progress,
            thread: Some(thread),
        }
    }

    /// Returns: the 0-based index of the real serving the stream (`real3` -> 2).
    pub fn real_index(&self) -> usize {
        self.server
            .trim_start_matches("real")
            .parse::<usize>()
            .expect("server names are realN")
            - 1
    }

    /// Returns: chunks echoed intact so far.
    pub fn chunks(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Returns: whether the stream has failed (its thread ended on its own).
    pub fn failed(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| t.is_finished())
    }

    /// Stops sending and closes the stream. Returns: (server, chunks, bytes) verified, or
    /// the first error.
    pub fn finish(mut self) -> StreamResult {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("finished once")
            .join()
            .expect("stream thread")
    }
}

impl Drop for StreamClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a [`UdpFlow`] saw: datagrams sent, which were answered and by whom.
#[derive(Debug, Default)]
pub struct UdpReport {
    /// Datagrams sent (numbered 0..sent).
    pub sent: u64,
    /// Numbers of the datagrams whose echo came back.
    pub answered: BTreeSet<u64>,
    /// Echoes per answering server.
    pub by_server: BTreeMap<String, u64>,
    /// Answers that were not an echo of a datagram sent.
    pub odd: Vec<String>,
}

impl UdpReport {
    /// Returns: the numbers of the datagrams never answered.
    pub fn lost(&self) -> Vec<u64> {
        (0..self.sent)
            .filter(|i| !self.answered.contains(i))
            .collect()
    }
}

/// One UDP flow (one client socket, so one 5-tuple) at a steady rate, each datagram
/// echoed by a [`crate::http::UdpEcho`] (see [`UdpFlow::start`]).
pub struct UdpFlow {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    report: Arc<Mutex<UdpReport>>,
    sender: Option<JoinHandle<()>>,
    receiver: Option<JoinHandle<()>>,
}

impl UdpFlow {
    /// Starts sending `seq N` from one socket in `ns` to `vip`, one datagram `every`,
    /// at most `max`, and collecting the echoes, until [`UdpFlow::finish`].
    pub fn start(ns: &Netns, vip: SocketAddr, every: Duration, max: u64) -> Self {
        let sock = ns.run(move || {
            let any: SocketAddr = if vip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                .parse()
                .expect("literal");
            let s = UdpSocket::bind(any).expect("bind the UDP client");
            s.connect(vip).expect("connect the UDP client");
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("read timeout");
            s
        });
        let rx = sock.try_clone().expect("clone the UDP socket");
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let report: Arc<Mutex<UdpReport>> = Arc::default();
        let (s, n) = (stop.clone(), sent.clone());
        let sender = std::thread::spawn(move || {
            for i in 0..max {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                // A failed send is a datagram lost like any other: counted, never answered.
                let _ = sock.send(format!("seq {i}").as_bytes());
                n.store(i + 1, Ordering::Relaxed);
                std::thread::sleep(every);
            }
        });
        let (d, r) = (done.clone(), report.clone());
        let receiver = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !d.load(Ordering::Relaxed) {
                let Ok(len) = rx.recv(&mut buf) else { continue };
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                let mut rep = r.lock().expect("UDP report");
                let parsed = text
                    .split_once(":seq ")
                    .and_then(|(server, n)| n.parse::<u64>().ok().map(|n| (server.to_string(), n)));
                match parsed {
                    Some((server, n)) if !rep.answered.contains(&n) => {
                        rep.answered.insert(n);
                        *rep.by_server.entry(server).or_default() += 1;
                    }
                    _ => rep.odd.push(text),
                }
            }
        });
        UdpFlow {
            stop,
            done,
            sent,
            report,
            sender: Some(sender),
            receiver: Some(receiver),
        }
    }

    /// Returns: datagrams answered so far.
    pub fn answered(&self) -> usize {
        self.report.lock().expect("UDP report").answered.len()
    }

    /// Stops sending, waits up to 3 s for the last echoes. Returns: the report.
    pub fn finish(mut self) -> UdpReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sender.take() {
            t.join().expect("UDP sender");
        }
        let sent = self.sent.load(Ordering::Relaxed);
        crate::wait_for(Duration::from_secs(3), || self.answered() as u64 >= sent);
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.receiver.take() {
            t.join().expect("UDP receiver");
        }
        let mut rep = std::mem::take(&mut *self.report.lock().expect("UDP report"));
        rep.sent = sent;
        rep
    }
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.done.store(true, Ordering::Relaxed);
        for t in [self.sender.take(), self.receiver.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
    }
}
