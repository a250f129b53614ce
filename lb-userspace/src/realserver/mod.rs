//! `xdpvs realserver ...`: what a real server behind xdpvs needs.
//!
//! - [`setup`]: the host configuration direct routing and tunnelling need (the VIP on
//!   loopback, no ARP answers for it, loose reverse-path filtering), printed, applied
//!   or undone;
//! - [`decap`]: the XDP decapsulator of the tunnel method.

pub mod decap;
pub mod setup;

pub use decap::{decap, detach};
