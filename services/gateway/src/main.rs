//! `crossflow`: the command line. Parses arguments and calls into the crates.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use crossflow_gateway::{demo, server};
use crossflow_identity::{KeyRing, generate_dev};
use crossflow_settings::Settings;

/// crossflow: a gRPC federation gateway for live-streaming commerce platforms
/// that exchange traffic.
#[derive(Debug, Parser)]
#[command(name = "crossflow", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gateway described by a config file.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a whole federation in this process and print what happened.
    Demo {
        /// Keep everything the demo made (PKI, keys, config, data) in DIR.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Certificate tools.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Key directory tools.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config file; print every error and exit non-zero if any.
    Check { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Write a development CA, a gateway certificate for 127.0.0.1 and
    /// localhost, and one client certificate per partner and operator.
    Dev {
        #[arg(long)]
        out: PathBuf,
        /// SPIFFE trust domain.
        #[arg(long, default_value = "crossflow.example")]
        federation: String,
        /// Partner ids (repeatable).
        #[arg(long = "partner", value_name = "ID")]
        partners: Vec<String>,
        /// Operator names (repeatable).
        #[arg(long = "operator", value_name = "NAME")]
        operators: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a new key directory.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
    /// Start a new token key and pseudonym epoch; old ones keep working.
    Rotate {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format, matches!(cli.command, Command::Demo { .. }));
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat, quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve { config } => {
            let settings = Settings::load(&config).map_err(|e| e.to_string())?;
            runtime()?.block_on(async {
                let running = server::start(settings, None)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::select! {
                    r = running.wait() => r.map_err(|e| e.to_string()),
                    _ = shutdown_signal() => {
                        tracing::info!("shutting down");
                        Ok(())
                    }
                }
            })
        }
        Command::Demo { keep } => {
            let report = runtime()?
                .block_on(demo::run(keep.as_deref()))
                .map_err(|e| format!("demo failed: {e}"))?;
            println!("{report}");
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let s = Settings::load(&file).map_err(|e| e.to_string())?;
            println!(
                "{}: ok ({} partners, {} agreements)",
                file.display(),
                s.partners.len(),
                s.agreements.len()
            );
            Ok(())
        }
        Command::Pki {
            command:
                PkiCommand::Dev {
                    out,
                    federation,
                    partners,
                    operators,
                },
        } => {
            let pki = generate_dev(&out, &federation, &partners, &operators)
                .map_err(|e| e.to_string())?;
            println!(
                "wrote a dev PKI for {} to {}",
                pki.federation,
                pki.dir.display()
            );
            println!("  ca.crt, gateway.crt/.key (127.0.0.1, localhost)");
            for p in pki.partners.keys() {
                println!("  {p}.crt/.key  spiffe://{federation}/partner/{p}");
            }
            for o in pki.operators.keys() {
                println!("  operator-{o}.crt/.key  spiffe://{federation}/operator/{o}");
            }
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Generate { out },
        } => {
            KeyRing::generate(&out).map_err(|e| e.to_string())?;
            println!("wrote a new key directory to {}", out.display());
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Rotate { dir },
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let r = KeyRing::rotate(&dir, now).map_err(|e| e.to_string())?;
            println!(
                "rotated {}: token key {} -> {}, pseudonym epoch {} -> {}",
                dir.display(),
                r.previous_token_key_id,
                r.token_key_id,
                r.previous_epoch,
                r.epoch
            );
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}
