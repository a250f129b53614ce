//! The virtual server a packet is for: by its destination address, port and protocol,
//! or, for a fragment, by the address and protocol of a virtual server that takes
//! fragments. Used by the balancer, the fragment and ICMP error programs, and NAT
//! (which finds the virtual server of a reply's flow).

use lb_common::{FlowKey, VsInfo, VsKey};

use crate::maps::{FRAG_VS, VS_MAP};

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
