//! Command line: `xdpvs run | check | status | teardown | ready | withdraw | announce |
//! reload | real | realserver setup|decap | convert`.

use std::{net::IpAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{config::XdpMode, convert::Format, realserver::setup::SetupMethod};

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
    /// Show virtual servers and their reals, as `ipvsadm -L -n` does (from the running
    /// daemon, through its control socket).
    Status {
        /// Add packets, bytes and new connections per virtual server and real.
        #[arg(long)]
        stats: bool,
        /// Show per-second rates, measured over one second.
        #[arg(long)]
        rate: bool,
        /// Print the status as JSON (every figure, for scripts).
        #[arg(long)]
        json: bool,
        /// The daemon's control socket.
        #[arg(long, default_value = crate::config::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The daemon's configuration file: its control socket, and where to look for
        /// a data path left forwarding when no daemon answers.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Take an instance off the host: its XDP programs, pinned maps, the VIPs its
    /// daemons added, its state file. What an operator runs to really stop the
    /// balancer (a stopped daemon leaves the data path forwarding). Refuses while the
    /// daemon runs.
    Teardown {
        /// The instance's configuration file (its instance, pin_path and socket).
        #[arg(long, short, conflicts_with = "instance")]
        config: Option<PathBuf>,
        /// The instance, when no configuration file is at hand.
        #[arg(long)]
        instance: Option<String>,
        /// Where the instance is pinned (with --instance).
        #[arg(long, requires = "instance")]
        pin_path: Option<PathBuf>,
    },
    /// Exit 0 only while this node should take traffic: the daemon answers and every
    /// virtual server has at least its `min_healthy` real servers in its table. For
    /// keepalived's `vrrp_script` and anything else that decides whether traffic comes
    /// here; cheap and without side effects. Prints why not.
    Ready {
        /// The daemon's control socket.
        #[arg(long, default_value = crate::config::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print nothing (the exit status says it).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Take this node out: it announces no VIP to the routing layer (config `announce`)
    /// and `xdpvs ready` fails, so keepalived moves the VIPs away; kept across daemon
    /// restarts until `xdpvs announce`. With no daemon running, removes the announcing
    /// routes it left (for systemd's ExecStopPost after a crash).
    Withdraw {
        /// The daemon's control socket.
        #[arg(long, default_value = crate::config::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The daemon's configuration file (its socket, instance and announce table).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Put a withdrawn node back: VIPs whose virtual servers have their `min_healthy`
    /// real servers are announced again, and `xdpvs ready` answers as before.
    Announce {
        /// The daemon's control socket.
        #[arg(long, default_value = crate::config::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The daemon's configuration file (its socket and instance).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Make the daemon re-read its configuration (as SIGHUP) and report the outcome.
    Reload {
        /// The daemon's control socket.
        #[arg(long, default_value = crate::config::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Runtime maintenance of one real: drain it, put it back, or change its weight.
    /// Overrides last until undone, until the file changes that real's weight, or
    /// until the daemon restarts.
    Real {
        #[command(subcommand)]
        command: RealCommand,
        /// The daemon's control socket.
        #[arg(long, global = true, default_value = crate::config::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Helpers for the real servers behind xdpvs.
    Realserver {
        #[command(subcommand)]
        command: RealserverCommand,
    },
    /// Print an xdpvs configuration converted from keepalived.conf or from the output
    /// of `ipvsadm-save -n`; what has no equivalent becomes a comment in the output and
    /// a warning on stderr (docs/migration.md).
    Convert {
        /// The input's format.
        #[arg(long, value_enum)]
        from: FromFormat,
        /// The input file; `-` reads standard input.
        file: PathBuf,
        /// An interface traffic for the VIPs arrives on (repeat for several); without
        /// one, a placeholder the output says to change.
        #[arg(long = "interface", short)]
        interfaces: Vec<String>,
        /// This balancer's address, the outer source of tunnelled packets (at most one
        /// per family); without one, a tunnel virtual server gets a placeholder.
        #[arg(long = "tunnel-source")]
        tunnel_sources: Vec<IpAddr>,
    },
}

/// `convert --from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FromFormat {
    /// keepalived.conf: its virtual_server blocks (VRRP stays with keepalived).
    Keepalived,
    /// The output of `ipvsadm-save -n` (`ipvsadm -S -n`).
    Ipvsadm,
}

impl From<FromFormat> for Format {
    fn from(f: FromFormat) -> Self {
        match f {
            FromFormat::Keepalived => Format::Keepalived,
            FromFormat::Ipvsadm => Format::Ipvsadm,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum RealCommand {
    /// Take a real out of its virtual server's table: no new connections, established
    /// ones continue (drain).
    Disable {
        /// Virtual server name.
        vs: String,
        /// The real: ADDRESS or ADDRESS:PORT ([v6]:port).
        real: String,
    },
    /// Put a disabled real back.
    Enable { vs: String, real: String },
    /// Use weight N for a real instead of the file's (0 drains).
    Weight {
        vs: String,
        real: String,
        weight: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum RealserverCommand {
    /// Print (default), apply or undo what this host needs to be a real server for
    /// direct routing or tunnelling: the VIPs on loopback, no ARP answers for them
    /// (arp_ignore=1, arp_announce=2), loose rp_filter and the decapsulator for tunnels.
    Setup {
        /// A VIP this real serves (repeat for several).
        #[arg(long = "vip", required_unless_present = "undo")]
        vips: Vec<IpAddr>,
        /// The virtual servers' forwarding method.
        #[arg(long, value_enum, default_value_t = SetupMethod::Dr)]
        method: SetupMethod,
        /// Tunnel: the interface tunnelled packets arrive on.
        #[arg(long, short)]
        interface: Option<String>,
        /// Make the changes (recorded in --state for --undo).
        #[arg(long, conflicts_with = "undo")]
        apply: bool,
        /// Revert what --apply changed.
        #[arg(long)]
        undo: bool,
        /// Where --apply records its changes.
        #[arg(long, default_value = crate::realserver::setup::DEFAULT_STATE)]
        state: PathBuf,
    },
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
        #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
        xdp_mode: XdpModeArg,
        /// Remove a decapsulator left attached to the interface, then exit.
        #[arg(long)]
        detach: bool,
    },
}

/// `--xdp-mode`: the command line's spelling of [`XdpMode`], so that the configuration
/// model does not depend on clap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    /// Native (driver) mode where the driver supports it, generic (SKB) mode otherwise.
    Auto,
    /// Driver mode only; fail if the driver lacks XDP.
    Native,
    /// Generic mode: works on any interface, slower.
    Generic,
}

impl From<XdpModeArg> for XdpMode {
    fn from(m: XdpModeArg) -> Self {
        match m {
            XdpModeArg::Auto => XdpMode::Auto,
            XdpModeArg::Native => XdpMode::Native,
            XdpModeArg::Generic => XdpMode::Generic,
        }
    }
}
