//! The XDP program under BPF_PROG_TEST_RUN: crafted frames in, verdict and bytes out.
//! Maps are filled through the daemon's own code (config -> Reconciler -> maps).
