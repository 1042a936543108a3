//! CPU time of this process's threads, by role.
//!
//! The load generator shares the machine with the servers, so req/s alone
//! mixes the two. Each thread's time on a CPU (the first field of
//! `/proc/self/task/<tid>/schedstat`, in nanoseconds) is taken per thread
//! and grouped by thread name: the servers' runtime (`bench-server`, which
//! includes the store's reads: they run on that runtime's blocking
//! threads), the store's writer (`crossflow-writer`), its other threads
//! (`crossflow-*`) and the load generator (`bench-client`). Between two
//! samples each thread counts what it ran since the first one (a thread
//! started in between counts from zero); a thread that exits in between
//! (an idle blocking thread after 10 s) is missing from the second, and its
//! time since the first is lost.
//!
//! The same samples read the host's own account of its CPUs (the `cpu`
//! line of `/proc/stat`): on a virtual machine, the share of their time the
//! hypervisor gave to other guests while the vCPUs wanted to run (`steal`)
//! says how much of "2 cores" a run really had. The same code measured at
//! two times differs mostly by this.
//!
//! With [`watch_postgres`], the samples also take the PostgreSQL server's
//! processes on this machine (`/proc/<pid>/schedstat` of every process
//! named `postgres`): the backends serving the benchmark's own databases
//! (their command line names the database), and the server's shared
//! processes (the postmaster, which forks every new connection, the WAL
//! writer, the checkpointer...). Backends of other databases are left out,
//! so another user of the same server is not charged to the benchmark.

use std::{collections::HashMap, fs, sync::OnceLock, time::Duration};

/// Which part of the benchmark a thread belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Writer,
    Store,
    Client,
}

/// Which part of the PostgreSQL server a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgRole {
    /// A backend serving one of the watched databases.
    Backend,
    /// The postmaster and the server's background processes.
    Shared,
}

/// Database-name prefix of the PostgreSQL backends to watch (see
/// [`watch_postgres`]).
static POSTGRES: OnceLock<String> = OnceLock::new();

/// Each thread's CPU time at one moment.
#[derive(Debug, Clone, Default)]
pub struct CpuTimes {
    threads: HashMap<u32, (Role, Duration)>,
    /// The host's CPU time so far (all CPUs, in clock ticks), if readable.
    host: Option<HostTicks>,
    /// Watched PostgreSQL processes, by pid.
    postgres: HashMap<u32, (PgRole, Duration)>,
}

/// The aggregate `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostTicks {
    /// user, nice, system, idle, iowait, irq, softirq and steal together
    /// (guest time is already inside user and nice).
    total: u64,
    steal: u64,
}

/// CPU time spent per request between two samples, in µs.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerRequest {
    /// The gateway's (or echo server's) runtime threads, store reads
    /// included.
    pub server_us: f64,
    /// The store's single writer thread.
    pub writer_us: f64,
    /// The store's other threads (the syncer, the checkpointer).
    pub store_us: f64,
    /// The load generator's runtime threads.
    pub client_us: f64,
    /// Share (0 to 1) of all the host's CPU time between the two samples
    /// that the hypervisor gave to others while this guest wanted it.
    pub steal: Option<f64>,
    /// PostgreSQL's backends serving the watched databases, and its shared
    /// processes; `None` unless [`watch_postgres`] was called.
    pub postgres: Option<PostgresCpu>,
}

/// PostgreSQL server CPU time per request, in µs.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresCpu {
    pub backends_us: f64,
    pub shared_us: f64,
}

/// From now on, samples also take the PostgreSQL processes serving
/// databases whose names start with `db_prefix`, and the server's shared
/// processes.
pub fn watch_postgres(db_prefix: &str) {
    let _ = POSTGRES.set(db_prefix.to_owned());
}

// === impl CpuTimes ===

impl CpuTimes {
    /// The process's threads now, or `None` where `/proc` has no schedstat.
    pub fn sample() -> Option<CpuTimes> {
        let mut threads = HashMap::new();
        for task in fs::read_dir("/proc/self/task").ok()? {
            let dir = task.ok()?.path();
            let Some(tid) = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
            else {
                continue;
            };
            // A thread may exit while we read; skip it.
            let (Ok(comm), Ok(stat)) = (
                fs::read_to_string(dir.join("comm")),
                fs::read_to_string(dir.join("schedstat")),
            ) else {
                continue;
            };
            let Some(ran) = on_cpu(&stat) else {
                continue;
            };
            // `comm` is cut to 15 bytes: "crossflow-write", "crossflow-synce".
            let comm = comm.trim_end();
            let role = if comm.starts_with("bench-server") {
                Role::Server
            } else if comm.starts_with("crossflow-write") || comm.starts_with("crossflow-pg-wr") {
                // SQLite's writer, or PostgreSQL's ("crossflow-pg-writer").
                Role::Writer
            } else if comm.starts_with("crossflow-") {
                Role::Store
            } else if comm.starts_with("bench-client") {
                Role::Client
            } else {
                continue;
            };
            threads.insert(tid, (role, ran));
        }
        let host = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| host_ticks(&t));
        let postgres = POSTGRES
            .get()
            .map(|prefix| postgres_processes(prefix))
            .unwrap_or_default();
        Some(CpuTimes {
            threads,
            host,
            postgres,
        })
    }

    /// Time spent from `before` to now, per request of `requests`; `None`
    /// where either sample could not be taken.
    pub fn since(before: Option<CpuTimes>, requests: u64) -> Option<PerRequest> {
        CpuTimes::sample()
            .zip(before)
            .and_then(|(now, then)| now.per_request(&then, requests))
    }

    /// Time spent from `before` to `self`, per request of `requests`.
    pub fn per_request(&self, before: &CpuTimes, requests: u64) -> Option<PerRequest> {
        if requests == 0 {
            return None;
        }
        let mut p = PerRequest::default();
        for (tid, (role, now)) in &self.threads {
            let then = before.threads.get(tid).map_or(Duration::ZERO, |t| t.1);
            let us = now.saturating_sub(then).as_secs_f64() * 1e6 / requests as f64;
            *match role {
                Role::Server => &mut p.server_us,
                Role::Writer => &mut p.writer_us,
                Role::Store => &mut p.store_us,
                Role::Client => &mut p.client_us,
            } += us;
        }
        p.steal = self.host.zip(before.host).and_then(|(now, then)| {
            let total = now.total.checked_sub(then.total)?;
            let steal = now.steal.checked_sub(then.steal)?;
            (total > 0).then(|| steal as f64 / total as f64)
        });
        if POSTGRES.get().is_some() {
            let mut pg = PostgresCpu::default();
            for (pid, (role, now)) in &self.postgres {
                let then = before.postgres.get(pid).map_or(Duration::ZERO, |t| t.1);
                let us = now.saturating_sub(then).as_secs_f64() * 1e6 / requests as f64;
                *match role {
                    PgRole::Backend => &mut pg.backends_us,
                    PgRole::Shared => &mut pg.shared_us,
                } += us;
            }
            p.postgres = Some(pg);
        }
        Some(p)
    }
}

/// The PostgreSQL processes on this machine to account: backends whose
/// command line (which PostgreSQL sets to "postgres: USER DATABASE HOST
/// STATE") names a database starting with `prefix`, and the postmaster and
/// background processes; other databases' backends are skipped.
fn postgres_processes(prefix: &str) -> HashMap<u32, (PgRole, Duration)> {
    /// Background processes, as PostgreSQL 13 to 17 name them.
    const SHARED: &[&str] = &[
        "checkpointer",
        "background writer",
        "walwriter",
        "autovacuum launcher",
        "autovacuum worker",
        "logical replication launcher",
        "archiver",
        "stats collector",
        "walsummarizer",
    ];
    let mut out = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let dir = p.path();
        if fs::read_to_string(dir.join("comm")).map_or(true, |c| c.trim_end() != "postgres") {
            continue;
        }
        let Ok(cmdline) = fs::read(dir.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // With `cluster_name` set, the title starts with "NAME: ".
        let title = cmdline
            .strip_prefix("postgres: ")
            .map(|t| match t.split_once(": ") {
                Some((cluster, rest)) if !cluster.contains(' ') => rest,
                _ => t,
            });
        let role = match title {
            // The postmaster keeps its real command line.
            None => PgRole::Shared,
            Some(title)
                if title
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|db| db.starts_with(prefix)) =>
            {
                PgRole::Backend
            }
            Some(title) if SHARED.iter().any(|s| title.trim_start().starts_with(s)) => {
                PgRole::Shared
            }
            Some(_) => continue,
        };
        let Some(ran) = fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| on_cpu(&s))
        else {
            continue;
        };
        out.insert(pid, (role, ran));
    }
    out
}

// === impl PerRequest ===

impl PerRequest {
    /// Everything but the load generator.
    pub fn server_side_us(&self) -> f64 {
        self.server_us + self.writer_us + self.store_us
    }
}

/// Time on a CPU from a `schedstat` line (its first field, in ns).
fn on_cpu(schedstat: &str) -> Option<Duration> {
    let ns = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// The host's ticks from `/proc/stat`: its first line is `cpu` followed by
/// user, nice, system, idle, iowait, irq, softirq, steal, guest and
/// guest_nice (kernels before 2.6.11 stop before steal: `None`).
fn host_ticks(stat: &str) -> Option<HostTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse::<u64>().ok())
        .collect::<Option<Vec<u64>>>()?;
    if fields.len() < 8 {
        return None;
    }
    Some(HostTicks {
        total: fields.iter().sum(),
        steal: fields[7],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ticks_read_the_aggregate_line() {
        let stat = "cpu  100 5 50 800 10 1 4 30 7 0\n\
                    cpu0 50 2 25 400 5 0 2 15 3 0\n\
                    intr 12345\n";
        assert_eq!(
            host_ticks(stat),
            Some(HostTicks {
                total: 1000,
                steal: 30
            })
        );
        assert_eq!(host_ticks("cpu  1 2 3 4 5 6 7\n"), None);
        assert_eq!(host_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        let then = CpuTimes {
            threads: HashMap::new(),
            host: Some(HostTicks {
                total: 1000,
                steal: 30,
            }),
            postgres: HashMap::new(),
        };
        let now = CpuTimes {
            threads: HashMap::new(),
            host: Some(HostTicks {
                total: 1400,
                steal: 130,
            }),
            postgres: HashMap::new(),
        };
        let per = now.per_request(&then, 1).expect("one request");
        assert_eq!(per.steal, Some(0.25));
    }

    /// This thread's own CPU time.
    fn own_cpu() -> Option<Duration> {
        on_cpu(&fs::read_to_string("/proc/thread-self/schedstat").ok()?)
    }

    #[test]
    fn a_busy_thread_is_counted_under_its_role() {
        let Some(before) = CpuTimes::sample() else {
            return; // no schedstat on this system: nothing to check
        };
        let spin = std::thread::Builder::new()
            .name("bench-client-t".into())
            .spawn(|| {
                // Busy until this thread has run 30 ms, however loaded the
                // machine (or 10 s of wall time, and the test fails).
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while own_cpu().is_some_and(|t| t < Duration::from_millis(30))
                    && start.elapsed() < Duration::from_secs(10)
                {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                // Sampled while the thread still exists.
                CpuTimes::sample()
            })
            .expect("spawn");
        let after = spin.join().expect("join").expect("sample");
        let per = after.per_request(&before, 1).expect("one request");
        assert!(per.client_us >= 30_000.0, "{per:?}");
        assert!(per.server_us < 1.0, "{per:?}");
        let halves = after.per_request(&before, 2).expect("two requests");
        assert!((halves.client_us * 2.0 - per.client_us).abs() < 1e-6);
        assert!(before.per_request(&before, 0).is_none());
    }
}
