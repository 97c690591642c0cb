//! `ordctl`: parses the command line, sets up logging, runs one subcommand,
//! prints the error chain once and exits with the code the SPEC gives
//! (0 success, 1 operational failure, 2 invalid input).

mod commands;
mod output;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{error::ErrorKind, Parser};
use ordctl::config::{Settings, SettingsArgs};
use ordctl::error::invalid_input;
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

    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    if let Err(error) = load_dotenv() {
        eprintln!("error: {error}");
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
            eprintln!(
                "{}",
                rendered
                    .lines()
                    .next()
                    .unwrap_or("error: invalid arguments")
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let settings = match Settings::parse(&cli.settings) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
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
        Err(error) => match invalid_input(&error) {
            Some(invalid) => {
                eprintln!("error: {invalid}");
                ExitCode::from(2)
            }
            None => {
                // One line, even when a cause (libpq's, say) spans several.
                let chain = format!("{error:#}");
                eprintln!("error: {}", chain.split_whitespace().collect::<Vec<_>>().join(" "));
                ExitCode::from(1)
            }
        },
    }
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
            eprintln!("second signal: exiting now");
            std::process::exit(130);
        }
        tracing::info!("stopping: finishing in-flight work (signal again to exit now)");
        shutdown.trigger();
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
