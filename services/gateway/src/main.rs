//! `crossflow`: the command line. Parses arguments and calls into the crates.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use crossflow_gateway::{
    demo, server,
    telemetry::{self, Telemetry},
};
use crossflow_identity::{KeyRing, generate_dev};
use crossflow_ledger::cli::StoreAt;
use crossflow_settings::{Settings, StoreBackend};

mod copy;

/// mimalloc rather than glibc's malloc: buffers allocated on one thread are
/// freed on another (runtime workers, the store writer), which glibc serves
/// with arena locks and consolidation. The benchmark uses the same
/// allocator; docs/BENCHMARKS.md has the measured difference.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// crossflow: a gRPC federation gateway for live-streaming commerce platforms
/// that exchange traffic.
#[derive(Debug, Parser)]
#[command(
    name = "crossflow",
    version,
    about = "crossflow: a gRPC federation gateway for live-streaming commerce platforms that exchange traffic"
)]
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
    /// Conversion tools.
    Conversions {
        #[command(subcommand)]
        command: ConversionsCommand,
    },
    /// Verify ledger checkpoints and receipts offline; exit non-zero with the
    /// reason if they do not verify.
    Verify {
        #[command(subcommand)]
        command: VerifyCommand,
    },
    /// Ledger tools.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Audit tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Store tools.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Copy a federation's embedded SQLite store into an empty PostgreSQL
    /// database, with the gateway stopped: every table with every value as
    /// it is, in one transaction that commits only once the copy verifies
    /// (row counts, ledger fsck, the latest checkpoint, and a consistency
    /// proof from the last SQLite checkpoint). Then serve with --to.
    Copy {
        /// The config of the SQLite store (`[gateway.store]` sqlite, the
        /// default); its gateway must be stopped.
        #[arg(long, value_name = "CONFIG_SQLITE")]
        from: PathBuf,
        /// The config of the PostgreSQL store (`[gateway.store]` postgres);
        /// its database must be empty.
        #[arg(long, value_name = "CONFIG_POSTGRES")]
        to: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Print every tag disclosure about one partner's users since T as RFC
    /// 4180 CSV (no subjects: users are uids). Reads the store read-only, so
    /// it works while the gateway serves.
    Disclosures {
        /// The platform that owns the users (its DPO's view).
        #[arg(long, value_name = "ID")]
        partner: String,
        /// RFC 3339 time, or a date meaning its midnight in gateway.timezone.
        #[arg(long, value_name = "T")]
        since: String,
        /// Only disclosures to this reading partner.
        #[arg(long, value_name = "ID")]
        reader: Option<String>,
        /// Only disclosures about this user (the partner's own user id; it is
        /// turned into the uid with the key directory and never printed).
        #[arg(long, value_name = "SUBJECT")]
        subject: Option<String>,
        #[arg(long, value_name = "FILE", default_value = "config/crossflow.toml")]
        config: PathBuf,
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
enum VerifyCommand {
    /// Check a signed checkpoint note against the log's verifier key.
    Checkpoint {
        /// Verifier key text (`name+keyid+base64`, from GetLogKey) or a file
        /// holding it.
        #[arg(long)]
        vkey: String,
        /// The signed note.
        file: PathBuf,
    },
    /// Check that an entry is in the log: a c2sp.org/tlog-proof@v1 receipt
    /// and its checkpoint's signature.
    Receipt {
        /// Verifier key text or a file holding it.
        #[arg(long)]
        vkey: String,
        /// The entry's bytes, verbatim.
        #[arg(long)]
        entry: PathBuf,
        /// Require this checkpoint origin (e.g. `crossflow.example/ledger`).
        #[arg(long)]
        origin: Option<String>,
        /// The receipt text.
        receipt: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Recompute the tree from the stored entries and check every stored
    /// node and signed checkpoint against it. Read-only; safe while the
    /// gateway runs.
    Fsck {
        #[arg(long)]
        config: PathBuf,
    },
    /// Close a settlement period (a calendar month in gateway.timezone) once
    /// it has ended: records the newest checkpoint signed before its end as
    /// its anchor. Never signs; safe while the gateway runs.
    Close {
        /// The month, YYYY-MM.
        #[arg(long)]
        period: String,
        #[arg(long, value_name = "FILE", default_value = "config/crossflow.toml")]
        config: PathBuf,
    },
    /// Write a closed period's export (entries, statement, settlement,
    /// anchor, proofs) for the federation or one partner. Read-only.
    Export {
        #[arg(long)]
        period: String,
        /// Only the entries this partner is a party to.
        #[arg(long, value_name = "ID")]
        partner: Option<String>,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, value_name = "FILE", default_value = "config/crossflow.toml")]
        config: PathBuf,
    },
    /// Verify an export offline against the log's verifier key; names the
    /// first failing file and line.
    Verify {
        dir: PathBuf,
        /// The verifier key, as text or a file holding it.
        #[arg(long)]
        vkey: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConversionsCommand {
    /// Lift the fraud hold of a conversion so its postings count for
    /// settlement. Opens the store directly: run it with the gateway stopped
    /// (while it runs, an operator calls ReleaseConversion instead).
    Release {
        /// The conversion id (32 hex characters, `conversion_id` in the
        /// API and in ledger entries).
        id: String,
        #[arg(long)]
        config: PathBuf,
        /// Why it is released; recorded in the ledger entry.
        #[arg(long, default_value = "")]
        note: String,
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
    crossflow_gateway::allocator::disable_transparent_huge_pages();
    let cli = Cli::parse();
    // `serve` sets up its logs itself, with its OpenTelemetry exporter.
    if !matches!(cli.command, Command::Serve { .. }) {
        init_logs(cli.log_format, matches!(cli.command, Command::Demo { .. }));
    }
    match run(cli.command, cli.log_format) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat, quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    Telemetry::default().init_logs(format.into(), default);
}

impl From<LogFormat> for telemetry::LogFormat {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Text => telemetry::LogFormat::Text,
            LogFormat::Json => telemetry::LogFormat::Json,
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))
}

fn run(command: Command, log_format: LogFormat) -> Result<(), String> {
    match command {
        Command::Serve { config } => {
            let settings = Settings::load(&config).map_err(|e| e.to_string())?;
            runtime()?.block_on(async {
                // Exporters first (they need the runtime), then the logs
                // that feed spans to them, then the server.
                let telemetry = Telemetry::start(&settings.telemetry).map_err(|e| e.to_string())?;
                telemetry.init_logs(log_format.into(), "info");
                let served = match server::start(settings, None).await {
                    Err(e) => Err(e.to_string()),
                    Ok(running) => running
                        .run_until(shutdown_signal())
                        .await
                        .map_err(|e| e.to_string()),
                };
                let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
                served
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
        Command::Conversions {
            command: ConversionsCommand::Release { id, config, note },
        } => release_conversion(&id, &config, &note),
        Command::Audit {
            command:
                AuditCommand::Disclosures {
                    partner,
                    since,
                    reader,
                    subject,
                    config,
                },
        } => {
            let req = crossflow_tags::audit::Request {
                partner,
                since,
                reader,
                subject,
            };
            print!("{}", crossflow_tags::audit::run(&config, &req)?);
            Ok(())
        }
        Command::Verify {
            command: VerifyCommand::Checkpoint { vkey, file },
        } => {
            println!(
                "{}",
                crossflow_ledger::cli::verify_checkpoint(&vkey, &file)?
            );
            Ok(())
        }
        Command::Verify {
            command:
                VerifyCommand::Receipt {
                    vkey,
                    entry,
                    origin,
                    receipt,
                },
        } => {
            let ok = crossflow_ledger::cli::verify_receipt_files(
                &vkey,
                &entry,
                &receipt,
                origin.as_deref(),
            )?;
            println!("{ok}");
            Ok(())
        }
        Command::Ledger {
            command: LedgerCommand::Fsck { config },
        } => ledger_fsck(&config),
        Command::Ledger {
            command: LedgerCommand::Close { period, config },
        } => {
            let settings = Settings::load(&config).map_err(|e| e.to_string())?;
            let g = &settings.gateway;
            let now = crossflow_api::clock::now_ms();
            let line =
                crossflow_ledger::cli::close_store(store_at(&settings), &period, &g.timezone, now)?;
            println!("{line}");
            Ok(())
        }
        Command::Ledger {
            command:
                LedgerCommand::Export {
                    period,
                    partner,
                    out,
                    config,
                },
        } => {
            let settings = Settings::load(&config).map_err(|e| e.to_string())?;
            let summary = crossflow_ledger::cli::export_store(
                store_at(&settings),
                &period,
                partner.as_deref(),
                &out,
            )?;
            println!("{}", summary.summary());
            Ok(())
        }
        Command::Ledger {
            command: LedgerCommand::Verify { dir, vkey },
        } => match crossflow_ledger::cli::verify_export_dir(&dir, &vkey) {
            Ok(verdict) => {
                println!("{verdict}");
                Ok(())
            }
            // The verdict is the one line on stdout, FAILED or OK; exit 1.
            Err(verdict) => {
                println!("{verdict}");
                std::process::exit(1)
            }
        },
        Command::Store {
            command: StoreCommand::Copy { from, to },
        } => store_copy(&from, &to),
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
            let now = crossflow_api::clock::now_ms();
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

/// Where the ledger commands find the store `[gateway.store]` names.
fn store_at(settings: &Settings) -> StoreAt<'_> {
    match &settings.gateway.store {
        StoreBackend::Sqlite => StoreAt::Sqlite {
            data_dir: &settings.gateway.data_dir,
        },
        StoreBackend::Postgres { url } => StoreAt::Postgres { url },
    }
}

/// The log's verifier key, from the signing key in `gateway.key_dir`.
fn ledger_verifier(g: &crossflow_settings::Gateway) -> Result<crossflow_ledger::Verifier, String> {
    let keys = KeyRing::load(&g.key_dir).map_err(|e| format!("{}: {e}", g.key_dir.display()))?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(keys.ledger_signing_key_pkcs8())
        .map_err(|_| "ledger-ed25519.pk8 is not Ed25519 PKCS#8 v2".to_owned())?;
    let signer =
        crossflow_ledger::Signer::new(keys.ledger_key_name(), pair).map_err(|e| e.to_string())?;
    Ok(signer.verifier())
}

/// `crossflow ledger fsck`: checks signatures with the key in `key_dir`.
fn ledger_fsck(config: &std::path::Path) -> Result<(), String> {
    let settings = Settings::load(config).map_err(|e| e.to_string())?;
    let g = &settings.gateway;
    let verifier = ledger_verifier(g)?;
    let origin = crossflow_ledger::origin(&g.federation);
    let report =
        crossflow_ledger::cli::fsck_store(store_at(&settings), Some(&verifier), Some(&origin))?;
    println!("{}", crossflow_ledger::cli::fsck_summary(&report)?);
    Ok(())
}

/// `crossflow store copy --from CONFIG_SQLITE --to CONFIG_POSTGRES`.
fn store_copy(from: &std::path::Path, to: &std::path::Path) -> Result<(), String> {
    let source = Settings::load(from).map_err(|e| e.to_string())?;
    let target = Settings::load(to).map_err(|e| e.to_string())?;
    if !matches!(source.gateway.store, StoreBackend::Sqlite) {
        return Err(format!(
            "--from {}: [gateway.store] must be the embedded sqlite store",
            from.display()
        ));
    }
    let StoreBackend::Postgres { url } = &target.gateway.store else {
        return Err(format!(
            "--to {}: [gateway.store] must be backend = \"postgres\"",
            to.display()
        ));
    };
    if source.gateway.federation != target.gateway.federation {
        return Err(format!(
            "--from serves federation {:?} and --to {:?}: the log's origin would change",
            source.gateway.federation, target.gateway.federation
        ));
    }
    // The fsck of the copy checks every checkpoint with the key the target
    // will sign with: a --to config with other keys is refused before
    // anything is committed.
    let verifier = ledger_verifier(&target.gateway)?;
    let origin = crossflow_ledger::origin(&target.gateway.federation);
    let plan = copy::Plan {
        data_dir: &source.gateway.data_dir,
        url,
        verifier: &verifier,
        origin: &origin,
    };
    let copied = copy::copy(&plan).map_err(|e| e.to_string())?;
    println!(
        "{}",
        copied.summary(&source.gateway.data_dir.join("crossflow.db"))
    );
    Ok(())
}

/// `crossflow conversions release`: one ledger entry, written offline.
fn release_conversion(id: &str, config: &std::path::Path, note: &str) -> Result<(), String> {
    let settings = Settings::load(config).map_err(|e| e.to_string())?;
    let now = crossflow_api::clock::now_ms();
    let done = runtime()?.block_on(async {
        let store = server::open_store(&settings).await.map_err(|e| match e {
            server::ServeError::Store(crossflow_store::StoreError::Locked(dir)) => format!(
                "{} is in use by a running gateway; stop it, or have an operator call \
                 ConversionService.ReleaseConversion",
                dir.display()
            ),
            other => other.to_string(),
        })?;
        let done = crossflow_conversions::release_with(
            &store,
            now,
            crossflow_conversions::Releaser::Cli,
            id,
            note,
        )
        .await;
        crossflow_store::Database::close(&store);
        done.map_err(|e| e.problem().message)
    })?;
    println!(
        "released conversion {id} (order {} of {}, hold {}): ledger entry {}, leaf hash {}",
        done.conversion.order_id,
        done.conversion.reporter,
        done.conversion.hold_reason,
        done.entry.index,
        hex::encode(done.entry.leaf_hash)
    );
    Ok(())
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
