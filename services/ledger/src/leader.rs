//! The log on several replicas: one leader integrates and signs, the others
//! follow.
//!
//! Every replica sequences entries (any replica's writes append to the
//! shared log) and serves the read side. Integration and signing must have
//! one author, or two replicas could sign two checkpoints of the same size
//! from different frontiers; so each replica stands for the lead
//! ([`Candidate`], a PostgreSQL advisory lock) and only the winner runs an
//! [`Integrator`], opened from the stored tree at the moment it won and
//! fenced by its election epoch. The others read the latest checkpoint
//! back from the store every [`FOLLOW_POLL`] and publish it to their read
//! side. When the leader dies its lock goes with its session, and another
//! replica takes over at its next attempt ([`STAND_EVERY`]).

use std::{sync::Arc, time::Duration};

use crossflow_api::clock::{Clock as _, SharedClock};
use crossflow_store::{
    StoreError,
    leader::{Candidate, Lease},
    ledger::LedgerStore,
};
use tokio::sync::watch;

use crate::{
    Integrator, IntegratorHandle, Ledger, LedgerError,
    log::{INTEGRATION_BATCH, Latest, Signed},
    note::Signer,
};

/// How often a follower reads the latest checkpoint back.
pub const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// How often a follower tries to take the lead (a dead leader is replaced
/// within about this long, plus the new leader's first step).
pub const STAND_EVERY: Duration = Duration::from_secs(1);
/// How often the leader checks that its session (and so its lock) lives.
const LEASE_CHECK_EVERY: Duration = Duration::from_millis(500);
/// Pauses of the leader's loop, as in `Integrator::spawn`.
const MIN_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(100);
const RETRY: Duration = Duration::from_millis(200);

/// Makes the signer each new lead signs with (the key never lives in the
/// store, and a `Signer` is not shared between leads).
pub type MakeSigner = Arc<dyn Fn() -> Result<Signer, LedgerError> + Send + Sync>;

/// Starts this replica's part of the log: its read side (which has the
/// latest stored checkpoint before this returns), and a task that follows
/// the leader or leads. `interval` is the checkpoint interval.
pub async fn spawn_replica<S: LedgerStore + Clone>(
    store: S,
    candidate: Candidate,
    make_signer: MakeSigner,
    origin: String,
    clock: SharedClock,
    interval: impl Fn() -> Duration + Send + Sync + 'static,
) -> Result<(Ledger<S>, IntegratorHandle), LedgerError> {
    let verifier = make_signer()?.verifier();
    let (latest, rx) = watch::channel(None);
    let ledger = Ledger::watching(store.clone(), verifier, &origin, rx);
    let (stop, stopped) = watch::channel(false);
    let replica = Replica {
        store,
        make_signer,
        origin,
        clock,
        latest,
        stopped,
    };
    replica.follow().await;
    let task = tokio::spawn(replica.run(candidate, interval));
    Ok((ledger, IntegratorHandle::new(stop, task)))
}

struct Replica<S> {
    store: S,
    make_signer: MakeSigner,
    origin: String,
    clock: SharedClock,
    latest: Latest,
    stopped: watch::Receiver<bool>,
}

// === impl Replica ===

impl<S: LedgerStore + Clone> Replica<S> {
    async fn run(mut self, candidate: Candidate, interval: impl Fn() -> Duration + Sync) {
        let mut candidate = Some(candidate);
        let mut since_stood = STAND_EVERY;
        while !*self.stopped.borrow() {
            if since_stood >= STAND_EVERY {
                since_stood = Duration::ZERO;
                match self.stand(&mut candidate).await {
                    Ok(Some(lease)) => {
                        self.lead(lease, &interval).await;
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "ledger: cannot stand for the lead"),
                }
            }
            self.follow().await;
            self.pause(FOLLOW_POLL).await;
            since_stood += FOLLOW_POLL;
        }
    }

    /// One attempt at the lead, off the runtime (the candidate's
    /// connection blocks).
    async fn stand(&self, slot: &mut Option<Candidate>) -> Result<Option<Lease>, StoreError> {
        let Some(mut c) = slot.take() else {
            return Ok(None);
        };
        let now = self.clock.now_ms();
        let (c, won) = tokio::task::spawn_blocking(move || {
            let won = c.try_lead(now);
            (c, won)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        *slot = Some(c);
        won
    }

    /// Reads the latest checkpoint the leader stored.
    async fn follow(&self) {
        match self.store.latest_checkpoint().await {
            Ok(Some(c)) => {
                let c = Arc::new(Signed::from(c));
                self.latest.send_if_modified(|have| {
                    let newer = have.as_ref().is_none_or(|h| h.size < c.size);
                    if newer {
                        *have = Some(c.clone());
                    }
                    newer
                });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "ledger: reading the latest checkpoint failed"),
        }
    }

    /// Integrates and signs until the lead is lost or the task stopped.
    async fn lead(&mut self, lease: Lease, interval: &(impl Fn() -> Duration + Sync)) {
        let epoch = lease.epoch();
        tracing::info!(epoch, "ledger: this replica leads");
        let opened = match (self.make_signer)() {
            Ok(signer) => {
                Integrator::open_shared(
                    self.store.clone(),
                    signer,
                    self.origin.clone(),
                    self.clock.clone(),
                    Some(self.latest.clone()),
                    Some(epoch),
                )
                .await
            }
            Err(e) => Err(e),
        };
        let mut integrator = match opened {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, epoch, "ledger: cannot open the log as leader");
                self.pause(RETRY).await;
                return;
            }
        };
        let mut lease = Some(lease);
        let mut checked = tokio::time::Instant::now();
        while !*self.stopped.borrow() {
            if checked.elapsed() >= LEASE_CHECK_EVERY {
                checked = tokio::time::Instant::now();
                let Some(l) = lease.take() else { break };
                let Ok((l, held)) = tokio::task::spawn_blocking(move || {
                    let held = l.still_held();
                    (l, held)
                })
                .await
                else {
                    break;
                };
                if !held {
                    tracing::warn!(epoch, "ledger: the lead's session ended; following");
                    break;
                }
                lease = Some(l);
            }
            let interval = interval();
            let poll = (interval / 4).clamp(MIN_POLL, MAX_POLL);
            let pause = match integrator.step(interval.saturating_sub(poll)).await {
                Ok(n) if n == INTEGRATION_BATCH => Duration::ZERO,
                Ok(_) => poll,
                Err(LedgerError::Store(StoreError::Fenced { current, .. })) => {
                    tracing::warn!(
                        epoch,
                        current,
                        "ledger: another replica was elected; following"
                    );
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "ledger integration failed; retrying");
                    RETRY
                }
            };
            self.pause(pause).await;
        }
        // Dropping the lease ends its session, which frees the lock.
        drop(lease);
    }

    async fn pause(&mut self, d: Duration) {
        if d.is_zero() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.stopped.changed() => {}
        }
    }
}
