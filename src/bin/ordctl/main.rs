//! `ordctl`: parses the command line, sets up logging, runs one subcommand,
//! prints the error chain once and exits with the code the README lists
//! (0 success, 1 operational failure, 2 invalid input, 3 refused).

mod bench;
mod commands;
mod flags;
mod output;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{error::ErrorKind, Parser};
use ordctl::config::{Settings, SettingsArgs};
use ordctl::error::{invalid_input, not_found, refused};
use ordctl::shutdown::Shutdown;

#[derive(Parser)]
#[command(
    name = "ordctl",
    version,
    about = "Run and observe the order → email pipeline",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,

    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,

    /// More log detail on stderr: -v debug, -vv trace (RUST_LOG wins when set).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Less log detail on stderr: -q warnings and errors, -qq errors only.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    quiet: u8,

    /// Log format on stderr: json is one object per line, for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    // OpenSSL (libpq's TLS, native-tls) set up before anything uses it, and
    // without its clean-up at exit: a command that ends early (bad input)
    // may exit while the connection pool's thread is still opening a
    // PostgreSQL connection, and OpenSSL torn down under that handshake
    // crashed the process (SIGSEGV instead of the command's exit code).
    openssl_sys::init();
    if let Err(error) = load_dotenv() {
        say(format_args!("error: {error}"));
        return ExitCode::from(2);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            error.exit()
        }
        Err(error) => {
            // One line: what was wrong. `--help` has the rest.
            let rendered = error.render().to_string();
            say(rendered
                .lines()
                .next()
                .unwrap_or("error: invalid arguments"));
            return ExitCode::from(2);
        }
    };
    init_logging(cli.verbose, cli.quiet, cli.log_format);
    let settings = match Settings::parse(&cli.settings) {
        Ok(settings) => settings,
        Err(error) => {
            say(format_args!("error: {error}"));
            return ExitCode::from(2);
        }
    };
    let ctx = commands::Ctx {
        settings,
        json: cli.json,
    };
    match run(cli.command, ctx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if output::is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => match (invalid_input(&error), not_found(&error), refused(&error)) {
            (Some(invalid), _, _) => {
                say(format_args!("error: {invalid}"));
                ExitCode::from(2)
            }
            (None, Some(missing), _) => {
                say(format_args!("error: {missing}"));
                ExitCode::from(2)
            }
            (None, None, Some(refused)) => {
                say(format_args!("error: {refused}"));
                ExitCode::from(3)
            }
            (None, None, None) => {
                // One line, even when a cause (libpq's, say) spans several.
                let chain = format!("{error:#}");
                say(format_args!(
                    "error: {}",
                    chain.split_whitespace().collect::<Vec<_>>().join(" ")
                ));
                ExitCode::from(1)
            }
        },
    }
}

/// Writes one line to stderr. A stderr nobody reads any more (`… 2>&1 |
/// head`) must not turn the command's exit code into a panic's, as
/// `eprintln!` would.
fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Long-running subcommands stop gracefully on SIGINT/SIGTERM (a second
/// signal exits at once); the others keep the default, immediate exit.
fn run(command: commands::Command, ctx: commands::Ctx) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    if !command.stops_gracefully() {
        return command.run(&ctx, &shutdown);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::spawn(stop_on_signals(shutdown.clone()));
        tokio::task::spawn_blocking(move || command.run(&ctx, &shutdown)).await?
    })
}

async fn stop_on_signals(shutdown: Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot install signal handlers");
        return;
    };
    for round in 0.. {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        if round > 0 {
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        }
        shutdown.trigger();
        tracing::info!("stopping: finishing in-flight work (signal again to exit now)");
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr. The level comes from `RUST_LOG` when it is set, else
/// from -v/-q around `info`.
fn init_logging(verbose: u8, quiet: u8, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let level = match i16::from(verbose) - i16::from(quiet) {
        i16::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            say(format_args!("warning: ignoring RUST_LOG={spec:?}: {e}"));
            EnvFilter::new(level)
        }),
        _ => EnvFilter::new(level),
    };
    // Never log secrets, whatever the level: amiquip's handshake (debug)
    // carries the AMQP password, ureq's requests (debug) an Authorization
    // header.
    // amiquip also warns of every channel the server closes, which a
    // passive declare of a missing queue does by design; the errors that
    // matter reach us through its return values.
    let filter = [
        "amiquip::io_loop::handshake_state=warn",
        "amiquip::io_loop::connection_state=error",
        "ureq=warn",
    ]
    .into_iter()
    .fold(filter, |filter, directive| {
        filter.add_directive(directive.parse().expect("a valid directive"))
    });
    // A line that cannot be written (stderr a pipe nobody reads any
    // more, a full disk) is dropped. By default the subscriber reports it
    // with eprintln!, which panics on the same broken stderr and took down
    // whichever thread logged: a worker's consumers, its idle timer, its
    // signal handler, leaving a process that neither worked nor exited.
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// Reads `.env` from the working directory; real environment variables
/// win over it, flags over both.
fn load_dotenv() -> anyhow::Result<()> {
    match dotenvy::from_path(".env") {
        Ok(()) => Ok(()),
        Err(dotenvy::Error::Io(error)) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(anyhow::anyhow!("reading .env: {error}")),
    }
}
