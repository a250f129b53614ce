//! xdpvs: an XDP layer-4 load balancer. The library holds everything the `xdpvs`
//! binary does, so the root-run tests can drive the same code.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod realserver;
pub mod reconcile;
pub mod status;

/// The BPF object (lb-ebpf), built by build.rs and embedded at compile time.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpvs"));
