//! Half-open TCP probes (`type: tcp_half_open`, decision 0020): a SYN is sent from a raw
//! socket and the real's answer read from it. A SYN-ACK that acknowledges the SYN is a
//! port open, a reset that acknowledges it a port closed, nothing within the timeout a
//! failure. No socket of this host owns the connection, so the kernel answers the
//! SYN-ACK with a bare reset and the real drops its half-open connection: the real's
//! application never sees the probe, and neither side keeps any state.
//!
//! One task probes every such real ([`HalfOpen`]): it keeps them in a queue by what each
//! waits for next (its next SYN, or its answer's deadline; [`queue`]), wakes at most
//! every [`BATCH`] to send the SYNs due and time out the answers late, and reads the
//! answers as they come, and always before it times any out. Per probe this costs a
//! `sendmsg`, the read of the answer and a few map operations, against a task, its
//! timers, a socket, a connect, a handshake and a close for `tcp` (decision 0020 has the
//! figures).
//!
//! The raw sockets ([`sys`]) need CAP_NET_RAW to be opened; the daemon opens them at
//! start, before it drops privileges (decision 0007), and keeps them. Each carries a
//! classic BPF filter, so that of the TCP segments this host receives only SYN-ACKs and
//! resets to the probes' ports are copied to it. Probes use source ports [`PORTS`],
//! outside Linux's default ephemeral range (32768-60999), so that no connection of this
//! host shares a probe's four-tuple. A probe's initial sequence number is random (keyed
//! by the process): an answer that does not acknowledge it is ignored, so that another
//! host cannot fake one without seeing the SYN.

mod queue;
mod segment;
mod sys;

use std::{
    collections::{hash_map::Entry, HashMap},
    hash::{BuildHasher as _, Hasher as _},
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::{mpsc, Notify},
    task::JoinHandle,
    time::Instant,
};

pub use self::sys::Sockets;
use self::{
    queue::Queue,
    segment::{syn_segment, verdict, Answer},
    sys::{drain, RawWire},
};
use super::{io_failure, Failure};
use crate::{health::Report, model::RealKey};

/// The probes' source ports: above Linux's default `ip_local_port_range` (32768-60999).
pub const PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;
/// How often at most the task wakes to send and time out: what is due within it is
/// done together, at most this late.
pub const BATCH: Duration = Duration::from_millis(5);
/// Longest the task puts off sending and timing out while answers keep it reading.
const DUE_AT_MOST: Duration = Duration::from_millis(20);
/// The first probes of reals added together are spread over this, rather than sent in
/// one burst whose answers would overrun the receive buffer.
pub const FIRST_SPREAD: Duration = Duration::from_millis(100);
/// How long the source address found for an IPv4 real is used before it is asked again
/// (and an address no real asked for in this long is forgotten).
const SOURCE_TTL: Duration = Duration::from_secs(30);

/// Where SYNs go: the raw sockets, or a test's fake.
trait Wire {
    /// Sends TCP segment `seg` to `real`: IPv4 from `source` (its checksum covers it),
    /// IPv6 from the source the kernel chooses (`None`; the kernel sums it).
    fn send(&mut self, real: IpAddr, seg: &[u8], source: Option<Ipv4Addr>) -> io::Result<()>;
    /// Returns: the source address this host's routes give segments to `real`.
    fn route_source(&mut self, real: Ipv4Addr) -> io::Result<Ipv4Addr>;
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
    v6: Option<AsyncFd<OwnedFd>>,
    state: Mutex<(State, RawWire)>,
    /// Wakes the task when a real is added: its first SYN may be due before the task's
    /// next wake.
    added: Notify,
}

/// The probed reals and their probes in flight.
struct State {
    reals: Vec<Option<Real>>,
    free: Vec<usize>,
    queue: Queue,
    /// The probes in flight.
    in_flight: HashMap<ProbeTuple, usize>,
    next_generation: u64,
    next_port: u32,
    probes: u64,
    isn_key: std::collections::hash_map::RandomState,
    /// IPv4 source addresses by real, as the routes give them, and when they were asked.
    sources: HashMap<Ipv4Addr, (Ipv4Addr, Instant)>,
    sources_pruned: Instant,
}

struct Real {
    key: RealKey,
    task: u64,
    target: SocketAddr,
    interval: Duration,
    timeout: Duration,
    /// The generation of the queue entry that stands for this real: any other entry of
    /// it is stale.
    generation: u64,
    /// When its next SYN is due.
    next: Instant,
    flight: Option<Flight>,
    /// Since when its SYN is put off for a full send buffer, if it is.
    put_off: Option<Instant>,
}

struct Flight {
    tuple: ProbeTuple,
    isn: u32,
    sent: Instant,
}

/// A probe's four-tuple: the real's address and port, and the probe's source port.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct ProbeTuple {
    real: IpAddr,
    real_port: u16,
    port: u16,
}

/// Why a SYN was not sent.
enum NotSent {
    /// The socket's send buffer is full (EAGAIN, ENOBUFS, the error given): sent again a
    /// batch later, for at most the probe's timeout.
    Later(io::Error),
    /// The probe fails.
    Failed(Failure),
}

impl HalfOpen {
    /// Starts the task probing through `sockets` (on the current tokio runtime), which
    /// sends each probe's outcome on `reports`.
    pub fn start(sockets: Sockets, reports: mpsc::Sender<Report>) -> io::Result<Self> {
        let (wire, v4, v6) = RawWire::new(sockets);
        // SAFETY: each descriptor is owned by its AsyncFd, open and the same for the
        // AsyncFd's whole life (the wire's copies of them live as long, in `Shared`).
        let (v4, v6) = unsafe {
            (
                AsyncFd::register_with_interest(v4, Interest::READABLE)?,
                v6.map(|v6| AsyncFd::register_with_interest(v6, Interest::READABLE))
                    .transpose()?,
            )
        };
        let shared = Arc::new(Shared {
            v4,
            v6,
            state: Mutex::new((State::new(Instant::now()), wire)),
            added: Notify::new(),
        });
        let task = tokio::spawn(run(Arc::clone(&shared), reports));
        Ok(Self { shared, task })
    }

    /// Starts probing real `key` at `target`, every `interval` within `timeout`, at
    /// `phase` from now and every interval after; and once `first` from now, which
    /// should be sooner (a real starts unhealthy). Its outcomes are reported under
    /// `task`. Returns: its slot, to [`HalfOpen::remove`] it with.
    pub fn add(
        &self,
        key: RealKey,
        task: u64,
        target: SocketAddr,
        (interval, timeout): (Duration, Duration),
        (first, phase): (Duration, Duration),
    ) -> Slot {
        let now = Instant::now();
        let slot = self.shared.state().0.add(
            key,
            task,
            target,
            (interval, timeout),
            (now + first, now + phase),
        );
        self.shared.added.notify_one();
        slot
    }

    /// Stops probing the real of `slot` (a probe in flight is forgotten, its answer
    /// ignored).
    pub fn remove(&self, slot: Slot) {
        self.shared.state().0.remove(slot);
    }
}

impl Drop for HalfOpen {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, (State, RawWire)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The task: reads answers as they come, and at most every [`BATCH`] sends the SYNs due
/// and times out the answers late, reporting every outcome. Before it times any out it
/// reads what both sockets hold, so that an answer that came while the task waited (the
/// daemon's thread busy applying a file, or the report channel full) is not taken for
/// a timeout.
async fn run(shared: Arc<Shared>, reports: mpsc::Sender<Report>) {
    let mut buf = [0u8; 256];
    let mut out: Vec<Report> = Vec::new();
    let mut answers: Vec<Answer> = Vec::new();
    let mut last = Instant::now();
    let mut more = false;
    loop {
        if more {
            // The last read stopped at its limit: read on, after letting the rest of
            // the daemon run, rather than wait for an arrival to wake the task.
            tokio::task::yield_now().await;
        } else {
            let next = shared.state().0.queue.first();
            let wake = next.map(|t| t.max(last + BATCH));
            let v6 = async {
                match &shared.v6 {
                    Some(fd) => fd.readable().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                r = shared.v4.readable() => match r {
                    Ok(mut ready) => ready.clear_ready(),
                    Err(e) => return stopped(&e),
                },
                r = v6 => match r {
                    Ok(mut ready) => ready.clear_ready(),
                    Err(e) => return stopped(&e),
                },
                () = shared.added.notified() => {}
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            }
        }
        // Read whatever is queued, whichever branch woke the task. The readiness just
        // cleared is set again by the next arrival.
        more = drain(shared.v4.as_raw_fd(), &mut buf, &mut answers);
        if let Some(v6) = &shared.v6 {
            more |= drain(v6.as_raw_fd(), &mut buf, &mut answers);
        }
        let now = Instant::now();
        {
            let mut guard = shared.state();
            let (st, wire) = &mut *guard;
            for a in answers.drain(..) {
                st.answer(&a, now, &mut out);
            }
            // Timeouts wait for the sockets to be read to the end, but not for long: a
            // flood of SYNs or resets to the probes' ports (anyone may send them) would
            // otherwise keep every probe from being sent or timed out.
            if now >= last + BATCH && (!more || now >= last + DUE_AT_MOST) {
                last = now;
                st.due(wire, now, &mut out);
            }
        }
        for r in out.drain(..) {
            if reports.send(r).await.is_err() {
                return;
            }
        }
    }
}

/// Logs why the half-open task stopped: its reals are no longer probed, and fall.
fn stopped(e: &io::Error) {
    tracing::error!("half-open probes stopped: polling their raw sockets failed: {e}; their reals are no longer probed and will fail");
}

impl State {
    fn new(now: Instant) -> Self {
        Self {
            reals: Vec::new(),
            free: Vec::new(),
            queue: Queue::new(now),
            in_flight: HashMap::new(),
            next_generation: 0,
            next_port: 0,
            probes: 0,
            isn_key: std::collections::hash_map::RandomState::new(),
            sources: HashMap::new(),
            sources_pruned: now,
        }
    }

    /// Returns: a generation no queue entry has had.
    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Returns: a random initial sequence number.
    fn isn(&mut self) -> u32 {
        self.probes += 1;
        let mut h = self.isn_key.build_hasher();
        h.write_u64(self.probes);
        h.finish() as u32
    }

    /// Adds a real, its SYNs due at `phase` and every interval after, and once at
    /// `first`. Returns: its slot.
    fn add(
        &mut self,
        key: RealKey,
        task: u64,
        target: SocketAddr,
        (interval, timeout): (Duration, Duration),
        (first, phase): (Instant, Instant),
    ) -> Slot {
        let generation = self.generation();
        let real = Real {
            key,
            task,
            target,
            interval,
            timeout,
            generation,
            next: phase,
            flight: None,
            put_off: None,
        };
        let index = match self.free.pop() {
            Some(i) => {
                self.reals[i] = Some(real);
                i
            }
            None => {
                self.reals.push(Some(real));
                self.reals.len() - 1
            }
        };
        self.queue.push(first, index, generation);
        Slot { index, task }
    }

    /// Removes the real of `slot`, if it is still there.
    fn remove(&mut self, slot: Slot) {
        let Some(Some(r)) = self.reals.get(slot.index) else {
            return;
        };
        if r.task != slot.task {
            return;
        }
        if let Some(f) = &r.flight {
            let t = f.tuple;
            self.in_flight.remove(&t);
        }
        self.reals[slot.index] = None;
        self.free.push(slot.index);
    }

    /// Ends the probe `a` answers, if it acknowledges that probe's SYN.
    fn answer(&mut self, a: &Answer, now: Instant, out: &mut Vec<Report>) {
        let tuple = ProbeTuple {
            real: a.real,
            real_port: a.real_port,
            port: a.port,
        };
        let Some(&index) = self.in_flight.get(&tuple) else {
            return;
        };
        let Some(Some(Real {
            flight: Some(f), ..
        })) = self.reals.get(index)
        else {
            return;
        };
        let Some(open) = verdict(a, f.isn) else {
            return;
        };
        let result = if open {
            Ok(now.saturating_duration_since(f.sent))
        } else {
            Err(Failure::Refused)
        };
        self.in_flight.remove(&tuple);
        self.end(index, result, out);
    }

    /// Ends the flight of the real at `index` with `result`, reported, and queues its
    /// next SYN.
    fn end(&mut self, index: usize, result: Result<Duration, Failure>, out: &mut Vec<Report>) {
        let generation = self.generation();
        let Some(Some(r)) = self.reals.get_mut(index) else {
            return;
        };
        r.flight = None;
        r.generation = generation;
        out.push(Report {
            key: r.key.clone(),
            task: r.task,
            result,
        });
        let next = r.next;
        self.queue.push(next, index, generation);
    }

    /// Does what is due by `now`: times out the answers late, sends the SYNs due.
    fn due(&mut self, wire: &mut impl Wire, now: Instant, out: &mut Vec<Report>) {
        if now.saturating_duration_since(self.sources_pruned) >= SOURCE_TTL {
            self.sources
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < SOURCE_TTL);
            self.sources_pruned = now;
        }
        for (index, generation) in self.queue.take_due(now) {
            let Some(Some(r)) = self.reals.get(index) else {
                continue;
            };
            if r.generation != generation {
                continue;
            }
            if let Some(f) = &r.flight {
                let (t, timeout) = (f.tuple, r.timeout);
                self.in_flight.remove(&t);
                self.end(index, Err(Failure::Timeout(timeout)), out);
                continue;
            }
            match self.send(wire, index, now) {
                Ok(()) => {}
                Err(NotSent::Later(e)) => {
                    let generation = self.generation();
                    let Some(Some(r)) = self.reals.get_mut(index) else {
                        continue;
                    };
                    let since = *r.put_off.get_or_insert(now);
                    if now.saturating_duration_since(since) < r.timeout {
                        r.generation = generation;
                        self.queue.push(now + BATCH, index, generation);
                        continue;
                    }
                    // Put off for as long as it would have waited for its answer: it
                    // fails, and the next one keeps the real's schedule.
                    r.put_off = None;
                    r.next = (r.next + r.interval).max(now + r.interval / 2);
                    self.end(index, Err(io_failure(&e)), out);
                }
                Err(NotSent::Failed(f)) => self.end(index, Err(f), out),
            }
        }
    }

    /// Sends the SYN of the real at `index` and queues its deadline. Its next SYN is then
    /// due an interval after this one was (or half an interval from now, when this one
    /// was more than half an interval late), whether this one was sent or failed; one
    /// put off for a full send buffer keeps its time, and so does one sent before it
    /// (a real's first, at once).
    fn send(&mut self, wire: &mut impl Wire, index: usize, now: Instant) -> Result<(), NotSent> {
        let Some(Some(r)) = self.reals.get(index) else {
            return Ok(());
        };
        let (target, timeout) = (r.target, r.timeout);
        let next = if r.next > now {
            r.next
        } else {
            (r.next + r.interval).max(now + r.interval / 2)
        };
        let isn = self.isn();
        let sent = self
            .claim(target, index)
            .map_err(NotSent::Failed)
            .and_then(|tuple| {
                let sent = match target {
                    SocketAddr::V4(t) => self.send_v4(wire, *t.ip(), &tuple, isn, now),
                    SocketAddr::V6(t) => {
                        let seg = syn_segment(tuple.port, t.port(), isn, None);
                        wire.send(target.ip(), &seg, None)
                    }
                };
                sent.map(|()| tuple).map_err(|e| {
                    self.in_flight.remove(&tuple);
                    if is_full(&e) {
                        NotSent::Later(e)
                    } else {
                        NotSent::Failed(io_failure(&e))
                    }
                })
            });
        if let Err(NotSent::Later(e)) = sent {
            return Err(NotSent::Later(e));
        }
        let generation = self.generation();
        let Some(Some(r)) = self.reals.get_mut(index) else {
            return Ok(());
        };
        r.next = next;
        r.put_off = None;
        let tuple = sent?;
        r.flight = Some(Flight {
            tuple,
            isn,
            sent: Instant::now(),
        });
        r.generation = generation;
        self.queue.push(now + timeout, index, generation);
        Ok(())
    }

    /// Records a probe of `target` as in flight, under a source port no probe of the
    /// same target uses. Returns: its four-tuple.
    fn claim(&mut self, target: SocketAddr, index: usize) -> Result<ProbeTuple, Failure> {
        let span = u32::from(*PORTS.end() - *PORTS.start()) + 1;
        for _ in 0..span {
            let n = self.next_port % span;
            self.next_port = self.next_port.wrapping_add(1);
            let tuple = ProbeTuple {
                real: target.ip(),
                real_port: target.port(),
                port: *PORTS.start() + n as u16,
            };
            if let Entry::Vacant(e) = self.in_flight.entry(tuple) {
                e.insert(index);
                return Ok(tuple);
            }
        }
        Err(Failure::Io(format!(
            "every probe port ({}-{}) is in use for {target}",
            PORTS.start(),
            PORTS.end()
        )))
    }

    /// Sends the SYN of `tuple` to IPv4 `real`, from the source the routes give it. A
    /// send that fails is tried again once with the source asked anew: the address may
    /// have left this host.
    fn send_v4(
        &mut self,
        wire: &mut impl Wire,
        real: Ipv4Addr,
        tuple: &ProbeTuple,
        isn: u32,
        now: Instant,
    ) -> io::Result<()> {
        let source = match self.sources.get(&real) {
            Some(&(src, at)) if now.saturating_duration_since(at) < SOURCE_TTL => src,
            _ => self.ask_source(wire, real, now)?,
        };
        let seg = syn_segment(tuple.port, tuple.real_port, isn, Some((source, real)));
        let sent = wire.send(IpAddr::V4(real), &seg, Some(source));
        let Err(e) = sent else {
            return Ok(());
        };
        if is_full(&e) {
            return Err(e);
        }
        let again = self.ask_source(wire, real, now)?;
        if again == source {
            return Err(e);
        }
        let seg = syn_segment(tuple.port, tuple.real_port, isn, Some((again, real)));
        wire.send(IpAddr::V4(real), &seg, Some(again))
    }

    /// Returns: the source the routes give `real` now, remembered.
    fn ask_source(
        &mut self,
        wire: &mut impl Wire,
        real: Ipv4Addr,
        now: Instant,
    ) -> io::Result<Ipv4Addr> {
        let src = wire.route_source(real)?;
        self.sources.insert(real, (src, now));
        Ok(src)
    }
}

/// Returns: whether a send failed for a full send buffer (it may be tried again).
fn is_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
}

#[cfg(test)]
mod tests {
    use super::{segment::*, *};

    /// Records what is sent; fails sends as told.
    #[derive(Default)]
    struct FakeWire {
        sent: Vec<(IpAddr, Vec<u8>, Option<Ipv4Addr>)>,
        /// Errors for the next sends, in order.
        fail: Vec<io::Error>,
        source: Option<Ipv4Addr>,
        asked: usize,
    }

    impl Wire for FakeWire {
        fn send(&mut self, real: IpAddr, seg: &[u8], source: Option<Ipv4Addr>) -> io::Result<()> {
            if !self.fail.is_empty() {
                return Err(self.fail.remove(0));
            }
            self.sent.push((real, seg.to_vec(), source));
            Ok(())
        }

        fn route_source(&mut self, _: Ipv4Addr) -> io::Result<Ipv4Addr> {
            self.asked += 1;
            Ok(self.source.unwrap_or(Ipv4Addr::new(10, 0, 0, 1)))
        }
    }

    const SECOND: Duration = Duration::from_secs(1);
    const TIMEOUT: Duration = Duration::from_millis(500);

    fn target(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    /// The answer of the real to the SYN `sent`: its flags, acknowledging the SYN (or
    /// `ack_off` past it).
    fn answer_to(sent: &(IpAddr, Vec<u8>, Option<Ipv4Addr>), flags: u8, ack_off: u32) -> Answer {
        let seg = &sent.1;
        Answer {
            real: sent.0,
            real_port: u16::from_be_bytes([seg[2], seg[3]]),
            port: u16::from_be_bytes([seg[0], seg[1]]),
            ack: u32::from_be_bytes([seg[4], seg[5], seg[6], seg[7]])
                .wrapping_add(1)
                .wrapping_add(ack_off),
            flags,
        }
    }

    fn results(out: &[Report]) -> Vec<(u16, Result<(), Failure>)> {
        out.iter()
            .map(|r| (r.key.port, r.result.clone().map(|_| ())))
            .collect()
    }

    fn key(port: u16) -> RealKey {
        RealKey::real("web", "10.0.1.11".parse().expect("address"), port)
    }

    /// Returns: a state probing real 10.0.1.11:80 every second from `t0`, a wire and
    /// no reports.
    fn one_real(t0: Instant) -> (State, FakeWire, Vec<Report>) {
        let mut st = State::new(t0);
        st.add(
            key(80),
            1,
            target("10.0.1.11:80"),
            (SECOND, TIMEOUT),
            (t0, t0),
        );
        (st, FakeWire::default(), Vec::new())
    }

    #[test]
    fn a_real_is_probed_every_interval_and_each_answer_or_silence_reported_once() {
        let t0 = Instant::now();
        let (mut st, mut w, mut out) = one_real(t0);
        st.due(&mut w, t0 + BATCH, &mut out);
        assert_eq!(w.sent.len(), 1, "the first SYN, at once");
        let (real, seg, source) = &w.sent[0];
        assert_eq!(
            (*real, *source),
            (
                "10.0.1.11".parse().expect("a"),
                Some(Ipv4Addr::new(10, 0, 0, 1))
            )
        );
        assert_eq!(seg[13], SYN);
        assert!(PORTS.contains(&u16::from_be_bytes([seg[0], seg[1]])));

        // A SYN-ACK for another sequence number, or from another port, is nothing.
        st.answer(&answer_to(&w.sent[0], SYN | ACK, 7), t0 + BATCH, &mut out);
        let mut other = answer_to(&w.sent[0], SYN | ACK, 0);
        other.port = other.port.wrapping_add(1);
        st.answer(&other, t0 + BATCH, &mut out);
        assert!(out.is_empty());
        // The right one ends the probe; the same again is nothing.
        st.answer(
            &answer_to(&w.sent[0], SYN | ACK, 0),
            t0 + 2 * BATCH,
            &mut out,
        );
        st.answer(
            &answer_to(&w.sent[0], SYN | ACK, 0),
            t0 + 2 * BATCH,
            &mut out,
        );
        assert_eq!(results(&out), vec![(80, Ok(()))]);
        assert!(st.in_flight.is_empty());
        // Its deadline passes: nothing more is reported, nothing sent before the interval.
        out.clear();
        st.due(&mut w, t0 + SECOND - 2 * BATCH, &mut out);
        assert!(out.is_empty() && w.sent.len() == 1);
        // The next SYN an interval later; a reset acknowledging it is a refusal.
        st.due(&mut w, t0 + SECOND + 2 * BATCH, &mut out);
        assert_eq!(w.sent.len(), 2);
        st.answer(
            &answer_to(&w.sent[1], RST | ACK, 0),
            t0 + SECOND + 3 * BATCH,
            &mut out,
        );
        assert_eq!(results(&out), vec![(80, Err(Failure::Refused))]);
        // The third goes unanswered: a timeout at its deadline, not before.
        out.clear();
        st.due(&mut w, t0 + 2 * SECOND + 2 * BATCH, &mut out);
        assert_eq!(w.sent.len(), 3);
        st.due(&mut w, t0 + 2 * SECOND + TIMEOUT - BATCH, &mut out);
        assert!(out.is_empty(), "not before its timeout");
        st.due(&mut w, t0 + 2 * SECOND + TIMEOUT + 3 * BATCH, &mut out);
        assert_eq!(results(&out), vec![(80, Err(Failure::Timeout(TIMEOUT)))]);
        // A late answer to it is nothing.
        st.answer(
            &answer_to(&w.sent[2], SYN | ACK, 0),
            t0 + 3 * SECOND,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(w.asked, 1, "the source, asked once within its time to live");
    }

    #[test]
    fn one_target_in_two_virtual_servers_is_probed_from_two_ports() {
        let t0 = Instant::now();
        let (mut st, mut w, mut out) = (State::new(t0), FakeWire::default(), Vec::new());
        let mut k2 = key(80);
        k2.vs = "web2".into();
        st.add(
            key(80),
            1,
            target("10.0.1.11:80"),
            (SECOND, TIMEOUT),
            (t0, t0),
        );
        st.add(k2, 2, target("10.0.1.11:80"), (SECOND, TIMEOUT), (t0, t0));
        st.due(&mut w, t0 + BATCH, &mut out);
        let port = |i: usize| u16::from_be_bytes([w.sent[i].1[0], w.sent[i].1[1]]);
        assert_ne!(port(0), port(1));
        st.answer(&answer_to(&w.sent[1], SYN | ACK, 0), t0 + BATCH, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].key.vs.as_str(), out[0].task), ("web2", 2));
    }

    #[test]
    fn a_real_removed_in_flight_reports_nothing_and_its_slot_serves_another() {
        let t0 = Instant::now();
        let (mut st, mut w, mut out) = (State::new(t0), FakeWire::default(), Vec::new());
        let slot = st.add(
            key(80),
            1,
            target("10.0.1.11:80"),
            (SECOND, TIMEOUT),
            (t0, t0),
        );
        st.due(&mut w, t0 + BATCH, &mut out);
        st.remove(slot);
        assert!(st.in_flight.is_empty());
        st.answer(&answer_to(&w.sent[0], SYN | ACK, 0), t0 + BATCH, &mut out);
        // Its slot taken by another real: the removed one's deadline is stale.
        let other = st.add(
            key(81),
            2,
            target("10.0.1.11:81"),
            (SECOND, TIMEOUT),
            (t0 + SECOND, t0 + SECOND),
        );
        assert_eq!(other.index, slot.index);
        st.remove(slot);
        st.due(&mut w, t0 + TIMEOUT + 2 * BATCH, &mut out);
        assert!(out.is_empty(), "{:?}", results(&out));
        assert_eq!(w.sent.len(), 1, "the stale entry sends nothing either");
        st.due(&mut w, t0 + SECOND + BATCH, &mut out);
        assert_eq!(
            w.sent.len(),
            2,
            "the other real, not removed by the stale slot"
        );
        assert_eq!(u16::from_be_bytes([w.sent[1].1[2], w.sent[1].1[3]]), 81);
    }

    #[test]
    fn a_full_send_buffer_delays_the_syn_and_another_error_fails_the_probe() {
        let t0 = Instant::now();
        let (mut st, mut w, mut out) = one_real(t0);
        w.fail = vec![
            io::Error::from_raw_os_error(libc::ENOBUFS),
            io::Error::from(io::ErrorKind::WouldBlock),
        ];
        st.due(&mut w, t0 + BATCH, &mut out);
        st.due(&mut w, t0 + 3 * BATCH, &mut out);
        assert!(out.is_empty() && w.sent.is_empty() && st.in_flight.is_empty());
        st.due(&mut w, t0 + 5 * BATCH, &mut out);
        assert_eq!(w.sent.len(), 1, "sent a batch later, once there is room");
        st.answer(
            &answer_to(&w.sent[0], SYN | ACK, 0),
            t0 + 5 * BATCH,
            &mut out,
        );
        assert_eq!(results(&out), vec![(80, Ok(()))]);

        out.clear();
        w.fail = vec![io::Error::from_raw_os_error(libc::ENETUNREACH)];
        w.source = Some(Ipv4Addr::new(10, 0, 0, 1));
        st.due(&mut w, t0 + SECOND + 2 * BATCH, &mut out);
        assert!(
            matches!(&results(&out)[..], [(80, Err(Failure::Unreachable(_)))]),
            "{:?}",
            results(&out)
        );
        assert!(st.in_flight.is_empty());
        // The failed one counts as sent: the next SYN is an interval later, not at once.
        st.due(&mut w, t0 + SECOND + 4 * BATCH, &mut out);
        assert_eq!((w.sent.len(), out.len()), (1, 1));
        st.due(&mut w, t0 + 2 * SECOND + 2 * BATCH, &mut out);
        assert_eq!(w.sent.len(), 2);
    }

    #[test]
    fn a_source_that_left_the_host_is_asked_again_and_the_syn_sent_from_the_new_one() {
        let t0 = Instant::now();
        let (mut st, mut w, mut out) = one_real(t0);
        st.due(&mut w, t0 + BATCH, &mut out);
        st.answer(&answer_to(&w.sent[0], SYN | ACK, 0), t0 + BATCH, &mut out);
        // The old source is gone (EINVAL); the routes now give another.
        w.fail = vec![io::Error::from_raw_os_error(libc::EINVAL)];
        w.source = Some(Ipv4Addr::new(10, 0, 0, 2));
        st.due(&mut w, t0 + SECOND + 2 * BATCH, &mut out);
        assert_eq!(w.sent.len(), 2);
        let (_, seg, source) = &w.sent[1];
        let new = Ipv4Addr::new(10, 0, 0, 2);
        assert_eq!(*source, Some(new));
        assert_eq!(
            checksum_v4(new, Ipv4Addr::new(10, 0, 1, 11), seg),
            0,
            "summed over the new source"
        );
        assert_eq!(w.asked, 2);
    }

    #[test]
    fn the_first_syn_goes_at_once_and_the_next_at_the_phase() {
        let t0 = Instant::now();
        let (mut st, mut w, mut out) = (State::new(t0), FakeWire::default(), Vec::new());
        let phase = Duration::from_millis(300);
        st.add(
            key(80),
            1,
            target("10.0.1.11:80"),
            (SECOND, TIMEOUT),
            (t0, t0 + phase),
        );
        st.due(&mut w, t0 + BATCH, &mut out);
        st.answer(&answer_to(&w.sent[0], SYN | ACK, 0), t0 + BATCH, &mut out);
        st.due(&mut w, t0 + phase - BATCH, &mut out);
        assert_eq!(w.sent.len(), 1, "nothing before the phase");
        st.due(&mut w, t0 + phase + BATCH, &mut out);
        assert_eq!(
            w.sent.len(),
            2,
            "at the phase, not an interval after the first"
        );
        st.answer(
            &answer_to(&w.sent[1], SYN | ACK, 0),
            t0 + phase + BATCH,
            &mut out,
        );
        st.due(&mut w, t0 + phase + SECOND - BATCH, &mut out);
        assert_eq!(w.sent.len(), 2);
        st.due(&mut w, t0 + phase + SECOND + BATCH, &mut out);
        assert_eq!(w.sent.len(), 3, "then every interval");
    }

    #[test]
    fn an_answer_read_before_the_deadline_is_handled_counts_even_when_late() {
        // The task reads the sockets before it times probes out: an answer that waited
        // there past the deadline (the task held up) is still the probe's.
        let t0 = Instant::now();
        let (mut st, mut w, mut out) = one_real(t0);
        st.due(&mut w, t0 + BATCH, &mut out);
        let late = t0 + TIMEOUT + 10 * BATCH;
        st.answer(&answer_to(&w.sent[0], SYN | ACK, 0), late, &mut out);
        st.due(&mut w, late, &mut out);
        assert_eq!(results(&out), vec![(80, Ok(()))]);
    }

    #[test]
    fn a_send_buffer_full_for_longer_than_the_timeout_fails_the_probe() {
        let t0 = Instant::now();
        let (mut st, mut w, mut out) = one_real(t0);
        w.fail = (0..200)
            .map(|_| io::Error::from_raw_os_error(libc::ENOBUFS))
            .collect();
        let mut at = t0 + BATCH;
        while at < t0 + TIMEOUT {
            st.due(&mut w, at, &mut out);
            at += BATCH;
        }
        assert!(out.is_empty(), "put off, not failed, within the timeout");
        st.due(&mut w, t0 + TIMEOUT + 2 * BATCH, &mut out);
        assert_eq!(out.len(), 1);
        assert!(
            matches!(&out[0].result, Err(Failure::Io(m)) if m.contains("No buffer space")),
            "{:?}",
            out[0].result
        );
        // The next one keeps to the schedule: an interval after the first was due, or
        // half an interval after this failure if that is later (here 1,010 ms).
        w.fail.clear();
        st.due(&mut w, t0 + SECOND + BATCH, &mut out);
        assert!(w.sent.is_empty());
        st.due(&mut w, t0 + SECOND + 3 * BATCH, &mut out);
        assert_eq!(w.sent.len(), 1);
    }

    #[test]
    fn ipv6_segments_are_sent_without_a_source_and_answered_alike() {
        let t0 = Instant::now();
        let (mut st, mut w, mut out) = (State::new(t0), FakeWire::default(), Vec::new());
        let mut k = key(443);
        k.addr = "fd00::11".parse().expect("address");
        st.add(k, 1, target("[fd00::11]:443"), (SECOND, TIMEOUT), (t0, t0));
        st.due(&mut w, t0 + BATCH, &mut out);
        assert_eq!(w.sent[0].2, None);
        assert_eq!(w.asked, 0);
        st.answer(&answer_to(&w.sent[0], SYN | ACK, 0), t0 + BATCH, &mut out);
        assert_eq!(results(&out), vec![(443, Ok(()))]);
    }
}
