//! The gateways under test: one `crossflow serve` on SQLite, or several
//! replicas of one federation on one PostgreSQL database, each with its own
//! config (the same keys, PKI and database; its own `listen`) and its own
//! log. What the replicas' logs say about the ledger's lead is read here:
//! each life of a replica logs "ledger: this replica leads" when it wins
//! the lead and a line ending in "following" when it loses it.

use std::{
    fs::OpenOptions,
    io::{Read as _, Seek as _, SeekFrom},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crossflow_gateway::testbed::Testbed;
use crossflow_proto::v1::GetLogKeyRequest;

use crate::{BoxError, load::PARTNERS};

/// What a replica logs when it wins the ledger's lead.
const LEADS: &str = "ledger: this replica leads";

/// A running `crossflow serve`.
struct Gateway {
    child: Child,
}

/// One gateway of the fleet, up or killed.
pub struct Replica {
    pub config: PathBuf,
    pub addr: SocketAddr,
    pub log: PathBuf,
    gateway: Option<Gateway>,
    /// Where this life's lines start in `log`.
    log_from: u64,
}

/// Every gateway of the run.
pub struct Fleet {
    bin: PathBuf,
    /// Replicas on PostgreSQL (logs without colours, read for the lead).
    shared: bool,
    pub replicas: Vec<Replica>,
}

// === impl Gateway ===

impl Gateway {
    /// Starts `bin serve --config config` and waits until it answers over
    /// mTLS.
    async fn start(
        bin: &Path,
        bed: &Testbed,
        config: &Path,
        log_path: &Path,
        addr: SocketAddr,
        shared: bool,
    ) -> Result<Gateway, BoxError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if shared {
            // The lead is read from the log at the default level.
            cmd.env_remove("RUST_LOG").env("NO_COLOR", "1");
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut gw = Gateway { child };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = gw.child.try_wait()? {
                return Err(format!(
                    "crossflow serve exited with {status} (see {})",
                    log_path.display()
                )
                .into());
            }
            if let Ok(ch) = bed.channel(addr, PARTNERS[0]).await {
                let mut l =
                    crossflow_proto::v1::ledger_service_client::LedgerServiceClient::new(ch);
                if l.get_log_key(GetLogKeyRequest {}).await.is_ok() {
                    return Ok(gw);
                }
            }
            if Instant::now() > deadline {
                gw.kill()?;
                return Err("crossflow serve did not answer within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix) and reap.
    fn kill(&mut self) -> Result<(), BoxError> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Gateway {
    /// A run that stops on an error leaves no gateway behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// === impl Fleet ===

impl Fleet {
    /// Replica 0 serves `bed`'s own config (`crossflow.toml`, log
    /// `serve.log`); replica i > 0 a copy `crossflow-<i>.toml` that listens
    /// on `addrs[i]` (log `serve-<i>.log`). Nothing is started yet.
    pub fn lay_out(bin: &Path, bed: &Testbed, addrs: &[SocketAddr]) -> Result<Fleet, BoxError> {
        let first = bed.config_path();
        let text = std::fs::read_to_string(&first)?;
        let mut replicas = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let (config, log) = if i == 0 {
                (first.clone(), bed.dir.join("serve.log"))
            } else {
                let config = bed.dir.join(format!("crossflow-{i}.toml"));
                let listen = |a: &SocketAddr| format!("listen = \"{a}\"");
                let own = text.replacen(&listen(&addrs[0]), &listen(addr), 1);
                if own == text {
                    return Err(format!("no `{}` in {}", listen(&addrs[0]), first.display()).into());
                }
                std::fs::write(&config, own)?;
                (config, bed.dir.join(format!("serve-{i}.log")))
            };
            replicas.push(Replica {
                config,
                addr: *addr,
                log,
                gateway: None,
                log_from: 0,
            });
        }
        Ok(Fleet {
            bin: bin.to_path_buf(),
            shared: addrs.len() > 1,
            replicas,
        })
    }

    /// How many replicas.
    pub fn count(&self) -> usize {
        self.replicas.len()
    }

    /// Starts replica `i` (again) and waits until it answers.
    pub async fn start(&mut self, i: usize, bed: &Testbed) -> Result<(), BoxError> {
        let r = self
            .replicas
            .get_mut(i)
            .ok_or_else(|| format!("no replica {i}"))?;
        r.log_from = std::fs::metadata(&r.log).map_or(0, |m| m.len());
        let gw = Gateway::start(&self.bin, bed, &r.config, &r.log, r.addr, self.shared).await?;
        r.gateway = Some(gw);
        Ok(())
    }

    /// SIGKILLs replica `i`.
    pub fn kill(&mut self, i: usize) -> Result<(), BoxError> {
        if let Some(mut gw) = self.replicas.get_mut(i).and_then(|r| r.gateway.take()) {
            gw.kill()?;
        }
        Ok(())
    }

    /// SIGKILLs every replica up.
    pub fn kill_all(&mut self) -> Result<(), BoxError> {
        for i in 0..self.replicas.len() {
            self.kill(i)?;
        }
        Ok(())
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.replicas.get(i).is_some_and(|r| r.gateway.is_some())
    }

    /// The replicas up whose log (this life) says they lead now: the last
    /// lead line is "this replica leads", not a "following" one.
    pub fn leaders(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|i| self.is_up(*i) && self.lead_lines(*i).1)
            .collect()
    }

    /// How many times each replica up has won the lead in this life.
    pub fn wins(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .map(|i| {
                if self.is_up(i) {
                    self.lead_lines(i).0
                } else {
                    0
                }
            })
            .collect()
    }

    /// (times won, leads now) from replica `i`'s log since its last start.
    fn lead_lines(&self, i: usize) -> (usize, bool) {
        let Some(r) = self.replicas.get(i) else {
            return (0, false);
        };
        lead_lines(&read_from(&r.log, r.log_from))
    }
}

/// (times won, leads now) from a life's log lines.
fn lead_lines(text: &str) -> (usize, bool) {
    let mut won = 0;
    let mut leads = false;
    for line in text.lines() {
        if line.contains(LEADS) {
            won += 1;
            leads = true;
        } else if line.contains("ledger: ")
            && (line.contains("following") || line.contains("cannot open the log as leader"))
        {
            leads = false;
        }
    }
    (won, leads)
}

/// The text of `path` from byte `from` on ("" if unreadable).
fn read_from(path: &Path, from: u64) -> String {
    let mut out = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(from)).is_ok()
    {
        let _ = f.read_to_end(&mut out);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `n` distinct free ports on 127.0.0.1 (all bound at once, so distinct).
pub fn free_addrs(n: usize) -> Result<Vec<SocketAddr>, BoxError> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for l in listeners {
        out.push(format!("127.0.0.1:{}", l.local_addr()?.port()).parse()?);
    }
    Ok(out)
}

/// `[gateway.store]` for the replicas' database.
pub fn store_toml(url: &str) -> String {
    format!("[gateway.store]\nbackend = \"postgres\"\nurl = \"{url}\"\n")
}

/// The name of this run's database: `crossflow_crash_<seed>`.
pub fn database_name(seed: u64) -> String {
    format!("crossflow_crash_{seed}")
}

/// Makes a fresh, empty database `name` on the server of `admin` (dropped
/// first if an earlier run left it); its URL.
pub fn fresh_database(admin: &str, name: &str) -> Result<String, BoxError> {
    on_own_thread(|| {
        let mut client = postgres::Client::connect(admin, postgres::NoTls)
            .map_err(|e| format!("connecting to PostgreSQL at {}: {e}", host_of(admin)))?;
        client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))?;
        client.batch_execute(&format!("CREATE DATABASE \"{name}\""))?;
        Ok(crossflow_store::testing::with_database(admin, name))
    })
}

/// Drops database `name` (after a run that passed).
pub fn drop_database(admin: &str, name: &str) -> Result<(), BoxError> {
    on_own_thread(|| {
        let mut client = postgres::Client::connect(admin, postgres::NoTls)?;
        client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))?;
        Ok(())
    })
}

/// `host:port` of a URL, for messages (never the password).
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

/// Runs `f` on a thread of its own: the `postgres` client blocks on a
/// runtime of its own, which cannot start on a thread of the harness's.
fn on_own_thread<R: Send>(f: impl FnOnce() -> Result<R, BoxError> + Send) -> Result<R, BoxError> {
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|_| Err("a PostgreSQL admin call panicked".into()))
    })
}

/// Runs `cmd` with `sh -c` (the PostgreSQL restart), its output appended
/// to `log`; how long it took.
pub async fn run_command(cmd: String, log: PathBuf) -> Result<Duration, BoxError> {
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        let out = OpenOptions::new().create(true).append(true).open(&log)?;
        let status = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()?;
        if !status.success() {
            return Err(format!("`{cmd}` exited with {status} (see {})", log.display()).into());
        }
        Ok(t0.elapsed())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::{host_of, lead_lines};

    #[test]
    fn the_lead_is_read_from_the_last_lead_line() {
        let won = "2026-01-01T00:00:00Z  INFO crossflow_ledger::leader: ledger: this replica leads epoch=3\n";
        let lost = "2026-01-01T00:00:01Z  WARN crossflow_ledger::leader: ledger: the lead's session ended; following epoch=3\n";
        assert_eq!(lead_lines(""), (0, false));
        assert_eq!(lead_lines(won), (1, true));
        assert_eq!(lead_lines(&format!("{won}{lost}")), (1, false));
        assert_eq!(lead_lines(&format!("{won}{lost}{won}")), (2, true));
    }

    #[test]
    fn a_url_is_named_by_its_host() {
        assert_eq!(
            host_of("postgresql://u:secret@127.0.0.1:5/db"),
            "127.0.0.1:5"
        );
        assert_eq!(host_of("postgresql://h:5"), "h:5");
    }
}
