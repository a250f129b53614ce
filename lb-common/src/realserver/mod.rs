//! Types of the real-server product: the decapsulator that `xdpvs realserver decap`
//! attaches on hosts behind a tunnelling balancer. Its BPF object (lb-ebpf's
//! `xdpvs-realserver`) shares no map with the balancer's, so its types live apart
//! from the balancer's, here.

pub mod maps;
#[cfg(feature = "user")]
pub mod user;

/// An address and its family: key of the decapsulator's [`maps::DECAP_VIPS`] and
/// [`maps::DECAP_LOCAL`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    /// Address, network order words.
    pub addr: [u32; 4],
    /// [`crate::FAMILY_V4`] or [`crate::FAMILY_V6`].
    pub family: u8,
    /// Zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);

/// Index of the decapsulator's counters in [`maps::DECAP_STATS`]: packets stripped of
/// their outer header and passed up.
pub const DECAP_DONE: u32 = 0;
/// Tunnelled packets passed untouched: inner destination not a configured VIP, outer
/// destination not local, or inner header unreadable.
pub const DECAP_SKIPPED: u32 = 1;
/// Number of decapsulator counters.
pub const DECAP_COUNT: u32 = 2;
