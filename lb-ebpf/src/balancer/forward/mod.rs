//! Forwarding methods, one module each; [`egress`] is what they share.

pub mod dr;
pub mod egress;
pub mod nat;
pub mod tunnel;
