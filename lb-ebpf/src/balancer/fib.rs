//! Next hop from the kernel's routing and neighbour tables (`bpf_fib_lookup`), for the
//! methods that route (NAT, tunnel): the egress interface and both MAC addresses. A
//! next hop without a neighbour entry is reported to the daemon (decision 0019).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_ktime_get_ns, generated::bpf_fib_lookup},
    programs::XdpContext,
};
use lb_common::{
    maps::{NEIGH_ASKED_SLOTS, NEIGH_MISS_EVERY_NS},
    reason, NeighMiss, FAMILY_V4, FAMILY_V6,
};

use crate::{
    maps::{NEIGH_ASKED, NEIGH_MISS},
    verdict::Verdict,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where a routed packet goes next.
pub struct Hop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// Why there is no hop.
pub enum Miss {
    /// Larger than the egress MTU, which is given (bytes, IP packet).
    TooBig(u32),
    /// Any other failure: the drop verdict saying which.
    Drop(Verdict),
}

/// A flow as the FIB sees it. Addresses are network order words.
pub struct Route<'a> {
    pub family: u8,
    pub proto: u8,
    pub src: &'a [u32; 4],
    pub dst: &'a [u32; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    /// IP length the packet will have on the wire, checked against the egress MTU.
    pub tot_len: u16,
}

/// Looks up the next hop of `r`, as the kernel would forward a packet received on
/// interface `input` (forwarding must be enabled there).
/// Returns: the hop, or why not.
#[inline(always)]
pub fn lookup(ctx: &XdpContext, input: u32, r: &Route) -> Result<Hop, Miss> {
    // SAFETY: all-zero is a valid bpf_fib_lookup (integers and byte arrays only).
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.l4_protocol = r.proto;
    p.sport = r.sport_be;
    p.dport = r.dport_be;
    p.__bindgen_anon_1.tot_len = r.tot_len;
    p.ifindex = input;
    if r.family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = r.src[0];
        p.__bindgen_anon_4.ipv4_dst = r.dst[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = *r.src;
        p.__bindgen_anon_4.ipv6_dst = *r.dst;
    }
    // SAFETY: helper call with a pointer to a stack struct of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(Hop {
            ifindex: p.ifindex,
            smac: p.smac,
            dmac: p.dmac,
        }),
        // SAFETY: the kernel wrote mtu_result for this return code.
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(Miss::TooBig(u32::from(unsafe {
            p.__bindgen_anon_1.mtu_result
        }))),
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            report_no_neigh(&p);
            Err(Miss::Drop(Verdict::drop(reason::DROP_NO_NEIGH)))
        }
        BPF_FIB_LKUP_RET_FWD_DISABLED => Err(Miss::Drop(Verdict::drop(reason::DROP_FWD_DISABLED))),
        _ => Err(Miss::Drop(Verdict::drop(reason::DROP_NO_ROUTE))),
    }
}

/// Tells the daemon that the next hop of lookup `p` (which returned NO_NEIGH) has no
/// neighbour entry. On that return the kernel has already written the next hop (the
/// route's gateway, or the destination itself) into the destination, its family into
/// `family` (an IPv4 route may have an IPv6 gateway, RFC 5549) and the egress
/// interface into `ifindex`. Nothing in the kernel resolves a neighbour for XDP: the
/// daemon asks it to. At most one report per `NEIGH_ASKED` slot every
/// `NEIGH_MISS_EVERY_NS`; a full ring loses the report, and a later packet makes it
/// again. Not inlined: one copy for every route lookup the program makes.
#[inline(never)]
fn report_no_neigh(p: &FibParams) {
    let v6 = p.family == AF_INET6;
    // SAFETY: the kernel wrote the destination union for the family it set.
    let addr = unsafe {
        if v6 {
            p.__bindgen_anon_4.ipv6_dst
        } else {
            [p.__bindgen_anon_4.ipv4_dst, 0, 0, 0]
        }
    };
    let h = addr[0] ^ addr[1] ^ addr[2] ^ addr[3] ^ p.ifindex;
    let h = h ^ (h >> 16);
    let h = h.wrapping_mul(0x45d9_f3b) ^ (h >> 8);
    let Some(last) = NEIGH_ASKED.get_ptr_mut(h & (NEIGH_ASKED_SLOTS - 1)) else {
        return;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a slot of an array map, valid for this program run. Another CPU may write
    // it at the same time: at worst both report.
    unsafe {
        if *last != 0 && now.wrapping_sub(*last) < NEIGH_MISS_EVERY_NS {
            return;
        }
        *last = now;
    }
    let m = NeighMiss {
        addr,
        ifindex: p.ifindex,
        family: if v6 { FAMILY_V6 } else { FAMILY_V4 },
        _pad: [0; 3],
    };
    // A full ring loses this report; the next packet toward the hop makes another once
    // the slot's interval has passed, and the drop itself is counted (`drop_no_neigh`).
    let _ = NEIGH_MISS.output::<NeighMiss>(&m, 0);
}
