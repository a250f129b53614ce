//! The `dns` probe, keepalived's DNS_CHECK: one query over UDP for the configured name
//! and type, class IN; the real is healthy when a response comes back with the query's
//! ID, QR set, RCODE NOERROR and the question asked. The answer's records are not read.
//!
//! The message is written and checked here rather than with a DNS library (decision
//! 0010): a probe writes one fixed question and reads a 12-byte header and the echo of
//! that question at fixed offsets, and never parses a resource record, where
//! hickory-proto would bring a full DNS stack and its dependencies for that.

use std::{
    hash::{BuildHasher as _, Hasher as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tokio::net::UdpSocket;

use super::{io_failure, Failure};
use crate::config::{dns::labels, DnsQuestion};

/// Size of the message header (RFC 1035 4.1.1), in bytes.
const HEADER: usize = 12;
/// Flags of the query: a standard query (opcode 0) with RD (recursion desired), as `dig`
/// sends; a server authoritative for the name ignores RD.
const QUERY_FLAGS: u16 = 0x0100;
/// QR: the message is a response.
const QR: u8 = 0x80;
/// Class IN.
const CLASS_IN: u16 = 1;
/// Largest response read, in bytes: a UDP response without EDNS (RFC 1035 4.2.1); only
/// its header and question are read.
const RESPONSE_MAX: usize = 512;

/// Returns: the query for `q` with ID `id`, in wire form (header, QNAME, QTYPE, QCLASS).
/// `q.name` was checked by the configuration (`labels` cannot fail on it).
pub fn query(id: u16, q: &DnsQuestion) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER + q.name.len() + 6);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&QUERY_FLAGS.to_be_bytes());
    // QDCOUNT 1; ANCOUNT, NSCOUNT, ARCOUNT 0.
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in labels(&q.name).unwrap_or_default() {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&q.qtype.code().to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    m
}

/// Returns: the name of response code `rcode` (RFC 1035 4.1.1, RFC 2136).
fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        _ => "unassigned",
    }
}

/// Checks `resp` against `query`, the query it answers.
/// Returns: `Ok` for a response of that ID with QR set, RCODE NOERROR and the same
/// question (the name compared without case, as servers may echo it in another case);
/// why not otherwise.
pub fn check_response(query: &[u8], resp: &[u8]) -> Result<(), Failure> {
    let bad = |why: &str| Err(Failure::BadResponse(format!("dns: {why}")));
    if resp.len() < HEADER {
        return bad(&format!("{} bytes, shorter than a header", resp.len()));
    }
    if resp[..2] != query[..2] {
        return bad("the ID is not the query's");
    }
    if resp[2] & QR == 0 {
        return bad("QR is not set: not a response");
    }
    let rcode = resp[3] & 0x0f;
    if rcode != 0 {
        return Err(Failure::Dns(format!(
            "rcode {} ({rcode})",
            rcode_name(rcode)
        )));
    }
    let question = &query[HEADER..];
    let qdcount = u16::from_be_bytes([resp[4], resp[5]]);
    match resp.get(HEADER..HEADER + question.len()) {
        Some(echo) if qdcount == 1 && echo.eq_ignore_ascii_case(question) => Ok(()),
        Some(_) => bad("the question is not the one asked"),
        None => bad("the question is cut short"),
    }
}

/// Returns: a query ID no one on the path can guess, from the hasher keys std draws
/// from the system's randomness.
fn random_id() -> u16 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish() as u16
}

/// Asks `q` of the server at `target` once (the caller bounds the time).
/// Returns: `Ok` when it answers as [`check_response`] wants; why not otherwise. A
/// closed port is `Refused`, from the ICMP port unreachable the connected socket gets.
pub async fn probe(target: SocketAddr, q: &DnsQuestion) -> Result<(), Failure> {
    let local = match target {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let sock = UdpSocket::bind(local).await.map_err(|e| io_failure(&e))?;
    // Connected: only the real's datagrams are received, and its ICMP errors reported.
    sock.connect(target).await.map_err(|e| io_failure(&e))?;
    let msg = query(random_id(), q);
    sock.send(&msg).await.map_err(|e| io_failure(&e))?;
    let mut buf = [0u8; RESPONSE_MAX];
    let n = sock.recv(&mut buf).await.map_err(|e| io_failure(&e))?;
    check_response(&msg, &buf[..n])
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::config::QueryType;

    fn question(name: &str, qtype: QueryType) -> DnsQuestion {
        DnsQuestion {
            name: name.into(),
            qtype,
        }
    }

    #[test]
    fn queries_are_encoded_byte_for_byte() {
        let q = query(0x1234, &question("example.test", QueryType::A));
        let mut want = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(b"\x07example\x04test\x00");
        want.extend_from_slice(&[0, 1, 0, 1]);
        assert_eq!(q, want);
        // The root, keepalived's default, asked for its SOA.
        let q = query(0xbeef, &question(".", QueryType::Soa));
        assert_eq!(
            q,
            [0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 1]
        );
        // A final dot changes nothing; each type its number.
        let codes = [
            (QueryType::A, 1),
            (QueryType::Ns, 2),
            (QueryType::Cname, 5),
            (QueryType::Soa, 6),
            (QueryType::Mx, 15),
            (QueryType::Txt, 16),
            (QueryType::Aaaa, 28),
        ];
        for (t, code) in codes {
            let q = query(1, &question("a.b.", t));
            assert_eq!(&q[HEADER..], [1, b'a', 1, b'b', 0, 0, code, 0, 1], "{t}");
        }
    }

    /// How the test server answers a query.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        /// A proper response: QR set, NOERROR, the question echoed (in upper case), an
        /// answer count of 1 and a record.
        Good,
        WrongId,
        Rcode(u8),
        /// The header only, cut after 8 bytes.
        Truncated,
        /// The query sent back as it is (QR clear).
        Echo,
        /// A response to another name.
        OtherQuestion,
    }

    /// Returns: the server's datagram for `query`.
    fn answer(query: &[u8], how: Answer) -> Vec<u8> {
        let mut r = query.to_vec();
        r[2] |= QR;
        match how {
            Answer::Good => {
                r[7] = 1;
                r[HEADER..].make_ascii_uppercase();
                // example.test A 127.0.0.1, the name compressed to the question's.
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
            }
            Answer::WrongId => r[0] ^= 0xff,
            Answer::Rcode(c) => r[3] |= c,
            Answer::Truncated => r.truncate(8),
            Answer::Echo => r[2] &= !QR,
            Answer::OtherQuestion => r[HEADER + 1] = b'x',
        }
        r
    }

    /// A DNS server on loopback answering each query as `how` says.
    /// Returns: its address.
    async fn server(how: Answer) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&answer(&buf[..n], how), from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn responses_are_taken_or_refused_as_keepalived_does() {
        let q = question("example.test", QueryType::A);
        assert_eq!(probe(server(Answer::Good).await, &q).await, Ok(()));
        let cases = [
            (Answer::WrongId, "ID"),
            (Answer::Rcode(3), "NXDOMAIN"),
            (Answer::Rcode(2), "SERVFAIL"),
            (Answer::Truncated, "shorter than a header"),
            (Answer::Echo, "QR is not set"),
            (Answer::OtherQuestion, "not the one asked"),
        ];
        for (how, why) in cases {
            let got = probe(server(how).await, &q).await;
            let text = got.as_ref().map_err(|f| f.to_string()).unwrap_err();
            assert!(text.contains(why), "{how:?}: {text}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let q = question(".", QueryType::Soa);
        assert_eq!(probe(target, &q).await, Err(Failure::Refused));
    }
}
