//! The raw sockets of half-open probes: opened (with CAP_NET_RAW) and filtered, SYNs sent
//! on them, answers read from them.

use std::{
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd},
};

use super::{
    segment::{parse_v4, parse_v6, Answer, RST, SYN},
    Wire, PORTS,
};

/// The receive and send buffers asked for each raw socket: answers that arrive
/// together (a probe round's) queue in the one, SYNs waiting for a next hop's
/// resolution are charged to the other.
const BUFFER: libc::c_int = 4 << 20;
/// Most answers read from one socket at a time.
pub const READ_MAX: usize = 1024;

/// The raw sockets, opened (with CAP_NET_RAW) before the task that uses them starts.
pub struct Sockets {
    pub(super) v4: OwnedFd,
    /// `None` on a host without IPv6 (its IPv6 reals' probes fail, saying so).
    pub(super) v6: Option<OwnedFd>,
    /// Asks the routes which source they give a real (connected, it sends nothing).
    route: UdpSocket,
}

impl Sockets {
    /// Opens the raw sockets, filtered: the IPv4 one, which needs CAP_NET_RAW, and the
    /// IPv6 one where the host has IPv6.
    pub fn open() -> io::Result<Self> {
        let v4 = raw_socket(libc::AF_INET)?;
        attach_filter(&v4, &filter_v4())?;
        let v6 = match raw_socket(libc::AF_INET6) {
            Ok(v6) => {
                // The kernel computes an IPv6 segment's checksum (and checks those
                // received): the source address it chooses is in it.
                setsockopt(&v6, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, 16)?;
                attach_filter(&v6, &filter_v6())?;
                Some(v6)
            }
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => None,
            Err(e) => return Err(e),
        };
        for fd in std::iter::once(&v4).chain(&v6) {
            // Larger than the defaults where allowed (CAP_NET_ADMIN); else the defaults.
            for (force, plain) in [
                (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
                (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
            ] {
                if setsockopt(fd, libc::SOL_SOCKET, force, BUFFER).is_err() {
                    let _ = setsockopt(fd, libc::SOL_SOCKET, plain, BUFFER);
                }
            }
        }
        Ok(Self {
            v4,
            v6,
            route: UdpSocket::bind("0.0.0.0:0")?,
        })
    }
}

/// The raw sockets as the half-open task uses them (their descriptors stay owned by
/// the task's AsyncFds, which poll them).
pub struct RawWire {
    pub v4: RawFd,
    pub v6: Option<RawFd>,
    pub route: UdpSocket,
}

impl RawWire {
    /// Returns: the wire of `sockets`, and their descriptors to own and poll.
    pub fn new(sockets: Sockets) -> (Self, OwnedFd, Option<OwnedFd>) {
        let wire = Self {
            v4: sockets.v4.as_raw_fd(),
            v6: sockets.v6.as_ref().map(AsRawFd::as_raw_fd),
            route: sockets.route,
        };
        (wire, sockets.v4, sockets.v6)
    }
}

impl Wire for RawWire {
    fn send(&mut self, real: IpAddr, seg: &[u8], source: Option<Ipv4Addr>) -> io::Result<()> {
        match (real, source) {
            (IpAddr::V4(real), Some(source)) => send_v4(self.v4, real, seg, source),
            (IpAddr::V6(real), None) => match self.v6 {
                Some(fd) => send_v6(fd, real, seg),
                None => Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
            },
            _ => Err(io::Error::other(
                "an IPv4 segment needs its source, an IPv6 one none",
            )),
        }
    }

    fn route_source(&mut self, real: Ipv4Addr) -> io::Result<Ipv4Addr> {
        // Connecting a UDP socket asks the routes and sends nothing.
        self.route.connect((real, 9))?;
        match self.route.local_addr()?.ip() {
            IpAddr::V4(src) => Ok(src),
            IpAddr::V6(_) => Err(io::Error::other("an IPv4 route gave a non-IPv4 source")),
        }
    }
}

/// Reads the answers queued on raw socket `fd` (until none is left, at most
/// [`READ_MAX`] reads) into `answers`. Returns: whether it stopped at the limit (more
/// may be queued).
pub fn drain(fd: RawFd, buf: &mut [u8], answers: &mut Vec<Answer>) -> bool {
    for _ in 0..READ_MAX {
        match recv_from(fd, buf) {
            Ok((n, from)) => answers.extend(match from {
                Some(src) => parse_v6(src, &buf[..n]),
                None => parse_v4(&buf[..n]),
            }),
            // EAGAIN also when the IPv6 socket dropped a segment whose checksum failed,
            // with others queued behind it: read on while any is.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if queued(fd) == 0 {
                    return false;
                }
            }
            Err(e) => {
                tracing::debug!("half-open probes: reading an answer: {e}");
                if queued(fd) == 0 {
                    return false;
                }
            }
        }
    }
    true
}

/// Returns: the length of the datagram first in `fd`'s receive queue (SIOCINQ), 0 when
/// none is (or the question failed).
fn queued(fd: RawFd) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &raw mut n) };
    if r < 0 {
        0
    } else {
        n
    }
}

/// Sends TCP segment `seg` to `real` from `source` (given with IP_PKTINFO: the checksum
/// covers it, so the kernel must not choose another), without waiting.
fn send_v4(fd: RawFd, real: Ipv4Addr, seg: &[u8], source: Ipv4Addr) -> io::Result<()> {
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
    send_with_pktinfo(fd, seg, &dst, &info).map(|_| ())
}

/// Sends TCP segment `seg` to `real`, without waiting.
fn send_v6(fd: RawFd, real: Ipv6Addr, seg: &[u8]) -> io::Result<()> {
    let dst = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: real.octets(),
        },
        sin6_scope_id: 0,
    };
    // SAFETY: the buffer and the address are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            fd,
            seg.as_ptr().cast(),
            seg.len(),
            libc::MSG_DONTWAIT,
            (&raw const dst).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    checked(n).map(|_| ())
}

/// Classic BPF: the IPv4 socket reads the datagram from its IP header. It keeps an
/// unfragmented segment to a port of [`PORTS`] with SYN or RST set, the first 128 bytes
/// of it (a header of up to 60 bytes and the TCP header's first 20).
fn filter_v4() -> Vec<libc::sock_filter> {
    let mut f = vec![
        stmt(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 6),
        // A fragment: to the last statement of the test below, which refuses.
        jump(libc::BPF_JSET, 0x1fff, 7, 0),
        // X: the TCP header's offset (4 times the IP header length).
        stmt(libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH, 0),
    ];
    f.extend(segment_test());
    f
}

/// Classic BPF: the IPv6 socket reads the segment from its TCP header, at offset 0.
fn filter_v6() -> Vec<libc::sock_filter> {
    let mut f = vec![stmt(libc::BPF_LDX | libc::BPF_W | libc::BPF_IMM, 0)];
    f.extend(segment_test());
    f
}

/// The test both filters end with, on a TCP header at offset X: a destination port of
/// [`PORTS`] and SYN or RST set keep the first 128 bytes; anything else is refused (the
/// last statement).
fn segment_test() -> [libc::sock_filter; 7] {
    let (lo, hi) = (u32::from(*PORTS.start()), u32::from(*PORTS.end()));
    [
        stmt(libc::BPF_LD | libc::BPF_H | libc::BPF_IND, 2),
        jump(libc::BPF_JGE, lo, 0, 4),
        jump(libc::BPF_JGT, hi, 3, 0),
        stmt(libc::BPF_LD | libc::BPF_B | libc::BPF_IND, 13),
        jump(libc::BPF_JSET, u32::from(SYN | RST), 0, 1),
        stmt(libc::BPF_RET | libc::BPF_K, 128),
        stmt(libc::BPF_RET | libc::BPF_K, 0),
    ]
}

/// Returns: a classic BPF statement.
fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// Returns: a classic BPF conditional jump on `k`, `jt` instructions ahead if true, `jf`
/// if false.
fn jump(op: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | op | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// Returns: `r`, a system call's result, or the error it set when negative.
fn checked<T: Default + PartialOrd>(r: T) -> io::Result<T> {
    if r < T::default() {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
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
    let fd = checked(fd)?;
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets int-valued socket option `name` of `level` to `v`.
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
    checked(r).map(|_| ())
}

/// Attaches classic BPF program `code` to socket `fd`.
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
    checked(r).map(|_| ())
}

/// `sendmsg` of `seg` to `dst` with an IP_PKTINFO control message naming the source,
/// without waiting. Returns: the bytes sent.
fn send_with_pktinfo(
    fd: RawFd,
    seg: &[u8],
    dst: &libc::sockaddr_in,
    info: &libc::in_pktinfo,
) -> io::Result<usize> {
    // Room for one cmsghdr and an in_pktinfo (CMSG_SPACE: 32 bytes on 64-bit Linux),
    // aligned as the cmsghdr asks.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) } as usize;
    assert!(
        space <= size_of::<[u64; 8]>(),
        "an in_pktinfo control message fits"
    );
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
        checked(libc::sendmsg(fd, &raw const msg, libc::MSG_DONTWAIT)).map(|n| n as usize)
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
        let n = (checked(n)? as usize).min(buf.len());
        if i32::from(from.ss_family) == libc::AF_INET6 {
            let a = &*(&raw const from).cast::<libc::sockaddr_in6>();
            return Ok((n, Some(Ipv6Addr::from(a.sin6_addr.s6_addr))));
        }
        Ok((n, None))
    }
}
