//! Several gateway replicas of one federation on one PostgreSQL database:
//! in this process ([`Replicas`]) or as `crossflow serve` processes
//! ([`ServeProcess::start`] on [`Replicas::bed_at`]).
//!
//! Each test gets a fresh database on the server `CROSSFLOW_TEST_POSTGRES_URL`
//! names; without one the test is skipped (printed), unless
//! `CROSSFLOW_REQUIRE_SERVICES=1`.

use std::{net::SocketAddr, path::Path};

use crossflow_gateway::{
    server::{self, Running},
    testbed::Testbed,
};
use tonic::transport::Channel;

use crate::{DEFAULT_PARTNERS, FEDERATION, channel_as};

/// `[gateway.store]` for PostgreSQL at `url`.
pub fn postgres_store_toml(url: &str) -> String {
    format!("[gateway.store]\nbackend = \"postgres\"\nurl = \"{url}\"\n")
}

/// A fresh database for test `name`, or `None` (skip).
pub fn database(name: &str) -> Option<String> {
    crossflow_store::testing::fresh_database(name)
}

/// Gateways served in this process, all on one federation directory and
/// one PostgreSQL database.
#[derive(Debug)]
pub struct Replicas {
    bed: Testbed,
    running: Vec<Option<Running>>,
    addrs: Vec<SocketAddr>,
}

impl Replicas {
    /// Lays out the default partners plus `operators`, with `body` after a
    /// `[gateway.store]` naming a fresh database for `name`, and starts `n`
    /// replicas; `None` when there is no test server.
    pub async fn start(name: &str, n: usize, operators: &[&str], body: &str) -> Option<Replicas> {
        let url = database(name)?;
        let bed = Testbed::create(
            None,
            FEDERATION,
            "127.0.0.1:0",
            &DEFAULT_PARTNERS,
            operators,
            &format!("{}\n{body}", postgres_store_toml(&url)),
        )
        .unwrap_or_else(|e| panic!("laying out the federation: {e}"));
        let mut r = Replicas {
            bed,
            running: Vec::new(),
            addrs: Vec::new(),
        };
        for _ in 0..n {
            let running = r.serve().await;
            r.addrs.push(running.addr);
            r.running.push(Some(running));
        }
        Some(r)
    }

    async fn serve(&self) -> Running {
        let settings = self.bed.settings().unwrap_or_else(|e| panic!("{e}"));
        server::start(settings, Some(SocketAddr::from(([127, 0, 0, 1], 0))))
            .await
            .unwrap_or_else(|e| panic!("starting a replica: {e}"))
    }

    pub fn bed(&self) -> &Testbed {
        &self.bed
    }

    /// Where replica `i` listens.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    /// An mTLS channel to replica `i` as `name` (a partner, or
    /// `operator-<name>`).
    pub async fn channel(&self, i: usize, name: &str) -> Channel {
        channel_as(&self.bed, self.addrs[i], name).await
    }

    /// Stops replica `i` cleanly.
    pub async fn shutdown(&mut self, i: usize) {
        if let Some(r) = self.running[i].take() {
            r.shutdown()
                .await
                .unwrap_or_else(|e| panic!("replica shutdown: {e}"));
        }
    }

    /// A testbed handle on the same directory, for `ServeProcess`es.
    pub fn bed_at(dir: &Path) -> Testbed {
        Testbed::at(dir, FEDERATION)
    }
}
