//! The real server's side of tunnelling: strips the outer header of IPv4-in-IPv4 and
//! IPv6-in-IPv6 packets and passes the inner packet up the stack, for hosts without (or
//! not wanting) the kernel's ipip/ip6_tunnel drivers.
//!
//! Policy: only packets whose outer destination is one of this host's addresses
//! (DECAP_LOCAL) and whose inner destination is a configured VIP (DECAP_VIPS) are
//! unwrapped; everything else, tunnelled or not, passes untouched. Outer IPv4 fragments
//! and IPv6 extension headers are not unwrapped. Inner checksums are the client's and
//! stay valid; the kernel checks them.

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_adjust_head, maps::HashMap,
    programs::XdpContext,
};
use lb_common::{
    realserver::{AddrKey, DECAP_DONE, DECAP_SKIPPED},
    FAMILY_V4, FAMILY_V6,
};
use lb_ebpf::headers::{
    ptr_at, EthHdr, Ipv4Hdr, Ipv6Hdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6,
    IPV6_HLEN,
};

use crate::maps::{DECAP_LOCAL, DECAP_STATS, DECAP_VIPS};

/// Counts one packet under decapsulator counter `i` (`DECAP_*`).
fn count(i: u32) {
    if let Some(c) = DECAP_STATS.get_ptr_mut(i) {
        // SAFETY: per-CPU slot, valid for this run.
        unsafe { *c += 1 };
    }
}

/// Returns: whether `map` holds the address.
#[inline(always)]
fn known(map: &HashMap<AddrKey, u8>, addr: [u32; 4], family: u8) -> bool {
    let k = AddrKey {
        addr,
        family,
        _pad: [0; 3],
    };
    // SAFETY: presence check only.
    unsafe { map.get(&k) }.is_some()
}

/// Returns: the XDP action for the frame (always XDP_PASS, unwrapped or not).
#[inline(always)]
pub fn try_decap(ctx: &XdpContext) -> u32 {
    match outer_len(ctx) {
        Some(0) => {}
        Some(n) => {
            if strip(ctx, n).is_some() {
                count(DECAP_DONE);
            } else {
                count(DECAP_SKIPPED);
            }
        }
        None => count(DECAP_SKIPPED),
    }
    xdp_action::XDP_PASS
}

/// Returns: `Some(0)` for a frame that is no tunnelled packet of ours, `Some(n)` for one
/// to unwrap (`n`: the outer header's length), `None` for a tunnelled one to leave.
#[inline(always)]
fn outer_len(ctx: &XdpContext) -> Option<usize> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    match u16::from_be(unsafe { (*eth).proto_be }) {
        ETH_P_IP => {
            let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
            // SAFETY: bounds checked by ptr_at.
            let (ver_ihl, proto, frag, dst) = unsafe {
                (
                    (*ip).ver_ihl,
                    (*ip).proto,
                    u16::from_be((*ip).frag_off_be),
                    (*ip).dst,
                )
            };
            if proto != IPPROTO_IPIP || ver_ihl >> 4 != 4 {
                return Some(0);
            }
            let hlen = ((ver_ihl & 0x0f) as usize) * 4;
            if hlen < 20 || frag & 0x3fff != 0 || !known(&DECAP_LOCAL, [dst, 0, 0, 0], FAMILY_V4) {
                return None;
            }
            let inner: *const Ipv4Hdr = ptr_at(ctx, ETH_HLEN + hlen)?;
            // SAFETY: bounds checked by ptr_at.
            let (iv, idst) = unsafe { ((*inner).ver_ihl, (*inner).dst) };
            (iv >> 4 == 4 && known(&DECAP_VIPS, [idst, 0, 0, 0], FAMILY_V4)).then_some(hlen)
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_HLEN)?;
            // SAFETY: bounds checked by ptr_at.
            let (next, dst) = unsafe { ((*ip).next_hdr, (*ip).dst) };
            if next != IPPROTO_IPV6 {
                return Some(0);
            }
            if !known(&DECAP_LOCAL, dst, FAMILY_V6) {
                return None;
            }
            let inner: *const Ipv6Hdr = ptr_at(ctx, ETH_HLEN + IPV6_HLEN)?;
            // SAFETY: bounds checked by ptr_at.
            let (ivtf, idst) = unsafe { ((*inner).ver_tc_flow, (*inner).dst) };
            (u32::from_be(ivtf) >> 28 == 6 && known(&DECAP_VIPS, idst, FAMILY_V6))
                .then_some(IPV6_HLEN)
        }
        _ => Some(0),
    }
}

/// Moves the Ethernet header `n` bytes forward over the outer header and drops the
/// bytes before it. The inner packet has the outer one's family, so the EtherType stays.
#[inline(always)]
fn strip(ctx: &XdpContext, n: usize) -> Option<()> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let (dst, src, proto) = unsafe { ((*eth).dst, (*eth).src, (*eth).proto_be) };
    if n > 60 {
        return None;
    }
    let new: *mut EthHdr = ptr_at(ctx, n)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*new).dst = dst;
        (*new).src = src;
        (*new).proto_be = proto;
        if bpf_xdp_adjust_head(ctx.ctx, n as i32) != 0 {
            return None;
        }
    }
    Some(())
}
