//! The log around the pure core: integration of sequenced entries into the
//! stored tree, checkpoint signing, and the read side (checkpoints, receipts,
//! consistency proofs, entry listing) that the gRPC adapter serves.
//!
//! Sequencing happens elsewhere ([`crossflow_store::ledger::append`], inside
//! the domain write that produces an entry). The [`Integrator`] is the only
//! writer of tree nodes and checkpoints: it keeps the tree's right edge in a
//! [`Frontier`] (O(log n) memory), appends new leaf hashes in batches,
//! persists the nodes they complete, and signs a checkpoint at least every
//! interval while the log grows. Because every checkpoint it signs comes from
//! that one frontier, which on start is checked against the latest stored
//! checkpoint, it never signs two inconsistent checkpoints.
//!
//! Only steps that sign a checkpoint wait for an fsync. The others are
//! answered once committed ([`LedgerStore::integrate`]): their nodes are
//! derived from durable entries, a crash loses at most the steps after the
//! last checkpoint, and the frontier is rebuilt from what survived. A
//! checkpoint is published only after its own step is durable, which makes
//! every node it covers durable too.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use crossflow_api::{
    Caller, Kind, Problem,
    clock::{Clock, SharedClock},
};
use crossflow_store::{
    StoreError,
    ledger::{Entry, Integration, LedgerStore, StoredCheckpoint},
};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    merkle::{self, Frontier, Hash, ProofError},
    note::{Checkpoint, NoteError, Signer, Verifier},
    receipt::Receipt,
};

/// Most leaves integrated per step: bounds one step's write so it does not
/// hold up the writer's other jobs for long.
pub const INTEGRATION_BATCH: usize = 16_384;
/// Bounds of the integrator's pause between steps when there is no backlog.
/// Each step is one commit on the shared writer (with an fsync only when it
/// signs a checkpoint), so stepping rarely keeps integration from doubling
/// the commits of a busy log; a quarter of the checkpoint interval keeps
/// checkpoints on time.
const MIN_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(100);
/// Wait before retrying a failed integration step.
const RETRY: Duration = Duration::from_millis(200);
/// Default and largest `ListEntries` page.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;
/// How long GetReceipt waits for a covering checkpoint unless told.
pub const DEFAULT_RECEIPT_WAIT: Duration = Duration::from_secs(3);

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{field}: {message}")]
    InvalidField {
        field: &'static str,
        message: String,
    },
    #[error("entry {0} does not exist")]
    NoSuchEntry(u64),
    #[error("no conversion with order_id {0:?} was reported by the caller")]
    NoSuchOrder(String),
    #[error("the caller is not a party to entry {0}")]
    NotParty(u64),
    #[error("no signed checkpoint of tree size {size} ({field})")]
    NoSuchCheckpoint { field: &'static str, size: u64 },
    #[error("entry {index} is not yet covered by a signed checkpoint")]
    NotYetCheckpointed { index: u64, retry: Duration },
    #[error("looking up receipts by order_id is not available on this gateway")]
    OrderLookupUnavailable,
    #[error(
        "stored tree does not match signed checkpoint of size {size}: {detail}; refusing to sign"
    )]
    Inconsistent { size: u64, detail: String },
    #[error("checkpoint: {0}")]
    Note(#[from] NoteError),
    #[error("proof: {0}")]
    Proof(#[from] ProofError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LedgerError {
    /// How this error reads on the wire.
    pub fn problem(&self) -> Problem {
        use LedgerError as E;
        match self {
            E::InvalidField { field, message } => {
                Problem::field("INVALID_FIELD", *field, message.clone())
            }
            E::NoSuchEntry(i) => Problem::new(Kind::NotFound, "NO_SUCH_ENTRY", self.to_string())
                .with("index", i.to_string()),
            E::NoSuchOrder(o) => Problem::new(Kind::NotFound, "NO_SUCH_ORDER", self.to_string())
                .with("order_id", o.clone()),
            E::NotParty(i) => {
                Problem::new(Kind::PermissionDenied, "NOT_A_PARTY", self.to_string())
                    .with("index", i.to_string())
            }
            E::NoSuchCheckpoint { field, size } => {
                Problem::new(Kind::NotFound, "NO_SUCH_CHECKPOINT", self.to_string())
                    .with("field", *field)
                    .with("size", size.to_string())
            }
            E::NotYetCheckpointed { index, retry } => {
                Problem::new(Kind::Unavailable, "NOT_YET_CHECKPOINTED", self.to_string())
                    .with("index", index.to_string())
                    .retry_after(*retry)
            }
            E::OrderLookupUnavailable => Problem::new(
                Kind::FailedPrecondition,
                "ORDER_LOOKUP_UNAVAILABLE",
                "order_id lookup needs the conversion service, which this gateway does not run; ask by index",
            )
            .with("field", "order_id"),
            E::Store(e) => Problem::storage(e, e.is_unavailable()),
            E::Inconsistent { .. } | E::Note(_) | E::Proof(_) => Problem::internal(self),
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> LedgerError {
    LedgerError::InvalidField {
        field,
        message: message.into(),
    }
}

/// A signed checkpoint, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub size: u64,
    pub root: Hash,
    pub note: String,
}

impl From<StoredCheckpoint> for Signed {
    fn from(c: StoredCheckpoint) -> Self {
        Signed {
            size: c.size,
            root: c.root,
            note: c.note,
        }
    }
}

/// The checkpoint log name for a federation: `<federation>/ledger`.
pub fn origin(federation: &str) -> String {
    format!("{federation}/ledger")
}

/// Fetches the nodes of `plan` with one store query and builds the proof.
async fn prove<S: LedgerStore>(
    store: &S,
    plan: merkle::ProofNodes,
) -> Result<Vec<Hash>, LedgerError> {
    let ids = plan.ids().to_vec();
    let hashes = if ids.is_empty() {
        Vec::new()
    } else {
        store.nodes(ids).await?
    };
    Ok(plan.rehash(&hashes)?)
}

// === Integrator ===

/// Integrates sequenced entries into the stored tree and signs checkpoints.
#[derive(Debug)]
pub struct Integrator<S> {
    store: S,
    signer: Signer,
    origin: String,
    frontier: Frontier,
    latest: watch::Sender<Option<Arc<Signed>>>,
    last_signed_at: Option<Instant>,
    /// Wall clock for `signed_at_ms` (period closes pick anchors by it).
    clock: SharedClock,
    /// The leader epoch this integrator was elected in (several replicas):
    /// every step is fenced by it, see [`Integration::epoch`].
    epoch: Option<u64>,
}

/// The latest signed checkpoint, as the read side watches it.
pub(crate) type Latest = watch::Sender<Option<Arc<Signed>>>;

/// A running integrator task.
#[derive(Debug)]
pub struct IntegratorHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl IntegratorHandle {
    pub(crate) fn new(stop: watch::Sender<bool>, task: JoinHandle<()>) -> IntegratorHandle {
        IntegratorHandle { stop, task }
    }

    /// Stops after the step in progress (nothing half-written: every step is
    /// one transaction) and waits for the task to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl<S: LedgerStore + Clone> Integrator<S> {
    /// Restores the frontier from stored nodes and checks it against the
    /// latest signed checkpoint; signs a first checkpoint if there is none.
    pub async fn open(store: S, signer: Signer, origin: String) -> Result<Self, LedgerError> {
        Self::open_with_clock(store, signer, origin, SharedClock::default()).await
    }

    /// [`Integrator::open`] with the wall clock checkpoints are stamped
    /// with (the gateway passes the clock its services read).
    pub async fn open_with_clock(
        store: S,
        signer: Signer,
        origin: String,
        clock: SharedClock,
    ) -> Result<Self, LedgerError> {
        Self::open_shared(store, signer, origin, clock, None, None).await
    }

    /// [`Integrator::open_with_clock`], publishing into `latest` (a
    /// replica's read side, which followed the leader before this one was
    /// elected) and fencing every step with `epoch`.
    pub(crate) async fn open_shared(
        store: S,
        signer: Signer,
        origin: String,
        clock: SharedClock,
        latest: Option<Latest>,
        epoch: Option<u64>,
    ) -> Result<Self, LedgerError> {
        let size = store.tree_size().await?;
        let frontier = if size == 0 {
            Frontier::new()
        } else {
            let hashes = store.nodes(merkle::root_nodes(size)).await?;
            Frontier::from_hashes(size, hashes)?
        };
        let shared = latest;
        let latest = store.latest_checkpoint().await?;
        if let Some(c) = &latest {
            check_checkpoint(&store, &signer.verifier(), &origin, c, size).await?;
        }
        let stored = latest;
        let latest = stored.map(|c| Arc::new(Signed::from(c)));
        let tx = match shared {
            Some(tx) => {
                tx.send_replace(latest);
                tx
            }
            None => watch::channel(latest).0,
        };
        let mut me = Integrator {
            store,
            signer,
            origin,
            frontier,
            latest: tx,
            last_signed_at: None,
            clock,
            epoch,
        };
        if me.latest.borrow().is_none() {
            // A log always has a checkpoint, even when empty, so clients can
            // start from GetCheckpoint.
            let checkpoint = me.sign()?;
            me.commit(Vec::new(), Vec::new(), Some(checkpoint)).await?;
        }
        Ok(me)
    }

    /// The read side of this log, sharing the integrator's latest checkpoint.
    pub fn ledger(&self) -> Ledger<S> {
        Ledger::watching(
            self.store.clone(),
            self.signer.verifier(),
            &self.origin,
            self.latest.subscribe(),
        )
    }

    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// Integrates up to [`INTEGRATION_BATCH`] new entries and signs a
    /// checkpoint if one is due (`interval` since the last one, and the tree
    /// grew). Returns how many entries were integrated.
    pub async fn step(&mut self, interval: Duration) -> Result<usize, LedgerError> {
        let leaves = self
            .store
            .leaves(self.frontier.size(), INTEGRATION_BATCH)
            .await?;
        let before = self.frontier.clone();
        let count = leaves.len();
        let mut nodes = Vec::with_capacity(count + 64);
        let mut parties = Vec::with_capacity(count);
        for leaf in leaves {
            let index = self.frontier.size();
            parties.push((index, leaf.parties));
            // Level 0 is the entry's own leaf hash, already stored with it.
            nodes.extend(
                self.frontier
                    .append(leaf.hash)
                    .into_iter()
                    .filter(|n| n.0 > 0),
            );
        }
        let checkpoint = match self.due(interval) {
            true => Some(self.sign()?),
            false => None,
        };
        if count == 0 && checkpoint.is_none() {
            return Ok(0);
        }
        if let Err(e) = self.commit(nodes, parties, checkpoint).await {
            // Nothing was persisted; the next step redoes these leaves.
            self.frontier = before;
            return Err(e);
        }
        Ok(count)
    }

    /// Steps until stopped: at once while there is a backlog, otherwise
    /// every few milliseconds, and when a checkpoint falls due.
    pub fn spawn(mut self, interval: impl Fn() -> Duration + Send + 'static) -> IntegratorHandle {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                if *stopped.borrow() {
                    break;
                }
                let interval = interval();
                let poll = (interval / 4).clamp(MIN_POLL, MAX_POLL);
                // Signing when the interval is within one pause of elapsing
                // keeps the gap between checkpoints at most `interval`.
                let pause = match self.step(interval.saturating_sub(poll)).await {
                    Ok(n) if n == INTEGRATION_BATCH => Duration::ZERO,
                    Ok(_) => poll,
                    Err(e) => {
                        tracing::error!(error = %e, "ledger integration failed; retrying");
                        RETRY
                    }
                };
                if !pause.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopped.changed() => {}
                    }
                }
            }
        });
        IntegratorHandle { stop, task }
    }

    fn due(&self, interval: Duration) -> bool {
        let signed = self.latest.borrow().as_ref().map_or(0, |c| c.size);
        self.frontier.size() > signed
            && self
                .last_signed_at
                .is_none_or(|at| at.elapsed() >= interval)
    }

    fn sign(&self) -> Result<StoredCheckpoint, LedgerError> {
        let root = self.frontier.root();
        let body = Checkpoint::new(self.origin.clone(), self.frontier.size(), root).to_body()?;
        Ok(StoredCheckpoint {
            size: self.frontier.size(),
            root,
            note: self.signer.sign(&body)?,
            signed_at_ms: self.clock.now_ms(),
        })
    }

    async fn commit(
        &mut self,
        nodes: Vec<(u8, u64, Hash)>,
        parties: Vec<(u64, Arc<[String]>)>,
        checkpoint: Option<StoredCheckpoint>,
    ) -> Result<(), LedgerError> {
        self.store
            .integrate(Integration {
                size: self.frontier.size(),
                nodes,
                parties,
                checkpoint: checkpoint.clone(),
                epoch: self.epoch,
            })
            .await?;
        let metrics = crossflow_api::metrics::get();
        metrics.ledger_size(self.frontier.size());
        if let Some(c) = checkpoint {
            metrics.checkpoint_signed(c.signed_at_ms);
            self.last_signed_at = Some(Instant::now());
            tracing::debug!(size = c.size, "ledger checkpoint signed");
            self.latest.send_replace(Some(Arc::new(c.into())));
        }
        Ok(())
    }
}

/// Refuses to go on signing unless `c` is our own signature over the tree
/// the stored nodes describe.
async fn check_checkpoint<S: LedgerStore>(
    store: &S,
    verifier: &Verifier,
    origin: &str,
    c: &StoredCheckpoint,
    tree_size: u64,
) -> Result<(), LedgerError> {
    let bad = |detail: String| LedgerError::Inconsistent {
        size: c.size,
        detail,
    };
    let body = verifier
        .verify_note(&c.note)
        .map_err(|e| bad(format!("note does not verify with {verifier}: {e}")))?;
    let parsed = Checkpoint::parse_body(body).map_err(|e| bad(e.to_string()))?;
    if parsed.origin != origin || parsed.size != c.size || parsed.root != c.root {
        return Err(bad(format!(
            "note says origin {:?} size {}, row says origin {origin:?} size {}",
            parsed.origin, parsed.size, c.size
        )));
    }
    if c.size > tree_size {
        return Err(bad(format!("stored tree has only {tree_size} entries")));
    }
    let root = match c.size {
        0 => merkle::empty_root(),
        n => {
            let hashes = store.nodes(merkle::root_nodes(n)).await?;
            Frontier::from_hashes(n, hashes)?.root()
        }
    };
    if root != c.root {
        return Err(bad("root recomputed from stored nodes differs".into()));
    }
    Ok(())
}

// === Ledger (read side) ===

/// Finds the latest ledger entry of a conversion by order id, as seen by the
/// caller (the conversions service provides it).
pub type OrderLookup = Arc<
    dyn Fn(Caller, String) -> Pin<Box<dyn Future<Output = Result<Option<u64>, StoreError>> + Send>>
        + Send
        + Sync,
>;

/// The read side of the log. Cheap to clone.
#[derive(Clone)]
pub struct Ledger<S> {
    store: S,
    verifier: Arc<Verifier>,
    origin: Arc<str>,
    latest: watch::Receiver<Option<Arc<Signed>>>,
    order_lookup: Option<OrderLookup>,
    receipt_wait: Arc<dyn Fn() -> Duration + Send + Sync>,
}

impl<S> std::fmt::Debug for Ledger<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("origin", &self.origin)
            .field("verifier", &self.verifier.to_string())
            .finish_non_exhaustive()
    }
}

/// A page of [`Ledger::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// Where the next page starts, if this one was full.
    pub next: Option<u64>,
}

/// A receipt and what it proves.
#[derive(Debug, Clone)]
pub struct Issued {
    pub text: String,
    pub entry: Entry,
    pub checkpoint: Arc<Signed>,
}

/// A consistency proof between two signed checkpoints.
#[derive(Debug, Clone)]
pub struct Consistency {
    pub proof: Vec<Hash>,
    pub from: Option<Signed>,
    pub to: Signed,
}

impl<S: LedgerStore + Clone> Ledger<S> {
    /// A read side that follows `latest` (published by an integrator of
    /// this process or, on a replica that does not lead, read back from
    /// the store).
    pub(crate) fn watching(
        store: S,
        verifier: Verifier,
        origin: &str,
        latest: watch::Receiver<Option<Arc<Signed>>>,
    ) -> Ledger<S> {
        Ledger {
            store,
            verifier: Arc::new(verifier),
            origin: Arc::from(origin),
            latest,
            order_lookup: None,
            receipt_wait: Arc::new(|| DEFAULT_RECEIPT_WAIT),
        }
    }

    /// Adds the lookup that lets receipts be asked for by order id.
    pub fn with_order_lookup(mut self, lookup: OrderLookup) -> Self {
        self.order_lookup = Some(lookup);
        self
    }

    /// How long GetReceipt waits for a checkpoint covering a fresh entry
    /// (read per request, so it follows settings reloads).
    pub fn with_receipt_wait(
        mut self,
        wait: impl Fn() -> Duration + Send + Sync + 'static,
    ) -> Self {
        self.receipt_wait = Arc::new(wait);
        self
    }

    pub fn receipt_wait(&self) -> Duration {
        (self.receipt_wait)()
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The latest signed checkpoint (a log always has one once open).
    pub fn checkpoint(&self) -> Result<Arc<Signed>, LedgerError> {
        self.latest
            .borrow()
            .clone()
            .ok_or(LedgerError::NoSuchCheckpoint {
                field: "size",
                size: 0,
            })
    }

    /// Waits (up to `wait`) until the latest checkpoint covers `index`.
    async fn covering(&self, index: u64, wait: Duration) -> Result<Arc<Signed>, LedgerError> {
        let mut rx = self.latest.clone();
        let covered = tokio::time::timeout(wait, async {
            rx.wait_for(|c| c.as_ref().is_some_and(|c| c.size > index))
                .await
                .ok()
                .and_then(|c| c.clone())
        })
        .await;
        covered
            .ok()
            .flatten()
            .ok_or(LedgerError::NotYetCheckpointed {
                index,
                retry: wait.max(Duration::from_millis(100)),
            })
    }

    /// The index a receipt request names, checked.
    pub async fn resolve(&self, caller: &Caller, order_id: &str) -> Result<u64, LedgerError> {
        if order_id.is_empty() || order_id.len() > 128 {
            return Err(invalid(
                "order_id",
                format!("must be 1 to 128 bytes, got {}", order_id.len()),
            ));
        }
        let lookup = self
            .order_lookup
            .as_ref()
            .ok_or(LedgerError::OrderLookupUnavailable)?;
        lookup(caller.clone(), order_id.to_owned())
            .await?
            .ok_or_else(|| LedgerError::NoSuchOrder(order_id.to_owned()))
    }

    /// A `c2sp.org/tlog-proof@v1` receipt for entry `index` against the
    /// latest checkpoint, waiting up to `wait` for one that covers it.
    pub async fn receipt(
        &self,
        caller: &Caller,
        index: u64,
        wait: Duration,
    ) -> Result<Issued, LedgerError> {
        if i64::try_from(index).is_err() {
            return Err(invalid("index", format!("must be below 2^63, got {index}")));
        }
        let store = &self.store;
        let entry = store
            .entry(index)
            .await?
            .ok_or(LedgerError::NoSuchEntry(index))?;
        if let Caller::Partner(p) = caller
            && !store.parties(index).await?.iter().any(|x| x == p)
        {
            return Err(LedgerError::NotParty(index));
        }
        let checkpoint = self.covering(index, wait).await?;
        let proof = prove(store, merkle::inclusion_nodes(index, checkpoint.size)?).await?;
        let text = Receipt {
            extra: None,
            index,
            proof,
            checkpoint_note: checkpoint.note.clone(),
        }
        .to_text();
        Ok(Issued {
            text,
            entry,
            checkpoint,
        })
    }

    /// Proof that the checkpoint of `to_size` (0: the latest) extends the
    /// tree of `from_size`.
    pub async fn consistency(
        &self,
        from_size: u64,
        to_size: u64,
    ) -> Result<Consistency, LedgerError> {
        let store = &self.store;
        let to: Signed = if to_size == 0 {
            (*self.checkpoint()?).clone()
        } else {
            let c = i64::try_from(to_size)
                .ok()
                .map(|_| store.checkpoint(to_size));
            match c {
                Some(f) => f.await?,
                None => None,
            }
            .ok_or(LedgerError::NoSuchCheckpoint {
                field: "to_size",
                size: to_size,
            })?
            .into()
        };
        if from_size == 0 {
            return Err(invalid(
                "from_size",
                "must be at least 1: consistency with the empty tree proves nothing",
            ));
        }
        if from_size > to.size {
            return Err(invalid(
                "from_size",
                format!("must be at most to_size {}, got {from_size}", to.size),
            ));
        }
        let from = store.checkpoint(from_size).await?.map(Signed::from);
        let proof = prove(store, merkle::consistency_nodes(from_size, to.size)?).await?;
        Ok(Consistency { proof, from, to })
    }

    /// Up to `page_size` (0: [`DEFAULT_PAGE_SIZE`]) entries from `since` on
    /// that `caller` may see, among those the latest signed checkpoint
    /// covers.
    ///
    /// An entry is committed (and its party index written) before the fsync
    /// that makes it durable; one listed in that window could be lost with
    /// the machine's power, and its index later given to another entry: a
    /// partner would hold two versions of one index. A checkpoint is
    /// published only after its own fsync, which follows its entries in the
    /// WAL, so everything below its size is durable, and every listed entry
    /// has a receipt against [`Self::checkpoint`] at once.
    pub async fn list(
        &self,
        caller: &Caller,
        since: u64,
        page_size: u32,
    ) -> Result<Page, LedgerError> {
        if page_size > MAX_PAGE_SIZE {
            return Err(invalid(
                "page_size",
                format!("must be at most {MAX_PAGE_SIZE}, got {page_size}"),
            ));
        }
        if i64::try_from(since).is_err() {
            return Err(invalid(
                "since_index",
                format!("must be below 2^63, got {since}"),
            ));
        }
        let limit = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n,
        } as usize;
        let party = match caller {
            Caller::Partner(p) => Some(p.clone()),
            Caller::Operator(_) => None,
        };
        let below = self.latest.borrow().as_ref().map_or(0, |c| c.size);
        let entries = self.store.entries(party, since..below, limit).await?;
        let next = match entries.last() {
            Some(last) if entries.len() == limit => Some(last.index + 1),
            _ => None,
        };
        Ok(Page { entries, next })
    }
}

#[cfg(test)]
mod tests;
