//! `--replicas`: the gateway on PostgreSQL, as 1, 2, 3... replicas in this
//! process, beside the single-node SQLite gateway.
//!
//! Each replica count gets a fresh database (`pg::fresh_database`) and its
//! own configuration file: the testbed's `crossflow.toml` with a
//! `[gateway.store]` table naming that database, so the gateways start from
//! the same settings path an operator's would. The replicas of one count
//! are `server::start` calls on that file (each on 127.0.0.1:0), sharing
//! the testbed's keys and certificates; one of them wins the ledger's
//! leader election and integrates, every one serves every RPC. All of them
//! run for the whole benchmark, idle but for their background tasks
//! (followers poll the latest checkpoint every 250 ms) while another
//! configuration is measured.

use std::net::SocketAddr;

use crossflow_gateway::{server, testbed::Testbed};
use crossflow_settings::Settings;
use crossflow_store::{Database, WriterStats};
use tokio::runtime::Runtime;

use crate::{BoxError, pg};

/// One configuration the gateway scenarios run against.
#[derive(Debug)]
pub struct Deployment {
    pub config: Config,
    pub gateways: Vec<server::Running>,
}

/// What a row of the report ran against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Row-label suffix: empty outside `--replicas` runs, else `sqlite` or
    /// `pg×N`.
    pub label: String,
    pub replicas: usize,
    /// The PostgreSQL database, for PostgreSQL configurations.
    pub database: Option<String>,
    /// HTTP/2 connections per partner certificate (a multiple of
    /// `replicas`, so each replica gets as many).
    pub connections: usize,
}

// === impl Config ===

impl Config {
    pub fn is_sqlite_in_replica_run(&self) -> bool {
        self.database.is_none() && !self.label.is_empty()
    }
}

// === impl Deployment ===

impl Deployment {
    /// The testbed's SQLite gateway; `labelled` in a `--replicas` run.
    pub fn sqlite(gateway: server::Running, connections: usize, labelled: bool) -> Deployment {
        Deployment {
            config: Config {
                label: if labelled {
                    "sqlite".into()
                } else {
                    String::new()
                },
                replicas: 1,
                database: None,
                connections,
            },
            gateways: vec![gateway],
        }
    }

    /// `replicas` gateways of `bed` on a fresh PostgreSQL database.
    pub fn postgres(
        bed: &Testbed,
        admin_url: &str,
        replicas: usize,
        connections: usize,
        rt: &Runtime,
    ) -> Result<Deployment, BoxError> {
        let url = pg::fresh_database(admin_url, &format!("r{replicas}"))?;
        let settings = settings_on(bed, &url, replicas)?;
        let loopback: SocketAddr = "127.0.0.1:0".parse()?;
        let mut gateways = Vec::with_capacity(replicas);
        for _ in 0..replicas {
            gateways.push(rt.block_on(server::start(settings.clone(), Some(loopback)))?);
        }
        Ok(Deployment {
            config: Config {
                label: format!("pg×{replicas}"),
                replicas,
                database: Some(pg::database(&url)),
                connections: connections.div_ceil(replicas) * replicas,
            },
            gateways,
        })
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().map(|g| g.addr).collect()
    }

    /// The writers' statistics, summed over the replicas.
    pub fn stats(&self) -> WriterStats {
        let mut sum = WriterStats::default();
        for g in &self.gateways {
            let s = Database::stats(&g.store);
            sum.commits += s.commits;
            sum.writes += s.writes;
            sum.syncs += s.syncs;
            sum.checkpoints += s.checkpoints;
            sum.writer_checkpoints += s.writer_checkpoints;
        }
        sum
    }

    pub fn shutdown(self, rt: &Runtime) -> Result<(), BoxError> {
        for g in self.gateways {
            rt.block_on(g.shutdown())?;
        }
        Ok(())
    }
}

/// The testbed's settings with `[gateway.store]` on PostgreSQL at `url`,
/// written to a file of their own beside `crossflow.toml` and loaded from
/// it (as `crossflow serve --config` would).
fn settings_on(bed: &Testbed, url: &str, replicas: usize) -> Result<Settings, BoxError> {
    let text = std::fs::read_to_string(bed.config_path())?;
    // The testbed's file is its `[gateway]` section, then `[gateway.tls]`,
    // then the partners: the store's table goes right before the TLS one.
    let table =
        format!("[gateway.store]\nbackend = \"postgres\"\nurl = \"{url}\"\n\n[gateway.tls]");
    if !text.contains("\n[gateway.tls]") {
        return Err("the testbed's crossflow.toml has no [gateway.tls] table".into());
    }
    let text = text.replacen("[gateway.tls]", &table, 1);
    let path = bed.dir.join(format!("crossflow-pg{replicas}.toml"));
    std::fs::write(&path, text)?;
    Ok(Settings::load(&path)?)
}
