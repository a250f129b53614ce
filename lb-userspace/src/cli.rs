//! Command line: `xdpvs run | check`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// xdpvs: a layer-4 load balancer on XDP (direct routing, Maglev).
#[derive(Parser, Debug)]
#[command(name = "xdpvs", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the load balancer: load and attach XDP, fill the maps, keep them true until
    /// SIGTERM/SIGINT (SIGHUP re-reads the configuration).
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = "/etc/xdpvs/xdpvs.yaml")]
        config: PathBuf,
    },
    /// Validate a configuration file without touching the system. Exit 0 when valid,
    /// 64 with every error listed otherwise.
    Check {
        /// Configuration file.
        #[arg(long, short, default_value = "/etc/xdpvs/xdpvs.yaml")]
        config: PathBuf,
    },
}
