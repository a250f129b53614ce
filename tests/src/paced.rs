//! A steady sender, for the live bench's paced workload (`tcp_syn_100k`) and the paced
//! flood of `e2e_synflood`: one frame every `1 / pps` seconds through an `AF_PACKET`
//! socket on the sender's device, from a thread pinned to a given CPU, at most
//! [`MAX_FRAMES`] frames and [`MAX_FOR`]. It cycles through [`POOL`] frames built
//! before it starts, each with its own random fields (a random source's address and
//! port): the tests are built without optimisation, and building a frame there costs
//! about a slot at 100,000 a second.
//!
//! Why not trafgen: its 0.6.8 paces badly on this kind of VM. With `-b 100000pps` it
//! sends each second's packets in one burst at full speed and then sleeps (0.2 s
//! samples of a veth read 0, 0, 90,631, 9,369, 0, ...), so the program meets a full-rate
//! flood half the time and nothing the other half; with `-t <gap>` every gap is a sleep
//! whose wake-up takes about 17 us here, so it never passes about 58,000 frames a
//! second. This thread spins on the clock between slots instead of sleeping
//! ([`Pacer`]). The spinning costs its CPU whole, so a paced run's packets per
//! CPU-second say nothing of the path: the bench reports its delivered rate per second
//! of wall clock instead.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicI32, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    netns::Netns,
    pace::Pacer,
    packet::V4Packet,
    trafgen::{Frame, Src, L4, RANDOM_NET},
};

/// Most frames one run may send.
pub const MAX_FRAMES: u64 = 1_000_000;
/// Longest one run may last.
pub const MAX_FOR: Duration = Duration::from_secs(8);
/// Distinct frames a run cycles through.
pub const POOL: usize = 65_536;

/// A paced run in progress; stopped on drop.
pub struct Run {
    stop: Arc<AtomicBool>,
    /// The sending thread's id, once it runs (0 before).
    tid: Arc<AtomicI32>,
    thread: Option<JoinHandle<Sent>>,
}

/// What a run sent: frames, and the seconds from its first slot to its end.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub frames: u64,
    pub secs: f64,
}

/// Starts sending `frame` from `src_mac` on `dev` in `ns` at `pps` frames a second,
/// from CPU `cpu`, until stopped or its bounds. Panics if the thread does not start within 5 s; in the thread (seen at
/// `stop`) if the socket cannot be opened.
pub fn start(ns: &Netns, dev: &str, frame: &Frame, src_mac: [u8; 6], cpu: usize, pps: u32) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let tid = Arc::new(AtomicI32::new(0));
    let (s, t, dev, frame) = (stop.clone(), tid.clone(), dev.to_string(), frame.clone());
    let thread = ns.spawn(move || {
        // SAFETY: plain system calls on this thread.
        t.store(unsafe { libc::gettid() }, Ordering::SeqCst);
        crate::cpus::only_on(&[cpu]);
        send(&socket(&dev), &frame, src_mac, pps, &s)
    });
    let mut run = Run {
        stop,
        tid,
        thread: Some(thread),
    };
    crate::wait_for(Duration::from_secs(5), || {
        run.pid().is_some() || !run.running()
    });
    if run.pid().is_none() {
        // The thread's own panic, if it had one, says why.
        run.stop();
        panic!("the paced sender did not start within 5 s");
    }
    run
}

impl Run {
    /// Returns: the sending thread's id, once it runs (its CPU time is the path's).
    pub fn pid(&self) -> Option<i32> {
        Some(self.tid.load(Ordering::SeqCst)).filter(|&t| t != 0)
    }

    /// Returns: whether it is still sending (within its bounds).
    pub fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops it. Returns: what it sent (nothing if it was stopped already). Panics
    /// with the thread's panic, if it had one.
    pub fn stop(&mut self) -> Sent {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            None => Sent {
                frames: 0,
                secs: 0.0,
            },
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            // A panic was the bench's to report; on drop it is already unwinding.
            let _ = t.join();
        }
    }
}

/// Returns: an `AF_PACKET` socket that sends on `dev` (of the calling thread's
/// namespace) and receives nothing (protocol 0).
fn socket(dev: &str) -> OwnedFd {
    let name = std::ffi::CString::new(dev).expect("device name");
    // SAFETY: plain system calls; the descriptor is owned at once.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        assert_ne!(
            ifindex,
            0,
            "no device {dev}: {}",
            std::io::Error::last_os_error()
        );
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        let rc = libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(
            rc,
            0,
            "binding to {dev}: {}",
            std::io::Error::last_os_error()
        );
        fd
    }
}

/// Sends `frame` on `fd` at `pps` until `stop` or its bounds, cycling through
/// [`POOL`] draws of its random fields. Returns: what it sent.
fn send(fd: &OwnedFd, frame: &Frame, src_mac: [u8; 6], pps: u32, stop: &AtomicBool) -> Sent {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let pool: Vec<Vec<u8>> = (0..POOL)
        .map(|_| {
            // xorshift: a new source address and port per frame where they are random.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            build(frame, src_mac, x)
        })
        .collect();
    let start = Instant::now();
    let end = start + MAX_FOR;
    let mut pacer = Pacer::new(pps);
    let mut frames = 0;
    while frames < MAX_FRAMES && !stop.load(Ordering::Relaxed) {
        if pacer.wait() >= end {
            break;
        }
        let bytes = &pool[frames as usize % POOL];
        // SAFETY: send on our own socket with a buffer of the length passed.
        let n = unsafe { libc::send(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if n > 0 {
            frames += 1;
        }
    }
    Sent {
        frames,
        secs: start.elapsed().as_secs_f64(),
    }
}

/// Returns: the 60-byte frame `frame` describes (as trafgen sends it: 18 bytes of UDP
/// payload, 6 of TCP), its random fields drawn from `x`.
fn build(frame: &Frame, src_mac: [u8; 6], x: u64) -> Vec<u8> {
    let src = match frame.src {
        Src::Fixed(a) => a.octets(),
        Src::Random => {
            let [a, b, ..] = RANDOM_NET.octets();
            [a, b, (x >> 8) as u8, (x >> 16) as u8]
        }
    };
    let sport = match frame.sport {
        Src::Fixed(p) => p,
        Src::Random => 1024 + ((x >> 24) % 64_512) as u16,
    };
    let (proto, flags, payload) = match frame.l4 {
        L4::Udp => (17, 0, 18),
        L4::TcpSyn => (6, crate::packet::TCP_SYN, 6),
        L4::TcpAck => (6, crate::packet::TCP_ACK, 6),
    };
    V4Packet {
        dst_mac: frame.dst_mac,
        src_mac,
        proto,
        tcp_flags: flags,
        payload: vec![0; payload],
        ..V4Packet::tcp(src, sport, frame.dst.octets(), frame.dport)
    }
    .build()
}
