//! The `xdpvs` binary: parses the command line and dispatches; the work is in the library.

use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;
use xdpvs::{
    cli::{Cli, Command, LogFormat, RealserverCommand},
    config, daemon, realserver,
};

/// EX_USAGE (sysexits.h): the configuration is wrong.
const EX_USAGE: u8 = 64;

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_env("XDPVS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("xdpvs: cannot start the runtime: {e}");
            None
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Check { config } => match config::load(&config, &config::Host) {
            Ok(c) => {
                let reals: usize = c.virtual_servers.iter().map(|v| v.real_servers.len()).sum();
                println!(
                    "{}: OK ({} virtual servers, {reals} real servers)",
                    config.display(),
                    c.virtual_servers.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EX_USAGE)
            }
        },
        Command::Realserver {
            command:
                RealserverCommand::Decap {
                    interface,
                    vips,
                    xdp_mode,
                    detach,
                },
        } => {
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            let r = if detach {
                rt.block_on(realserver::detach(&interface))
            } else {
                rt.block_on(realserver::decap(&interface, &vips, xdp_mode))
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("xdpvs realserver decap failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(daemon::run(&config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(daemon::RunError::Config(e)) => {
                    eprint!("{e}");
                    ExitCode::from(EX_USAGE)
                }
                Err(e) => {
                    tracing::error!("xdpvs failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
