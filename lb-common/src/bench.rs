//! Names in the benchmark object (lb-ebpf's `xdpvs-bench`), which only the live bench
//! loads: the daemon never does. It has no maps (only the `.rodata` section of its
//! globals); its programs are measured and counted through the kernel's own
//! per-program statistics (`run_cnt`, `run_time_ns`).
//! A test of lb-userspace checks that the built object holds exactly [`PROGRAMS`].

/// The "bounce": the least an XDP load balancer can do with a frame (both MACs
/// rewritten, XDP_TX back out, no lookup). The live bench's ceiling on a topology.
pub const PROG_BOUNCE: &str = "xdpvs_bounce";
/// The counting sink on the receivers' interfaces (a tc ingress program): drops IP
/// frames so that the receiving stack costs nothing, passes ARP so that neighbours
/// resolve. Its `run_cnt` is the count of frames delivered.
pub const PROG_SINK: &str = "xdpvs_sink";

/// Every program of the benchmark object.
pub const PROGRAMS: &[&str] = &[PROG_BOUNCE, PROG_SINK];

/// Global (read-only data) of the bounce: the destination MAC it writes, 6 bytes, set
/// at load time.
pub const BOUNCE_DST: &str = "BOUNCE_DST";
/// Global of the bounce: the source MAC it writes (the interface's own), 6 bytes.
pub const BOUNCE_SRC: &str = "BOUNCE_SRC";
