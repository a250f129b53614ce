//! One packet through the balancer: parse, find the virtual server, make sure the
//! frame is addressed to this host, choose the real, forward with the virtual
//! server's method. Fragments and ICMP errors go on in programs of their own, reached
//! by tail call (decision 0018): `fragment.rs` and `icmp_error.rs`. The lookups of
//! the virtual server a packet is for are here, for all three.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    maps::{TAIL_FRAGMENT, TAIL_ICMP},
    reason, FlowKey, VsInfo, VsKey, METHOD_DR, METHOD_NAT, METHOD_TUNNEL, PROTO_UDP,
};

use crate::{
    choose::{self, Record},
    forward, l2,
    maps::{FRAG_VS, TAILS, VS_MAP},
    parse, stats,
    verdict::Verdict,
};

/// Returns: `Ok` with the verdict of a forwarded packet, `Err` with the verdict of one
/// that was passed or dropped (both are final; the split keeps `?` usable).
#[inline(always)]
pub fn try_balance(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    l2::untag(ctx)?;
    let p = parse::parse(ctx)?;
    if p.icmp {
        return tail_call(ctx, TAIL_ICMP);
    }
    if p.frag {
        return tail_call(ctx, TAIL_FRAGMENT);
    }
    let Some(vs) = virtual_server(&p.key) else {
        // Not for a VIP: maybe a real's reply to a NAT flow.
        let (verdict, vs_index) = forward::nat::reply(ctx, &p)?;
        stats::count_reply(vs_index, p.len);
        return Ok(verdict);
    };
    let ingress = l2::addressed_here(ctx)?;
    if !parse::l4_complete(ctx, &p) {
        return Err(Verdict::drop(reason::DROP_MALFORMED));
    }
    // SYN guard (decision 0012): a TCP flow enters the connection table with the first
    // packet after its SYN, so a spoofed SYN flood writes nothing there, whatever the
    // method. A UDP flow enters it with its second packet (0017). Without persistence,
    // which must place a client network at once, a NAT flow's SYN or first datagram
    // leaves its mark in UDP_SEEN, where its real's reply finds it (0021).
    let unpersisted = vs.persist_timeout_ns == 0;
    let record = if parse::opening_syn(ctx, &p) {
        if vs.method == METHOD_NAT && unpersisted {
            Record::Mark
        } else {
            Record::Never
        }
    } else if p.key.proto == PROTO_UDP && unpersisted {
        Record::Second
    } else {
        Record::Now
    };
    let choice = choose::real(&p.key, vs, record)?;
    if choice.new_flow {
        stats::count_new_flow(vs.vs_index, choice.real_id);
    }
    // SAFETY: array value pointer, valid for this run.
    let real = unsafe { &*choice.real };
    let verdict = match vs.method {
        METHOD_DR => forward::dr::forward(ctx, &p, real, ingress)?,
        METHOD_NAT => {
            let traced = choice.recorded || choice.marked;
            forward::nat::forward(ctx, &p, vs, real, choice.new_flow, traced)?
        }
        METHOD_TUNNEL => forward::tunnel::forward(ctx, &p, vs, real)?,
        _ => return Err(Verdict::internal()),
    };
    stats::count_forward(vs.vs_index, choice.real_id, p.len);
    Ok(verdict)
}

/// Goes on in program `index` of `TAILS`. Returns: only if that failed (an empty slot,
/// which a daemon that loaded this program never leaves), with `drop_internal`.
#[inline(always)]
fn tail_call(ctx: &XdpContext, index: u32) -> Result<Verdict, Verdict> {
    // SAFETY: the programs of TAILS are this object's XDP programs, written by the
    // daemon; on success control never comes back.
    unsafe { TAILS.tail_call(ctx, index) };
    Err(Verdict::internal())
}

/// Returns: the virtual server at `key`'s destination address and protocol that takes
/// fragments, with its port (network order), if one does.
#[inline(always)]
pub fn fragment_taker(key: &FlowKey) -> Option<(u16, &'static VsInfo)> {
    let frag_key = VsKey {
        addr: key.dst,
        port_be: 0,
        proto: key.proto,
        family: key.family,
    };
    // SAFETY: hash map value, copied out at once.
    let port = unsafe { FRAG_VS.get(&frag_key) }.copied()?;
    let vs_key = VsKey {
        port_be: port as u16,
        ..frag_key
    };
    // SAFETY: as in `virtual_server`.
    unsafe { VS_MAP.get(&vs_key) }.map(|vs| (vs_key.port_be, vs))
}

/// Returns: the virtual server the flow `key` is addressed to, if its destination
/// address, port and protocol are one.
#[inline(always)]
pub fn virtual_server(key: &FlowKey) -> Option<&'static VsInfo> {
    let vs_key = VsKey {
        addr: key.dst,
        port_be: key.dport_be,
        proto: key.proto,
        family: key.family,
    };
    // SAFETY: VS_MAP is BPF_F_NO_PREALLOC: a replaced value stays valid until this
    // program returns (RCU), so the reference cannot alias a newer value.
    unsafe { VS_MAP.get(&vs_key) }
}
