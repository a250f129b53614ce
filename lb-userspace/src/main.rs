//! The `xdpvs` binary: parses the command line and dispatches; the work is in the library.

use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;
use xdpvs::{
    cli::{Cli, Command, LogFormat, RealCommand, RealserverCommand},
    config, control, convert, daemon,
    instance::Instance,
    realserver,
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

/// Sends one request. Returns: the response if the daemon said ok; prints the error
/// and gives the exit code otherwise.
fn ask(socket: &std::path::Path, req: &control::Request) -> Result<control::Response, ExitCode> {
    match control::client::request(socket, req) {
        Ok(r) if r.ok => Ok(r),
        Ok(r) => {
            eprintln!("xdpvs: {}", r.message.unwrap_or_default());
            Err(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("xdpvs: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn status(socket: &std::path::Path, stats: bool, rate: bool, json: bool) -> ExitCode {
    let get = || ask(socket, &control::Request::Status).map(|r| r.status);
    let first = match get() {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!("xdpvs: the daemon sent no status");
            return ExitCode::FAILURE;
        }
        Err(c) => return c,
    };
    if json {
        match serde_json::to_string_pretty(&first) {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("xdpvs: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    if rate {
        let start = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_secs(1));
        let second = match get() {
            Ok(Some(s)) => s,
            Ok(None) => return ExitCode::FAILURE,
            Err(c) => return c,
        };
        let secs = start.elapsed().as_secs_f64();
        print!(
            "{}",
            control::render::render(&second, stats, Some((&first, secs)))
        );
    } else {
        print!("{}", control::render::render(&first, stats, None));
    }
    ExitCode::SUCCESS
}

/// Returns: the configuration at `path`, or the exit code after printing its errors.
fn load_config(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    config::load(path, &config::Host).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(EX_USAGE)
    })
}

/// The instance `xdpvs status|withdraw|announce` talk about: the configuration's, or
/// the default instance answering on `socket`.
fn instance_of(
    config: Option<&std::path::Path>,
    socket: &std::path::Path,
) -> Result<(Instance, Option<config::Config>), ExitCode> {
    match config.map(load_config).transpose()? {
        Some(c) => Ok((Instance::of(&c), Some(c))),
        None => Ok((
            Instance::named(
                config::DEFAULT_INSTANCE,
                std::path::Path::new(config::DEFAULT_PIN_PATH),
                socket,
            ),
            None,
        )),
    }
}

/// `xdpvs withdraw`: asks the daemon, or removes the routes itself when none runs.
fn withdraw(instance: &Instance, config: Option<&config::Config>) -> ExitCode {
    if instance.daemon_running() {
        return match ask(&instance.socket, &control::Request::Withdraw) {
            Ok(r) => {
                println!("{}", r.message.unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(c) => c,
        };
    }
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let table = config.and_then(|c| c.announce).map(|a| a.table);
    match rt.block_on(instance.withdraw_routes(table)) {
        Ok(Some((table, vips))) => {
            println!(
                "no daemon answers on {}: removed the routes of {} VIPs from table {table}",
                instance.socket.display(),
                vips.len()
            );
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!(
                "no daemon answers on {} and no announce table is known: nothing is announced",
                instance.socket.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xdpvs withdraw: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `xdpvs announce`: asks the daemon, or clears the mark for the next one.
fn announce(instance: &Instance) -> ExitCode {
    if instance.daemon_running() {
        return match ask(&instance.socket, &control::Request::Announce) {
            Ok(r) => {
                println!("{}", r.message.unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(c) => c,
        };
    }
    match instance.set_withdrawn(false) {
        Ok(()) => {
            println!(
                "no daemon answers on {}: the next one announces (instance `{}` is no longer withdrawn)",
                instance.socket.display(),
                instance.name
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xdpvs announce: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `xdpvs teardown`: prints what it removed.
fn teardown(instance: &Instance) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(instance.teardown()) {
        Ok(removed) if removed.is_empty() => {
            println!("instance `{}`: nothing to remove", instance.name);
            ExitCode::SUCCESS
        }
        Ok(removed) => {
            for what in removed {
                println!("removed {what}");
            }
            println!("instance `{}` torn down", instance.name);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xdpvs teardown: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `xdpvs convert`: the YAML on stdout, warnings and info on stderr.
fn convert(
    format: convert::Format,
    file: &std::path::Path,
    options: &convert::Options,
) -> ExitCode {
    match convert::convert(format, file, options) {
        Ok(out) => {
            for f in out
                .findings
                .iter()
                .filter(|f| f.level != convert::Level::Note)
            {
                eprintln!("xdpvs convert: {f}");
            }
            print!("{}", out.yaml);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xdpvs convert: {e}");
            ExitCode::from(EX_USAGE)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Status {
            stats,
            rate,
            json,
            socket,
            config,
        } => {
            let instance = match instance_of(config.as_deref(), &socket) {
                Ok((i, _)) => i,
                Err(code) => return code,
            };
            if !instance.daemon_running() {
                if let Some(message) = instance.unattended() {
                    eprintln!("xdpvs: {message}");
                    return ExitCode::FAILURE;
                }
            }
            status(&instance.socket, stats, rate, json)
        }
        Command::Teardown {
            config,
            instance,
            pin_path,
        } => {
            let instance = match (config, instance) {
                (Some(path), _) => match load_config(&path) {
                    Ok(c) => Instance::of(&c),
                    Err(code) => return code,
                },
                (None, name) => Instance::by_name(
                    name.as_deref().unwrap_or(config::DEFAULT_INSTANCE),
                    pin_path.as_deref(),
                ),
            };
            teardown(&instance)
        }
        Command::Ready { socket, quiet } => {
            match control::client::request(&socket, &control::Request::Ready) {
                Ok(r) => {
                    if !quiet {
                        println!("{}", r.message.unwrap_or_default());
                    }
                    if r.ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    if !quiet {
                        println!("not ready: {e}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Command::Withdraw { socket, config } => match instance_of(config.as_deref(), &socket) {
            Ok((instance, config)) => withdraw(&instance, config.as_ref()),
            Err(code) => code,
        },
        Command::Announce { socket, config } => match instance_of(config.as_deref(), &socket) {
            Ok((instance, _)) => announce(&instance),
            Err(code) => code,
        },
        Command::Reload { socket } => match ask(&socket, &control::Request::Reload) {
            Ok(r) => {
                println!("{}", r.message.unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(c) => c,
        },
        Command::Real { command, socket } => {
            let (vs, real, action) = match command {
                RealCommand::Disable { vs, real } => (vs, real, control::RealAction::Disable),
                RealCommand::Enable { vs, real } => (vs, real, control::RealAction::Enable),
                RealCommand::Weight { vs, real, weight } => {
                    (vs, real, control::RealAction::Weight(weight))
                }
            };
            match ask(&socket, &control::Request::Real { vs, real, action }) {
                Ok(r) => {
                    println!("{}", r.message.unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(c) => c,
            }
        }
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
                RealserverCommand::Setup {
                    vips,
                    method,
                    interface,
                    apply,
                    undo,
                    state,
                },
        } => {
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            use realserver::setup;
            let iface = interface.as_deref();
            let r = if undo {
                rt.block_on(setup::undo(&state))
            } else if apply {
                rt.block_on(setup::apply(&vips, method, iface, &state))
            } else {
                rt.block_on(setup::print(&vips, method, iface))
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xdpvs realserver setup: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
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
                rt.block_on(realserver::decap(&interface, &vips, xdp_mode.into()))
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("xdpvs realserver decap failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Convert {
            from,
            file,
            interfaces,
            tunnel_sources,
        } => {
            let options = convert::Options {
                interfaces,
                tunnel_sources,
            };
            convert(from.into(), &file, &options)
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
