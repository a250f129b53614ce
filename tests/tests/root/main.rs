//! Root-run tests: one binary, run serially by `cargo xtask test` as root.
//!
//! Named by layer: `testrun_*` run the BPF programs on crafted frames
//! (BPF_PROG_TEST_RUN) with maps filled by the daemon's own code; `e2e_*` run the
//! `xdpvs` binary between network namespaces with real servers and clients.

mod e2e_abuse;
mod e2e_announce;
mod e2e_churn;
mod e2e_control;
mod e2e_convert;
mod e2e_demo;
mod e2e_dns;
mod e2e_dr;
mod e2e_fragments;
mod e2e_ha;
mod e2e_half_open;
mod e2e_health;
mod e2e_icmp;
mod e2e_methods;
mod e2e_metrics;
mod e2e_package;
mod e2e_privilege;
mod e2e_restart;
mod e2e_scaleout;
mod e2e_synflood;
mod testrun_balance;
mod testrun_fuzz;
mod testrun_methods;
mod testrun_nat_fragments;
mod testrun_verifier;
mod testrun_vlan;
