//! What the forwarding methods share: leaving by the right port with the right layer-2
//! header (the next hop of the methods that route, the egress interface's MAC and VLAN
//! tags, XDP_TX or XDP_REDIRECT).
//!
//! VLAN policy:
//! - A tagged frame is routed (NAT, tunnel) as the kernel would route it: from the VLAN
//!   device its tags name (`VLAN_IN`). A VLAN with no device here is dropped
//!   (`DROP_VLAN`): the kernel would drop it too.
//! - A frame that leaves by a VLAN device gets that device's tags and is sent on the
//!   plain device at the bottom of its stack (a redirect cannot target a VLAN device).
//! - A frame that leaves by a plain device is untagged, except with direct routing,
//!   which keeps the frame's own tags: the frame stays on the segment it came from.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::{
    maps::{client_hop_slot, HOP_TTL_JIFFIES, REAL_HOP_SLOTS},
    reason, IfaceInfo, VlanKey, VlanOut, FAMILY_V4,
};
use lb_ebpf::headers::{ptr_at, EthHdr, ETH_HLEN, ETH_P_IP, ETH_P_IPV6};

use crate::{
    fib, icmp,
    l2::{self, write_header, Tags},
    maps::{KeptHop, CLIENT_HOPS, REAL_HOPS, VLAN_IN, VLAN_OUT},
    parse::Parsed,
    ticks,
    verdict::Verdict,
};

/// Sets the frame's destination and source MAC addresses.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, dst: [u8; 6], src: [u8; 6]) -> Result<(), Verdict> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Verdict::internal())?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*eth).dst = dst;
        (*eth).src = src;
    }
    Ok(())
}

/// Returns: the interface the kernel would say the frame came in by: the VLAN device
/// its tags name, or the attached interface itself for an untagged frame; the drop
/// verdict for a VLAN this host has no device for.
#[inline(always)]
fn input_ifindex(ctx: &XdpContext) -> Result<u32, Verdict> {
    let ifindex = ctx.ingress_ifindex() as u32;
    let tags = Tags::received();
    if tags.n == 0 {
        return Ok(ifindex);
    }
    let key = VlanKey {
        ifindex,
        vid_be: tags.vids_be(),
    };
    // SAFETY: hash map value, copied at once.
    unsafe { VLAN_IN.get(&key) }
        .copied()
        .ok_or(Verdict::drop(reason::DROP_VLAN))
}

/// Looks the next hop of `r` up in the kernel's FIB, for the methods that route. A
/// packet too big for the egress once the method has added `overhead` bytes is answered
/// with ICMP carrying the egress MTU less `overhead`. With `keep`, the hop the FIB gave
/// this CPU for the same route less than `HOP_TTL_JIFFIES` ago is used again for a
/// packet no longer than the one the FIB accepted then, and a new answer is kept
/// (decisions 0023, 0024; see [`Keep`]).
/// Returns: the hop, or the final verdict of a packet not forwarded.
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    p: &Parsed,
    r: &fib::Route,
    overhead: u32,
    keep: Option<Keep>,
) -> Result<fib::Hop, Verdict> {
    let input = input_ifindex(ctx)?;
    let len = u32::from(r.tot_len);
    let mut now = 0;
    if let Some(k) = &keep {
        now = ticks::now();
        if let Some(hop) = k.fresh(now, input, len) {
            return Ok(hop);
        }
    }
    // One lookup whether or not the hop is kept: the verifier then checks what follows
    // it once.
    let hop = match fib::lookup(ctx, input, r) {
        Ok(hop) => hop,
        // Never an ICMP error about an ICMP error (RFC 1122 3.2.2, RFC 4443 2.4).
        Err(fib::Miss::TooBig(_)) if p.icmp => return Err(Verdict::drop(reason::DROP_TOO_BIG)),
        Err(fib::Miss::TooBig(mtu)) => {
            return Err(icmp::too_big(ctx, p, mtu.saturating_sub(overhead)))
        }
        Err(fib::Miss::Drop(v)) => return Err(v),
    };
    if let Some(k) = keep {
        k.store(now, input, len, &hop);
    }
    Ok(hop)
}

/// Where a route's next hop is kept per CPU, and what it was kept for: the route toward
/// one real that is the same for every flow to it (`REAL_HOPS`: a tunnel's outer
/// packet; a NAT request to a real with `REAL_F_BY_DEST`), or toward one client while
/// routes depend on the destination alone (`CLIENT_HOPS`: a NAT reply with
/// `SETTING_CLIENTS_BY_DEST`). Reusing the hop then changes no flow's path.
pub struct Keep {
    slot: *mut KeptHop,
    id: u32,
    generation: u32,
    tag: [u32; 4],
}

impl Keep {
    /// The route toward real `real_id` at `generation`. `tag`: the source it is found
    /// from where that is the same for every flow (a tunnel's), or zero where the
    /// daemon found that the real's route depends on its address alone (a NAT
    /// request).
    #[inline(always)]
    pub fn real(real_id: u32, generation: u32, tag: &[u32; 4]) -> Option<Keep> {
        let slot = REAL_HOPS.get_ptr_mut(real_id & (REAL_HOP_SLOTS - 1))?;
        Some(Keep {
            slot,
            id: real_id,
            generation,
            tag: *tag,
        })
    }

    /// The route toward client `addr` of address `family` (in the id: an IPv4 address
    /// and the IPv6 one with the same first word are two clients).
    #[inline(always)]
    pub fn client(addr: &[u32; 4], family: u8) -> Option<Keep> {
        let slot = CLIENT_HOPS.get_ptr_mut(client_hop_slot(addr))?;
        Some(Keep {
            slot,
            id: u32::from(family),
            generation: 0,
            tag: *addr,
        })
    }

    /// Returns: the hop kept for this route if it was found from `input` less than
    /// `HOP_TTL_JIFFIES` before `now` (jiffies) for a packet of at least `len` bytes.
    #[inline(always)]
    fn fresh(&self, now: u64, input: u32, len: u32) -> Option<fib::Hop> {
        // SAFETY: per-CPU slot, valid for this program run; no other CPU writes it.
        let c = unsafe { &*self.slot };
        let same = c.at != 0
            && now.wrapping_sub(c.at) < HOP_TTL_JIFFIES
            && c.id == self.id
            && c.generation == self.generation
            && c.input == input
            && c.tag == self.tag;
        (same && len <= c.ok_len).then_some(fib::Hop {
            ifindex: c.ifindex,
            smac: c.smac,
            dmac: c.dmac,
        })
    }

    /// Keeps `hop`, found at `now` from `input` for a packet of `len` bytes.
    #[inline(always)]
    fn store(&self, now: u64, input: u32, len: u32, hop: &fib::Hop) {
        let c = self.slot;
        // SAFETY: as in `fresh`. Field by field: no copy of the slot on the stack.
        unsafe {
            (*c).at = now;
            (*c).id = self.id;
            (*c).generation = self.generation;
            (*c).input = input;
            (*c).ok_len = len;
            (*c).tag = self.tag;
            (*c).ifindex = hop.ifindex;
            (*c).smac = hop.smac;
            (*c).dmac = hop.dmac;
        }
    }
}

/// Looks up the interface a frame leaves by.
/// Returns: its facts, or the drop verdict for an interface the daemon did not register.
#[inline(always)]
pub fn egress_iface(ifindex: u32) -> Result<IfaceInfo, Verdict> {
    let i = l2::iface(ifindex);
    if i.mac == [0; 6] {
        return Err(Verdict::drop(reason::DROP_NO_IFACE));
    }
    Ok(i)
}

/// Returns: how frames leave by `ifindex` if it is a VLAN device the daemon registered.
#[inline(always)]
pub fn vlan_out(ifindex: u32) -> Option<VlanOut> {
    // SAFETY: hash map value, copied at once.
    unsafe { VLAN_OUT.get(&ifindex) }.copied()
}

/// Where a rewritten frame goes.
pub struct Out {
    /// The device to transmit on.
    pub xmit: u32,
    /// Offset of the bytes after the new layer-2 header (the new headers a method adds,
    /// or the IP packet).
    pub l3_off: usize,
}

/// Gives `p` the layer-2 header of a frame leaving by interface `ifindex` (`vlan`: how,
/// if it is a VLAN device) toward `dst` from `src`, with the tags the policy above says
/// (`keep_tags` for direct routing), and room for `overhead` bytes of new headers
/// before the IP packet.
/// Returns: where the frame goes, or the final verdict of a frame not forwarded.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn relayer(
    ctx: &XdpContext,
    p: &Parsed,
    ifindex: u32,
    vlan: Option<VlanOut>,
    dst: [u8; 6],
    src: [u8; 6],
    overhead: usize,
    keep_tags: bool,
) -> Result<Out, Verdict> {
    let (tags, xmit) = match vlan {
        Some(v) => (Tags::of_vlan(&v), v.xmit_ifindex),
        None if keep_tags => (Tags::received(), ifindex),
        None => (Tags::NONE, ifindex),
    };
    if tags.n == 0 && overhead == 0 {
        set_macs(ctx, dst, src)?;
        return Ok(Out {
            xmit,
            l3_off: ETH_HLEN,
        });
    }
    let l2 = tags.header_len();
    let grow = (l2 + overhead) as i32 - ETH_HLEN as i32;
    // SAFETY: helper call on this program's own context.
    if grow != 0 && unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return Err(Verdict::internal());
    }
    let ethertype = if p.key.family == FAMILY_V4 {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    write_header(ctx, dst, src, &tags, ethertype).ok_or(Verdict::internal())?;
    Ok(Out { xmit, l3_off: l2 })
}

/// Gives a routed frame the layer-2 header of its next hop `hop` (see [`relayer`]),
/// with room for `overhead` bytes of new headers.
/// Returns: where the frame goes, or the final verdict of a frame not forwarded.
#[inline(always)]
pub fn routed(
    ctx: &XdpContext,
    p: &Parsed,
    hop: &fib::Hop,
    overhead: usize,
) -> Result<Out, Verdict> {
    // XDP runs on the plain devices: a frame that leaves by the interface it came in by
    // leaves by no VLAN device, and needs no VLAN_OUT lookup.
    let vlan = if hop.ifindex == ctx.ingress_ifindex() as u32 {
        None
    } else {
        vlan_out(hop.ifindex)
    };
    relayer(
        ctx,
        p,
        hop.ifindex,
        vlan,
        hop.dmac,
        hop.smac,
        overhead,
        false,
    )
}

/// Sends the (rewritten) frame out of `ifindex`: XDP_TX when that is where it came
/// in, XDP_REDIRECT otherwise.
#[inline(always)]
pub fn transmit(ctx: &XdpContext, ifindex: u32) -> Verdict {
    if ifindex as usize == ctx.ingress_ifindex() {
        return Verdict {
            action: xdp_action::XDP_TX,
            reason: reason::FWD_TX,
        };
    }
    // SAFETY: plain helper call; it only records the target for after the program returns.
    let action = unsafe { bpf_redirect(ifindex, 0) } as u32;
    Verdict {
        action,
        reason: reason::FWD_REDIRECT,
    }
}
