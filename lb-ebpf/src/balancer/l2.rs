//! Layer 2: VLAN tags taken off on the way in and put back on the way out, whether a
//! frame is addressed to this host, and the Ethernet header a frame leaves with.
//!
//! A switch floods unicast
//! frames whose destination it has not learnt (after a topology change, an expired
//! entry, a VRRP failover), and a bridge hands a VM frames for its neighbours: every
//! balancer on the segment then sees the same frame for a VIP. Only the one it is
//! addressed to may forward it; the others pass it to their kernel, which drops it as
//! meant for another host.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    maps::{own_mac_key, IFACE_INDEX_SLOTS},
    reason, IfaceInfo, VlanOut,
};
use lb_ebpf::headers::{ptr_at, EthHdr, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, VLAN_HLEN};

use crate::{
    maps::{IFACES, IFACE_INDEX, OWN_MACS, RX_TAGS},
    verdict::Verdict,
};

/// Returns: `Ok` when the frame's destination MAC is broadcast or multicast, the
/// receiving interface's own, or one the host also answers for (`OWN_MACS`); a pass
/// verdict otherwise. An interface the daemon has not registered is given the benefit
/// of the doubt. `Ok` carries the receiving interface's entry when it was read (a
/// zero MAC: not read), so that a frame leaving by the same interface needs no second
/// lookup.
#[inline(always)]
pub fn addressed_here(ctx: &XdpContext) -> Result<IfaceInfo, Verdict> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Verdict::internal())?;
    // SAFETY: bounds checked by ptr_at.
    let dst = unsafe { (*eth).dst };
    if dst[0] & 1 != 0 {
        return Ok(IfaceInfo::default());
    }
    let i = iface(ctx.ingress_ifindex() as u32);
    if i.mac == [0; 6] || i.mac == dst {
        return Ok(i);
    }
    // SAFETY: hash map lookup; only presence is read.
    if unsafe { OWN_MACS.get(&own_mac_key(dst)) }.is_some() {
        return Ok(i);
    }
    Err(Verdict::pass(reason::PASS_OTHER_HOST))
}

/// Returns: the `IFACES` entry of interface `ifindex`, read from `IFACE_INDEX` when it
/// holds it (an array read, no hash lookup); an entry with a zero MAC when there is
/// none. Returned by value, never as an `Option` of one, whose empty case the compiler
/// may leave partly unwritten on the stack, which the verifier refuses. Copied once:
/// the daemon rewrites an `IFACE_INDEX` value in place (an interface's MAC change,
/// its removal), and a frame read as it does so may leave with a source MAC of both or
/// be passed.
#[inline(always)]
pub fn iface(ifindex: u32) -> IfaceInfo {
    if ifindex < IFACE_INDEX_SLOTS {
        if let Some(i) = IFACE_INDEX.get(ifindex) {
            let i = *i;
            if i.mac != [0; 6] {
                return i;
            }
        }
    }
    // SAFETY: hash map value, copied at once.
    match unsafe { IFACES.get(&ifindex) } {
        Some(i) => *i,
        None => IfaceInfo::default(),
    }
}

/// The VLAN tags a frame carries or gets: `n` (0 to 2) tags, each a (TPID, TCI) pair
/// of network order words in `words`, outermost first.
#[derive(Clone, Copy)]
pub struct Tags {
    pub n: usize,
    pub words: [u16; 4],
}

impl Tags {
    /// No tags.
    pub const NONE: Tags = Tags {
        n: 0,
        words: [0; 4],
    };

    /// Returns: the tags the frame being processed arrived with (`untag` took them off).
    #[inline(always)]
    pub fn received() -> Tags {
        match RX_TAGS.get_ptr(0) {
            // SAFETY: per-CPU slot, valid for this program run.
            Some(r) => unsafe {
                let r = *r;
                Tags {
                    n: if r[0] > 2 { 2 } else { r[0] as usize },
                    words: [r[1], r[2], r[3], r[4]],
                }
            },
            None => Tags::NONE,
        }
    }

    /// Returns: the tags frames leaving by VLAN device `i` carry.
    #[inline(always)]
    pub fn of_vlan(i: &VlanOut) -> Tags {
        Tags {
            n: if i.tags > 2 { 2 } else { i.tags as usize },
            words: [i.tpid_be[0], i.vid_be[0], i.tpid_be[1], i.vid_be[1]],
        }
    }

    /// Returns: the VLAN ids, outermost first, network order, as `VLAN_IN` keys them.
    #[inline(always)]
    pub fn vids_be(&self) -> [u16; 2] {
        let vid = |tci: u16| (u16::from_be(tci) & VID_MASK).to_be();
        match self.n {
            0 => [0; 2],
            1 => [vid(self.words[1]), 0],
            _ => [vid(self.words[1]), vid(self.words[3])],
        }
    }

    /// Returns: the length of an Ethernet header with these tags, in bytes.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        ETH_HLEN + VLAN_HLEN * self.n
    }
}

/// The VLAN id bits of a tag's TCI.
const VID_MASK: u16 = 0x0fff;

/// Takes the frame's VLAN tags off (one 802.1Q or 802.1ad tag, or QinQ: either, then an
/// 802.1Q one) and records them in `RX_TAGS`: everything after sees an untagged
/// frame, its IP header at a fixed offset, and the program stays one path for the
/// verifier. An untagged frame records none. Frames passed to the kernel get their
/// tags back (`retag`).
/// Returns: `Err` with the verdict of a frame whose tags cannot be read or taken off.
#[inline(always)]
pub fn untag(ctx: &XdpContext) -> Result<(), Verdict> {
    let rec = RX_TAGS.get_ptr_mut(0).ok_or(Verdict::internal())?;
    // SAFETY: per-CPU slot, valid for this program run. Written first, so that no
    // early return leaves the last frame's tags behind.
    unsafe { (*rec)[0] = 0 };
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Verdict::pass(reason::PASS_MALFORMED))?;
    // SAFETY: bounds checked by ptr_at.
    let tpid = unsafe { (*eth).proto_be };
    if tpid != ETH_P_8021Q.to_be() && tpid != ETH_P_8021AD.to_be() {
        return Ok(());
    }
    let short = Verdict::pass(reason::PASS_MALFORMED);
    let t: *const [u16; 2] = ptr_at(ctx, ETH_HLEN).ok_or(short)?;
    // SAFETY: bounds checked by ptr_at.
    let (tci, next) = unsafe { ((*t)[0], (*t)[1]) };
    let mut r = [1, tpid, tci, 0, 0, 0];
    if next == ETH_P_8021Q.to_be() {
        let t: *const [u16; 2] = ptr_at(ctx, ETH_HLEN + VLAN_HLEN).ok_or(short)?;
        // SAFETY: bounds checked by ptr_at.
        r = [2, tpid, tci, next, unsafe { (*t)[0] }, 0];
    }
    let macs: *const [u8; 12] = ptr_at(ctx, 0).ok_or(short)?;
    // SAFETY: bounds checked by ptr_at; copied before the head moves.
    let macs = unsafe { *macs };
    let cut = VLAN_HLEN as i32 * i32::from(r[0]);
    // SAFETY: helper call on this program's own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, cut) } != 0 {
        return Err(Verdict::internal());
    }
    // SAFETY: per-CPU slot, as above.
    unsafe { *rec = r };
    let at: *mut [u8; 12] = ptr_at(ctx, 0).ok_or(Verdict::internal())?;
    // SAFETY: bounds checked by ptr_at.
    unsafe { *at = macs };
    Ok(())
}

/// Puts the tags `untag` took off back on a frame about to be passed to the kernel,
/// which then sees it exactly as it arrived.
/// Returns: `false` if the frame could not be re-tagged (it must then be dropped).
#[inline(always)]
pub fn retag(ctx: &XdpContext) -> bool {
    let tags = Tags::received();
    if tags.n == 0 {
        return true;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at; copied before the head moves.
    let (dst, src, ethertype) = unsafe { ((*eth).dst, (*eth).src, (*eth).proto_be) };
    // SAFETY: helper call on this program's own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -((VLAN_HLEN * tags.n) as i32)) } != 0 {
        return false;
    }
    write_header(ctx, dst, src, &tags, u16::from_be(ethertype)).is_some()
}

/// Writes an Ethernet header with MACs `dst` and `src`, `tags`, and `ethertype` (host
/// order) at the start of the frame, which must have room for it.
/// Returns: `None` if the frame is too short.
#[inline(always)]
pub fn write_header(
    ctx: &XdpContext,
    dst: [u8; 6],
    src: [u8; 6],
    tags: &Tags,
    ethertype: u16,
) -> Option<()> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let t = ethertype.to_be();
    // SAFETY: bounds checked by ptr_at for each write.
    unsafe {
        (*eth).dst = dst;
        (*eth).src = src;
        if tags.n == 0 {
            (*eth).proto_be = t;
        } else if tags.n == 1 {
            let w: *mut [u16; 3] = ptr_at(ctx, ETH_HLEN - 2)?;
            *w = [tags.words[0], tags.words[1], t];
        } else {
            let w: *mut [u16; 5] = ptr_at(ctx, ETH_HLEN - 2)?;
            *w = [
                tags.words[0],
                tags.words[1],
                tags.words[2],
                tags.words[3],
                t,
            ];
        }
    }
    Some(())
}
