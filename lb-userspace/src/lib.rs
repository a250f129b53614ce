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
pub mod netlink;
pub mod realserver;
pub mod reconcile;

/// The balancer's BPF object (lb-ebpf's `xdpvs`: the programs and maps that
/// `lb_common::maps` names), built by build.rs and embedded at compile time.
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpvs"));

/// The real server's BPF object (lb-ebpf's `xdpvs-realserver`: the decapsulator and the
/// maps that `lb_common::realserver::maps` names), for `xdpvs realserver decap`.
pub static BPF_REALSERVER_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpvs-realserver"));
