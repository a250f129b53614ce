//! Userspace-only impls of the real-server types.

use core::net::IpAddr;

use super::AddrKey;
use crate::user::addr_words;

// SAFETY: repr(C), integers and a byte array, padding written out: every bit pattern is
// valid and none has hidden padding.
unsafe impl aya::Pod for AddrKey {}

impl AddrKey {
    /// The key of `addr`.
    pub fn new(addr: IpAddr) -> Self {
        let (addr, family) = addr_words(addr);
        Self {
            addr,
            family,
            _pad: [0; 3],
        }
    }
}
