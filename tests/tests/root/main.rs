//! Root-run tests: one binary, run serially by `cargo xtask test` as root.

mod control_e2e;
mod dr_e2e;
mod health_e2e;
mod methods;
mod methods_e2e;
mod metrics_e2e;
mod testrun;
