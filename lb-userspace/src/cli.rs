//! Command line: `xdpvs run | check | realserver decap`.

use std::{net::IpAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::XdpMode;

/// xdpvs: a layer-4 load balancer on XDP (direct routing, NAT, IP tunnelling; Maglev).
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
    /// Helpers for the real servers behind xdpvs.
    Realserver {
        #[command(subcommand)]
        command: RealserverCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum RealserverCommand {
    /// Unwrap tunnelled (IPIP / IPv6-in-IPv6) packets for the given VIPs in XDP and pass
    /// them up the stack, for the tunnel method. Runs until SIGTERM/SIGINT, then detaches.
    /// The VIPs must also be on a local interface (e.g. `ip addr add VIP/32 dev lo`).
    Decap {
        /// Interface the tunnelled packets arrive on.
        #[arg(long, short)]
        interface: String,
        /// A VIP whose tunnelled packets are unwrapped (repeat for several).
        #[arg(long = "vip", required_unless_present = "detach")]
        vips: Vec<IpAddr>,
        /// XDP attach mode.
        #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
        xdp_mode: XdpMode,
        /// Remove a decapsulator left attached to the interface, then exit.
        #[arg(long)]
        detach: bool,
    },
}
