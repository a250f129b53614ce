//! What the reconciler takes besides a configuration and what it gives back: runtime
//! overrides from the operator, next hops learnt from the kernel, and what an operator
//! sees of a real.

use crate::{config::CheckType, model::RealKey};

/// Where a real server's frames go: learnt from the kernel's routes and neighbours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2Next {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// A runtime change to a real that the file does not hold (`xdpvs real ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override {
    /// Weight used instead of the file's.
    pub weight: Option<u32>,
    /// Taken out of the table (drained) by the operator.
    pub disabled: bool,
    /// The file's weight when the override was made: a reload that changes it drops
    /// the override (the newer intent wins).
    pub file_weight: u32,
}

impl Override {
    /// Returns: an override that changes nothing yet, made while the file gives the real
    /// weight `file_weight` (the operator's change is then set on it).
    pub fn new(file_weight: u32) -> Self {
        Self {
            weight: None,
            disabled: false,
            file_weight,
        }
    }
}

/// What a real looks like to an operator (`xdpvs status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealView {
    pub key: RealKey,
    pub id: u32,
    /// Generation of the id now (flow entries of other generations are not its).
    pub generation: u32,
    /// The file's weight (0 for the sorry server).
    pub file_weight: u32,
    /// Weight in use (override or file).
    pub weight: u32,
    pub healthy: bool,
    /// How its health is probed (`None` for the sorry server).
    pub check: CheckType,
    pub disabled: bool,
    /// In the Maglev table: takes new flows.
    pub in_table: bool,
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
