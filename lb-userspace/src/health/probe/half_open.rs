//! Half-open TCP probes (`type: tcp_half_open`, decision 0020): a SYN is sent from a raw
//! socket and the real's answer read from it. A SYN-ACK that acknowledges the SYN is a
//! port open, a reset that acknowledges it a port closed, nothing within the timeout a
//! failure. No socket of this host owns the connection, so the kernel answers the
//! SYN-ACK with a bare reset and the real drops its half-open connection: the real's
//! application never sees the probe, and neither side keeps any state.
//!
//! One task probes every such real ([`HalfOpen`]): it keeps them in a queue ordered by
//! what each waits for next (its next SYN, or its answer's deadline), wakes at most
//! every [`BATCH`] to send the SYNs due and time out the answers late, and reads the
//! answers as they come. Per probe this costs a `sendmsg`, the read of the answer and a
//! few map operations, against a task, its timers, a socket, a connect, a handshake and
//! a close for `tcp` (decision 0020 has the figures).
//!
//! The two raw sockets (IPv4, IPv6) need CAP_NET_RAW to be opened; the daemon opens
//! them at start, before it drops privileges (decision 0007), and keeps them. Each
//! carries a classic BPF filter, so that of the TCP segments this host receives only
//! SYN-ACKs and resets to the probes' ports are copied to it. Probes use source ports
//! [`PORTS`], outside Linux's default ephemeral range (32768-60999), so that no
//! connection of this host shares a probe's four-tuple. A probe's initial sequence
//! number is random (keyed by the process): an answer that does not acknowledge it is
//! ignored, so that another host cannot fake one.

use std::{
    collections::HashMap,
    hash::{BuildHasher as _, Hasher as _},
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, Notify},
    task::JoinHandle,
    time::Instant,
};

use super::{io_failure, Failure};
use crate::{config::HealthCheck, health::Report, model::RealKey};

/// The probes' source ports: above Linux's default `ip_local_port_range` (32768-60999).
pub const PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;
/// How often at most the task wakes to send and time out: what is due within it is
/// done together, at most this late.
pub const BATCH: Duration = Duration::from_millis(5);
/// How long the source address found for an IPv4 real is used before it is asked again.
const SOURCE_TTL: Duration = Duration::from_secs(30);
/// The receive buffer asked for each raw socket: answers that arrive together (a probe
/// round's) queue there until read.
const RECV_BUFFER: libc::c_int = 4 << 20;
/// Most answers read from one socket before the task sends and times out again.
const READ_MAX: usize = 1024;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// The raw sockets, opened (with CAP_NET_RAW) before the task that uses them starts.
pub struct Sockets {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl Sockets {
    /// Opens both raw sockets, filtered. Needs CAP_NET_RAW.
    pub fn open() -> io::Result<Self> {
        let v4 = raw_socket(libc::AF_INET)?;
        attach_filter(&v4, &filter_v4())?;
        let v6 = raw_socket(libc::AF_INET6)?;
        // The kernel computes an IPv6 segment's checksum (and checks those received):
        // the source address it chooses is in it.
        setsockopt(&v6, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, 16)?;
        attach_filter(&v6, &filter_v6())?;
        for fd in [&v4, &v6] {
            // Larger than the default where allowed (CAP_NET_ADMIN); else the default.
            if setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RECV_BUFFER).is_err() {
                let _ = setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, RECV_BUFFER);
            }
        }
        Ok(Self { v4, v6 })
    }
}

/// The task probing every half-open real, and its state. Dropping it stops the task.
pub struct HalfOpen {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// A real probed half-open, as [`HalfOpen::add`] returned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    index: usize,
    /// The real's task number, which no other real has.
    task: u64,
}

struct Shared {
    v4: AsyncFd<OwnedFd>,
    v6: AsyncFd<OwnedFd>,
    state: Mutex<State>,
    /// Wakes the task when a real is added: its first SYN may be due before the task's
    /// next wake.
    added: Notify,
}

struct State {
    reals: Vec<Option<Real>>,
    free: Vec<usize>,
    /// What each real waits for next (its next SYN, or its answer's deadline).
    queue: Queue,
    /// The probes in flight, by four-tuple.
    in_flight: HashMap<Key, usize>,
    next_arm: u64,
    next_port: u32,
    probes: u64,
    isn_key: std::collections::hash_map::RandomState,
    sources: Sources,
}

struct Real {
    key: RealKey,
    task: u64,
    target: SocketAddr,
    interval: Duration,
    timeout: Duration,
    /// The arm of the queue entry that stands for this real.
    arm: u64,
    /// When its next SYN is due.
    next: Instant,
    flight: Option<Flight>,
}

struct Flight {
    key: Key,
    isn: u32,
    sent: Instant,
}

/// A probe in flight: the real, and the probe's source port.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Key {
    real: IpAddr,
    real_port: u16,
    port: u16,
}

/// IPv4 source addresses by real, as the kernel's routes choose them (the checksum of
/// an IPv4 segment covers them, and a raw IPv4 socket does not compute it).
struct Sources {
    route: UdpSocket,
    by_real: HashMap<Ipv4Addr, (Ipv4Addr, Instant)>,
}

/// What a segment read from a raw socket says, when it is TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Answer {
    real: IpAddr,
    real_port: u16,
    port: u16,
    ack: u32,
    flags: u8,
}

impl HalfOpen {
    /// Starts the task probing through `sockets` (on the current tokio runtime), which
    /// sends each probe's outcome on `reports`.
    pub fn start(sockets: Sockets, reports: mpsc::Sender<Report>) -> io::Result<Self> {
        // SAFETY: each descriptor is owned by its AsyncFd, open and the same for the
        // AsyncFd's whole life.
        let (v4, v6) = unsafe {
            (
                AsyncFd::register(sockets.v4)?,
                AsyncFd::register(sockets.v6)?,
            )
        };
        let shared = Arc::new(Shared {
            v4,
            v6,
            state: Mutex::new(State {
                reals: Vec::new(),
                free: Vec::new(),
                queue: Queue::new(Instant::now()),
                in_flight: HashMap::new(),
                next_arm: 0,
                next_port: 0,
                probes: 0,
                isn_key: std::collections::hash_map::RandomState::new(),
                sources: Sources {
                    route: UdpSocket::bind("0.0.0.0:0")?,
                    by_real: HashMap::new(),
                },
            }),
            added: Notify::new(),
        });
        let task = tokio::spawn(run(Arc::clone(&shared), reports));
        Ok(Self { shared, task })
    }

    /// Starts probing real `key` at `addr` with `check`, its first SYN `first` from now,
    /// its outcomes reported under `task`.
    pub fn add(
        &self,
        key: RealKey,
        task: u64,
        addr: IpAddr,
        check: &HealthCheck,
        first: Duration,
    ) -> Slot {
        let slot = {
            let mut st = self.shared.state();
            let arm = st.arm();
            let next = Instant::now() + first;
            let real = Real {
                key,
                task,
                target: SocketAddr::new(addr, check.port),
                interval: check.interval,
                timeout: check.timeout,
                arm,
                next,
                flight: None,
            };
            let index = match st.free.pop() {
                Some(i) => {
                    st.reals[i] = Some(real);
                    i
                }
                None => {
                    st.reals.push(Some(real));
                    st.reals.len() - 1
                }
            };
            st.queue.push(next, index, arm);
            Slot { index, task }
        };
        self.shared.added.notify_one();
        slot
    }

    /// Stops probing the real of `slot` (a probe in flight is forgotten, its answer
    /// ignored).
    pub fn remove(&self, slot: Slot) {
        let mut st = self.shared.state();
        let Some(Some(r)) = st.reals.get(slot.index) else {
            return;
        };
        if r.task != slot.task {
            return;
        }
        if let Some(f) = &r.flight {
            let k = f.key;
            st.in_flight.remove(&k);
        }
        st.reals[slot.index] = None;
        st.free.push(slot.index);
    }
}

impl Drop for HalfOpen {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The task: reads answers as they come, and at most every [`BATCH`] sends the SYNs due
/// and times out the answers late, reporting every outcome.
async fn run(shared: Arc<Shared>, reports: mpsc::Sender<Report>) {
    let mut buf = [0u8; 256];
    let mut out: Vec<Report> = Vec::new();
    let mut answers: Vec<Answer> = Vec::new();
    let mut last = Instant::now();
    loop {
        let next = shared.state().queue.first();
        let wake = next.map(|t| t.max(last + BATCH));
        tokio::select! {
            _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            () = shared.added.notified() => {}
            r = shared.v4.readable() => {
                let Ok(mut ready) = r else { return };
                read(&mut ready, &mut buf, &mut answers);
            }
            r = shared.v6.readable() => {
                let Ok(mut ready) = r else { return };
                read(&mut ready, &mut buf, &mut answers);
            }
        }
        let now = Instant::now();
        {
            let mut st = shared.state();
            for a in answers.drain(..) {
                st.answer(&a, now, &mut out);
            }
            if now >= last + BATCH {
                last = now;
                st.due(&shared, now, &mut out);
            }
        }
        for r in out.drain(..) {
            if reports.send(r).await.is_err() {
                return;
            }
        }
    }
}

/// Reads answers from a readable raw socket into `answers`, at most [`READ_MAX`].
fn read(
    ready: &mut tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>,
    buf: &mut [u8],
    answers: &mut Vec<Answer>,
) {
    for _ in 0..READ_MAX {
        match ready.try_io(|fd| recv_from(fd.as_raw_fd(), buf)) {
            Ok(Ok((n, from))) => {
                let answer = match from {
                    Some(src) => parse_v6(src, &buf[..n]),
                    None => parse_v4(&buf[..n]),
                };
                answers.extend(answer);
            }
            // A queue overrun (ENOBUFS) or the like: the probes it cost time out.
            Ok(Err(e)) => {
                tracing::debug!("half-open probes: reading an answer: {e}");
                return;
            }
            Err(_would_block) => return,
        }
    }
}

impl State {
    fn arm(&mut self) -> u64 {
        self.next_arm += 1;
        self.next_arm
    }

    /// Returns: a random initial sequence number.
    fn isn(&mut self) -> u32 {
        self.probes += 1;
        let mut h = self.isn_key.build_hasher();
        h.write_u64(self.probes);
        h.finish() as u32
    }

    /// Ends the probe `a` answers, if it acknowledges that probe's SYN.
    fn answer(&mut self, a: &Answer, now: Instant, out: &mut Vec<Report>) {
        let key = Key {
            real: a.real,
            real_port: a.real_port,
            port: a.port,
        };
        let Some(&index) = self.in_flight.get(&key) else {
            return;
        };
        let Some(Some(r)) = self.reals.get(index) else {
            return;
        };
        let Some(open) = r.flight.as_ref().and_then(|f| verdict(a, f.isn)) else {
            return;
        };
        self.in_flight.remove(&key);
        let result = match open {
            true => Ok(now.saturating_duration_since(r.flight.as_ref().map_or(now, |f| f.sent))),
            false => Err(Failure::Refused),
        };
        self.end(index, result, out);
    }

    /// Ends the flight of the real at `index` with `result`, reported, and queues its
    /// next SYN.
    fn end(&mut self, index: usize, result: Result<Duration, Failure>, out: &mut Vec<Report>) {
        let arm = self.arm();
        let Some(Some(r)) = self.reals.get_mut(index) else {
            return;
        };
        r.flight = None;
        r.arm = arm;
        out.push(Report {
            key: r.key.clone(),
            task: r.task,
            result,
        });
        let next = r.next;
        self.queue.push(next, index, arm);
    }

    /// Does what is due by `now`: times out the answers late, sends the SYNs due.
    fn due(&mut self, shared: &Shared, now: Instant, out: &mut Vec<Report>) {
        for (index, arm) in self.queue.take_due(now) {
            let Some(Some(r)) = self.reals.get(index) else {
                continue;
            };
            if r.arm != arm {
                continue;
            }
            if let Some(f) = &r.flight {
                let (k, timeout) = (f.key, r.timeout);
                self.in_flight.remove(&k);
                self.end(index, Err(Failure::Timeout(timeout)), out);
                continue;
            }
            if let Err(f) = self.send(shared, index, now) {
                self.end(index, Err(f), out);
            }
        }
    }

    /// Sends the SYN of the real at `index` and queues its deadline; its next SYN is due
    /// an interval after this one (or after now, when this one was late).
    fn send(&mut self, shared: &Shared, index: usize, now: Instant) -> Result<(), Failure> {
        let Some(Some(r)) = self.reals.get(index) else {
            return Ok(());
        };
        let (target, interval, timeout, next) = (r.target, r.interval, r.timeout, r.next);
        let next = (next + interval).max(now + interval / 2);
        if let Some(Some(r)) = self.reals.get_mut(index) {
            r.next = next;
        }
        let isn = self.isn();
        let key = self.claim(target, index)?;
        let sent = match target {
            SocketAddr::V4(t) => self.send_v4(shared, *t.ip(), key.port, t.port(), isn, now),
            SocketAddr::V6(t) => {
                let seg = syn_segment(key.port, t.port(), isn, None);
                send_v6(&shared.v6, &t, &seg)
            }
        };
        if let Err(e) = sent {
            self.in_flight.remove(&key);
            return Err(io_failure(&e));
        }
        let arm = self.arm();
        if let Some(Some(r)) = self.reals.get_mut(index) {
            r.flight = Some(Flight {
                key,
                isn,
                sent: Instant::now(),
            });
            r.arm = arm;
        }
        self.queue.push(now + timeout, index, arm);
        Ok(())
    }

    /// Records a probe of `target` as in flight, under a source port no probe of the
    /// same target uses. Returns: its key.
    fn claim(&mut self, target: SocketAddr, index: usize) -> Result<Key, Failure> {
        let span = u32::from(*PORTS.end() - *PORTS.start()) + 1;
        for _ in 0..span {
            let n = self.next_port % span;
            self.next_port = self.next_port.wrapping_add(1);
            let key = Key {
                real: target.ip(),
                real_port: target.port(),
                port: *PORTS.start() + n as u16,
            };
            if let std::collections::hash_map::Entry::Vacant(e) = self.in_flight.entry(key) {
                e.insert(index);
                return Ok(key);
            }
        }
        Err(Failure::Io(format!(
            "every probe port ({}-{}) is in use for {target}",
            PORTS.start(),
            PORTS.end()
        )))
    }

    /// Sends a SYN to `real`, from the source the routes give it (with IP_PKTINFO: the
    /// checksum covers it, so the kernel must not choose another). A send that fails is
    /// tried again once with the source asked anew: the address may have left this host.
    fn send_v4(
        &mut self,
        shared: &Shared,
        real: Ipv4Addr,
        port: u16,
        real_port: u16,
        isn: u32,
        now: Instant,
    ) -> io::Result<()> {
        let source = self.sources.source(real, now)?;
        let sent = send_syn_v4(&shared.v4, source, real, port, real_port, isn);
        if sent.is_ok() {
            return sent;
        }
        self.sources.by_real.remove(&real);
        let again = self.sources.source(real, now)?;
        if again == source {
            return sent;
        }
        send_syn_v4(&shared.v4, again, real, port, real_port, isn)
    }
}

/// Reals by when they are next due, in buckets of [`BATCH`]: a bucket is taken whole
/// once its end has passed, so nothing is done early and at most a batch late. An
/// entry is (slot, arm); one whose arm is no longer its real's is stale and skipped.
struct Queue {
    epoch: Instant,
    buckets: std::collections::BTreeMap<u64, Vec<(usize, u64)>>,
}

impl Queue {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            buckets: std::collections::BTreeMap::new(),
        }
    }

    /// Returns: the bucket that ends at or after `t`.
    fn bucket(&self, t: Instant) -> u64 {
        let ns = t.saturating_duration_since(self.epoch).as_nanos();
        ns.div_ceil(BATCH.as_nanos()) as u64
    }

    fn push(&mut self, at: Instant, index: usize, arm: u64) {
        let b = self.bucket(at);
        self.buckets.entry(b).or_default().push((index, arm));
    }

    /// Returns: when the first bucket ends, if any is queued.
    fn first(&self) -> Option<Instant> {
        let (&b, _) = self.buckets.first_key_value()?;
        Some(self.epoch + Duration::from_nanos(BATCH.as_nanos() as u64 * b))
    }

    /// Takes every entry of the buckets that ended by `now`.
    fn take_due(&mut self, now: Instant) -> Vec<(usize, u64)> {
        let ended =
            (now.saturating_duration_since(self.epoch).as_nanos() / BATCH.as_nanos()) as u64;
        let mut due = Vec::new();
        while let Some(e) = self.buckets.first_entry() {
            if *e.key() > ended {
                break;
            }
            let mut v = e.remove();
            if due.is_empty() {
                due = v;
            } else {
                due.append(&mut v);
            }
        }
        due
    }
}

impl Sources {
    /// Returns: the source address this host's routes give segments to `real`.
    fn source(&mut self, real: Ipv4Addr, now: Instant) -> io::Result<Ipv4Addr> {
        if let Some((src, at)) = self.by_real.get(&real) {
            if now.saturating_duration_since(*at) < SOURCE_TTL {
                return Ok(*src);
            }
        }
        // Connecting a UDP socket asks the routes and sends nothing.
        self.route.connect((real, 9))?;
        let IpAddr::V4(src) = self.route.local_addr()?.ip() else {
            return Err(io::Error::other("an IPv4 route gave a non-IPv4 source"));
        };
        self.by_real.insert(real, (src, now));
        Ok(src)
    }
}

/// Sends a SYN to `real` from `source`, without waiting: a raw socket whose send buffer
/// is full fails the probe.
fn send_syn_v4(
    fd: &AsyncFd<OwnedFd>,
    source: Ipv4Addr,
    real: Ipv4Addr,
    port: u16,
    real_port: u16,
    isn: u32,
) -> io::Result<()> {
    let seg = syn_segment(port, real_port, isn, Some((source, real)));
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(real).to_be(),
        },
        sin_zero: [0; 8],
    };
    let info = libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(source).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    send_with_pktinfo(fd.as_raw_fd(), &seg, &dst, &info).map(|_| ())
}

/// Sends a SYN to `real`, without waiting.
fn send_v6(fd: &AsyncFd<OwnedFd>, real: &std::net::SocketAddrV6, seg: &[u8]) -> io::Result<()> {
    let dst = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: real.ip().octets(),
        },
        sin6_scope_id: real.scope_id(),
    };
    // SAFETY: the buffer and the address are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            seg.as_ptr().cast(),
            seg.len(),
            libc::MSG_DONTWAIT,
            (&raw const dst).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Returns: what `answer` says of the probe whose initial sequence number is `isn`:
/// `Some(true)` open (a SYN-ACK acknowledging the SYN), `Some(false)` closed (a reset
/// acknowledging it, RFC 9293 3.10.7.3), `None` nothing (not an answer to it).
fn verdict(answer: &Answer, isn: u32) -> Option<bool> {
    if answer.flags & ACK == 0 || answer.ack != isn.wrapping_add(1) {
        return None;
    }
    if answer.flags & RST != 0 {
        return Some(false);
    }
    (answer.flags & (SYN | FIN) == SYN).then_some(true)
}

/// Returns: the answer in an IPv4 datagram as a raw IPv4 socket reads it (from its IP
/// header), if it is an unfragmented TCP segment.
fn parse_v4(d: &[u8]) -> Option<Answer> {
    let ihl = usize::from(*d.first()? & 0x0f) * 4;
    if d[0] >> 4 != 4 || ihl < 20 || d.len() < ihl + 20 || d[9] != libc::IPPROTO_TCP as u8 {
        return None;
    }
    if u16::from_be_bytes([d[6], d[7]]) & 0x1fff != 0 {
        return None;
    }
    let real = Ipv4Addr::new(d[12], d[13], d[14], d[15]);
    parse_tcp(IpAddr::V4(real), &d[ihl..])
}

/// Returns: the answer in a TCP segment as a raw IPv6 socket reads it (from its TCP
/// header; the source address comes apart).
fn parse_v6(real: Ipv6Addr, d: &[u8]) -> Option<Answer> {
    parse_tcp(IpAddr::V6(real), d)
}

fn parse_tcp(real: IpAddr, t: &[u8]) -> Option<Answer> {
    if t.len() < 20 {
        return None;
    }
    Some(Answer {
        real,
        real_port: u16::from_be_bytes([t[0], t[1]]),
        port: u16::from_be_bytes([t[2], t[3]]),
        ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        flags: t[13],
    })
}

/// Returns: a SYN from `port` to `real_port` with sequence number `isn`, a window of
/// 64,240 and an MSS option of 1,460 (as Linux's first SYN), its checksum computed over
/// `addrs` (IPv4 source and destination) or left to the kernel (IPv6: `None`).
fn syn_segment(
    port: u16,
    real_port: u16,
    isn: u32,
    addrs: Option<(Ipv4Addr, Ipv4Addr)>,
) -> [u8; 24] {
    let mut t = [0u8; 24];
    t[0..2].copy_from_slice(&port.to_be_bytes());
    t[2..4].copy_from_slice(&real_port.to_be_bytes());
    t[4..8].copy_from_slice(&isn.to_be_bytes());
    // Acknowledgement number 0; data offset 6 words (the header and the MSS option).
    t[12] = 6 << 4;
    t[13] = SYN;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    // Checksum 16..18, urgent pointer 18..20: zero. MSS (kind 2, length 4): 1460.
    t[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    if let Some((src, dst)) = addrs {
        let sum = checksum_v4(src, dst, &t);
        t[16..18].copy_from_slice(&sum.to_be_bytes());
    }
    t
}

/// Returns: the TCP checksum of `seg` (checksum field zero) between `src` and `dst`:
/// the ones' complement of the ones' complement sum of the pseudo-header and `seg`.
fn checksum_v4(src: Ipv4Addr, dst: Ipv4Addr, seg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let hi = u32::from(c[0]) << 8;
            sum += hi | c.get(1).map_or(0, |&lo| u32::from(lo));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&[0, libc::IPPROTO_TCP as u8]);
    add(&(seg.len() as u16).to_be_bytes());
    add(seg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Classic BPF: the IPv4 socket reads the datagram from its IP header. It keeps an
/// unfragmented segment to a port of [`PORTS`] with SYN or RST set, the first 128 bytes
/// of it (a header of up to 60 bytes and the TCP header's first 20).
fn filter_v4() -> Vec<libc::sock_filter> {
    let (lo, hi) = (u32::from(*PORTS.start()), u32::from(*PORTS.end()));
    vec![
        stmt(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 6),
        jump(libc::BPF_JSET, 0x1fff, 7, 0),
        stmt(libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH, 0),
        stmt(libc::BPF_LD | libc::BPF_H | libc::BPF_IND, 2),
        jump(libc::BPF_JGE, lo, 0, 4),
        jump(libc::BPF_JGT, hi, 3, 0),
        stmt(libc::BPF_LD | libc::BPF_B | libc::BPF_IND, 13),
        jump(libc::BPF_JSET, u32::from(SYN | RST), 0, 1),
        stmt(libc::BPF_RET | libc::BPF_K, 128),
        stmt(libc::BPF_RET | libc::BPF_K, 0),
    ]
}

/// Classic BPF: the IPv6 socket reads the segment from its TCP header. The same test.
fn filter_v6() -> Vec<libc::sock_filter> {
    let (lo, hi) = (u32::from(*PORTS.start()), u32::from(*PORTS.end()));
    vec![
        stmt(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 2),
        jump(libc::BPF_JGE, lo, 0, 4),
        jump(libc::BPF_JGT, hi, 3, 0),
        stmt(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 13),
        jump(libc::BPF_JSET, u32::from(SYN | RST), 0, 1),
        stmt(libc::BPF_RET | libc::BPF_K, 128),
        stmt(libc::BPF_RET | libc::BPF_K, 0),
    ]
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(op: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | op | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// Returns: a non-blocking raw TCP socket of `family`.
fn raw_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the value is an int, as these options take.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn attach_filter(fd: &OwnedFd, code: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_ptr().cast_mut(),
    };
    // SAFETY: the program outlives the call, which copies it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const prog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `sendmsg` of `seg` to `dst` with an IP_PKTINFO control message naming the source.
fn send_with_pktinfo(
    fd: RawFd,
    seg: &[u8],
    dst: &libc::sockaddr_in,
    info: &libc::in_pktinfo,
) -> io::Result<usize> {
    // Room for one cmsghdr and an in_pktinfo, aligned as CMSG_SPACE asks.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) } as usize;
    debug_assert!(space <= size_of::<[u64; 8]>());
    let mut iov = libc::iovec {
        iov_base: seg.as_ptr().cast_mut().cast(),
        iov_len: seg.len(),
    };
    // SAFETY: an all-zero msghdr is valid; every pointer set below outlives the call,
    // and the control buffer is large enough and aligned for the one message written.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = std::ptr::from_ref(dst).cast_mut().cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        (*c).cmsg_level = libc::IPPROTO_IP;
        (*c).cmsg_type = libc::IP_PKTINFO;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), *info);
        let n = libc::sendmsg(fd, &raw const msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Reads one datagram. Returns: its length, and for an IPv6 socket its source address
/// (an IPv4 socket's reads carry their IP header).
fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<Ipv6Addr>)> {
    // SAFETY: an all-zero sockaddr_storage is valid; recvfrom writes at most the
    // lengths given into the buffer and the address.
    unsafe {
        let mut from: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let n = libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&raw mut from).cast(),
            &raw mut len,
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = (n as usize).min(buf.len());
        if i32::from(from.ss_family) == libc::AF_INET6 {
            let a = &*(&raw const from).cast::<libc::sockaddr_in6>();
            return Ok((n, Some(Ipv6Addr::from(a.sin6_addr.s6_addr))));
        }
        Ok((n, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syn_carries_its_ports_sequence_and_a_checksum_that_verifies() {
        let (src, dst) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 20));
        let s = syn_segment(61000, 8080, 0xdead_beef, Some((src, dst)));
        assert_eq!(&s[0..2], &61000u16.to_be_bytes());
        assert_eq!(&s[2..4], &8080u16.to_be_bytes());
        assert_eq!(&s[4..8], &0xdead_beefu32.to_be_bytes());
        assert_eq!(s[12] >> 4, 6, "header of 24 bytes");
        assert_eq!(s[13], SYN);
        // Summed with its checksum in place, a segment sums to 0xffff: the checksum
        // computed again over it is zero.
        assert_eq!(checksum_v4(src, dst, &s), 0);
        // A known value: the same sum computed by hand, in 16-bit words.
        let words: u32 = [0x0a00, 0x0001, 0x0a00, 0x0014, 0x0006, 24]
            .iter()
            .sum::<u32>()
            + [
                61000, 8080, 0xdead, 0xbeef, 0, 0, 0x6002, 64240, 0, 0, 0x0204, 0x05b4,
            ]
            .iter()
            .sum::<u32>();
        let folded = (words & 0xffff) + (words >> 16);
        let folded = (folded & 0xffff) + (folded >> 16);
        assert_eq!(u16::from_be_bytes([s[16], s[17]]), !(folded as u16));
        assert_eq!(
            syn_segment(61000, 8080, 1, None)[16..18],
            [0, 0],
            "IPv6: left to the kernel"
        );
    }

    #[test]
    fn the_queue_gives_nothing_early_and_everything_within_a_batch() {
        let t0 = Instant::now();
        let mut q = Queue::new(t0);
        let ms = Duration::from_millis;
        q.push(t0 + ms(12), 1, 10);
        q.push(t0 + ms(3), 2, 20);
        q.push(t0 + ms(5), 3, 30);
        q.push(t0 + ms(40_000_000), 4, 40);
        // The first bucket ends at 5 ms: the entries at 3 and 5 ms are in it.
        assert_eq!(q.first(), Some(t0 + ms(5)));
        assert!(q.take_due(t0 + ms(4)).is_empty(), "nothing before its time");
        let mut due = q.take_due(t0 + ms(5));
        due.sort_unstable();
        assert_eq!(due, vec![(2, 20), (3, 30)]);
        // 12 ms is in the bucket ending at 15 ms: taken at most one batch late.
        assert!(q.take_due(t0 + ms(14)).is_empty());
        assert_eq!(q.first(), Some(t0 + ms(15)));
        assert_eq!(q.take_due(t0 + ms(15)), vec![(1, 10)]);
        // Far ahead (11 hours): bucket arithmetic without overflow.
        assert_eq!(q.first(), Some(t0 + ms(40_000_000)));
        assert_eq!(q.take_due(t0 + ms(40_000_001)), vec![(4, 40)]);
        assert_eq!(q.first(), None);
    }

    fn answer(flags: u8, ack: u32) -> Answer {
        Answer {
            real: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 20)),
            real_port: 80,
            port: 61000,
            ack,
            flags,
        }
    }

    #[test]
    fn only_an_answer_acknowledging_the_syn_counts() {
        let isn = u32::MAX;
        assert_eq!(
            verdict(&answer(SYN | ACK, 0), isn),
            Some(true),
            "isn + 1 wraps"
        );
        assert_eq!(verdict(&answer(RST | ACK, 0), isn), Some(false));
        assert_eq!(
            verdict(&answer(SYN | ACK, 1), isn),
            None,
            "another sequence"
        );
        assert_eq!(verdict(&answer(RST | ACK, 5), isn), None);
        assert_eq!(verdict(&answer(RST, 0), isn), None, "a reset without ACK");
        assert_eq!(verdict(&answer(SYN, 0), isn), None, "a SYN alone");
        assert_eq!(verdict(&answer(ACK, 0), isn), None, "a bare ACK");
        assert_eq!(verdict(&answer(SYN | ACK | FIN, 0), isn), None);
    }

    #[test]
    fn answers_are_read_from_ipv4_datagrams_and_ipv6_segments() {
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&8080u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&61001u16.to_be_bytes());
        tcp[8..12].copy_from_slice(&7u32.to_be_bytes());
        tcp[13] = SYN | ACK;
        // An IPv4 header with 4 bytes of options (IHL 6).
        let mut d = vec![
            0x46, 0, 0, 44, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 20, 10, 0, 0, 1,
        ];
        d.extend_from_slice(&[1, 1, 1, 0]);
        d.extend_from_slice(&tcp);
        let a = parse_v4(&d).expect("a TCP segment");
        assert_eq!(
            (a.real, a.real_port, a.port, a.ack, a.flags),
            (
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 20)),
                8080,
                61001,
                7,
                SYN | ACK
            )
        );
        // A later fragment, another protocol, a short datagram: nothing.
        let mut frag = d.clone();
        frag[7] = 1;
        assert_eq!(parse_v4(&frag), None);
        let mut udp = d.clone();
        udp[9] = 17;
        assert_eq!(parse_v4(&udp), None);
        assert_eq!(parse_v4(&d[..30]), None);
        let real = "fd00::20".parse().expect("address");
        let a = parse_v6(real, &tcp).expect("a segment");
        assert_eq!((a.real, a.port), (IpAddr::V6(real), 61001));
        assert_eq!(parse_v6(real, &tcp[..19]), None);
    }
}
