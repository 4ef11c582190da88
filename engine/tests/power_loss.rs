//! Power-loss simulation of a small cluster (issue 7).
//!
//! SIGKILL keeps the page cache, so the multi-process crash tests never lose a byte that was
//! written but not synced. This test does: three shards, each the node's real engine (WAL and
//! tables) over `MemoryStorage` and `MemoryTables`, driven single-threaded the way
//! `node/src/coordinator.rs` drives them (one-phase local transfers, batched presumed-abort 2PC
//! with the debit shard as coordinator, phase two, ENDED, inquiries and presumed aborts on
//! recovery). At seeded points power is lost: the shard's storage keeps only what was synced
//! (`CrashMode::DropUnsynced`) or also a random prefix of what was not, possibly a torn record
//! (`CrashMode::KeepUnsyncedPrefix`), and its tables keep only what was flushed. The shard is
//! reopened, the cluster recovers as the nodes would, and the invariants are checked against
//! what the clients were told before the crash.
//!
//! Crash points (each engine call below may be struck as [`Strike`] describes; a fifth of the
//! strikes take the whole cluster down with the shard):
//! - local transfer, deposit, withdrawal: the client hears nothing; after recovery the record is
//!   there or not (`transfer_status`, the shard's totals), never half. The client then resends
//!   the deposit or withdrawal with its id, which must not apply it a second time.
//! - participant prepare: the vote is lost, so the coordinator aborts (participant unavailable)
//!   and keeps the participant listed; the PREPARE comes back in doubt, or not at all.
//! - coordinator prepare: the batch is abandoned; the participants' PREPAREs are in doubt and
//!   the restarted coordinator answers their inquiries with a logged presumed abort.
//! - coordinator logs decisions: DECIDED records and the coordinator's own COMMIT/ABORT lost,
//!   torn (some DECIDED kept without the own part: the coordinator's own in-doubt part resolves
//!   through its own decision), durable but not applied (replay), or durable but unanswered
//!   (the client learns the outcome from the decision).
//! - participant applies decisions: COMMIT/ABORT lost or unacknowledged; the decision stays
//!   unended and is resent after recovery.
//! - coordinator ends decisions: ENDED lost; the decisions are resent and answered again.
//! - checkpoint: tables flushed, segment deletion not yet durable (segments come back).
//! - recovery itself: the resend, the presumed abort and the applying of answers can be cut too.
//! - idle: a quiescent shard or the whole cluster; only the unflushed tables are lost. Every
//!   iteration ends with such a loss of the whole cluster.
//!
//! Every random choice comes from one seed (`engine::testing::test_seed`), so `TALLY_SEED=N`
//! replays a failing run exactly: the driver is single-threaded, local operations never wait for
//! locks, and a fault is armed only for the one engine call it is meant to cut.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::coordinator::{
    Answer, Asker, ClientToken, Coordinator, CoordinatorLimits, Effect, InquiryToken, Refusal,
    Time, Transfer, TransferRequest, Verdict, VoteFailure,
};
use engine::model::{
    AbortReason, AccountId, Amount, CoordinatorDecision, MovementId, MovementKind, MovementOutcome,
    NodeId, Operation, OperationKind, Outcome, RefusalReason, TransferId,
};
use engine::tables::MemoryTables;
use engine::testing::{single_threaded_engine_options, small_segment_wal_options, test_seed};
use engine::wal::{CrashMode, MemoryStorage, Wal, WalOptions};
use engine::{
    Engine, LocalTransferError, MovementError, PrepareRequest, ShardAudit, TransferStatus, Vote,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type ShardEngine = Engine<MemoryTables, Wal<MemoryStorage>>;

const SHARDS: usize = 3;
/// Accounts `1..=ACCOUNTS`; account `a` lives on shard `a % SHARDS`.
const ACCOUNTS: AccountId = 12;
const INITIAL_DEPOSIT: Amount = 1_000;
/// Fresh clusters per test run, and random operations on each.
const ITERATIONS: usize = 40;
const OPERATIONS_PER_ITERATION: usize = 120;
/// Chance that power is lost during or right after any one engine call that changes state.
const STEP_CRASH_PROBABILITY: f64 = 0.025;
/// Chance per operation that a quiescent shard (or the whole cluster) loses power.
const IDLE_CRASH_PROBABILITY: f64 = 0.02;
/// Crashes one operation (and one recovery) may suffer, so that recovery always ends.
const CRASHES_PER_OPERATION_MAX: u32 = 2;
const CRASHES_PER_RECOVERY_MAX: u32 = 2;
/// Transfers in one cross-shard batch.
const BATCH_TRANSFERS_MAX: usize = 5;
/// Lines of the event trace shown when an invariant fails.
const TRACE_LINES: usize = 80;

fn shard_of(account: AccountId) -> usize {
    (account % SHARDS as u64) as usize
}

fn accounts_of(shard: usize) -> Vec<AccountId> {
    (1..=ACCOUNTS)
        .filter(|account| shard_of(*account) == shard)
        .collect()
}

fn wal_options() -> WalOptions {
    // The smallest segments: groups cross segment boundaries and checkpoints delete segments
    // often, so crashes also land around rotation and truncation.
    small_segment_wal_options(4096)
}

/// How power loss strikes the shard running one engine call. The call's answer is lost in
/// every case: nobody hears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Strike {
    /// The call's WAL write fails: none of its records reach the storage.
    BeforeWrite,
    /// The call's group is written but its fdatasync fails: the crash image keeps none of it
    /// (DropUnsynced) or a prefix (KeepUnsyncedPrefix): whole records never acknowledged, and
    /// maybe a torn one.
    BeforeSync,
    /// The group is durable but applying it to the tables fails: replay has to apply it.
    BeforeApply,
    /// The call completes; the power goes before its answer leaves the machine.
    AfterReturn,
}

const STRIKES: [Strike; 4] = [
    Strike::BeforeWrite,
    Strike::BeforeSync,
    Strike::BeforeApply,
    Strike::AfterReturn,
];

/// What a client heard of a transfer id, and what it asked for.
#[derive(Debug, Clone)]
struct TransferEntry {
    debit: AccountId,
    credit: AccountId,
    amount: Amount,
    /// The outcome a client heard (directly, on a retry, or from `transfer_status` after a
    /// crash). `None`: every attempt was cut by a crash; it may or may not have happened.
    heard: Option<Outcome>,
}

impl TransferEntry {
    fn is_cross_shard(&self) -> bool {
        shard_of(self.debit) != shard_of(self.credit)
    }

    fn coordinator(&self) -> usize {
        shard_of(self.debit)
    }

    fn transfer(&self) -> Transfer {
        Transfer {
            debit: self.debit,
            credit: self.credit,
            amount: self.amount,
        }
    }
}

/// A deposit or withdrawal a client sent.
#[derive(Debug, Clone, Copy)]
struct Cash {
    id: MovementId,
    account: AccountId,
    amount: Amount,
    deposit: bool,
}

impl Cash {
    fn kind(&self) -> MovementKind {
        if self.deposit {
            MovementKind::Deposit
        } else {
            MovementKind::Withdrawal
        }
    }
}

/// What the clients know: the test's model of the acknowledged state.
#[derive(Debug, Default, Clone)]
struct Ledger {
    deposited: BTreeMap<AccountId, u128>,
    withdrawn: BTreeMap<AccountId, u128>,
    /// At most one at a time: the operation that was cut, until the next check resolves it.
    unknown_cash: Vec<Cash>,
    /// Deposits and withdrawals whose answer a client heard (or learned by resending them).
    heard_cash: Vec<(Cash, MovementOutcome)>,
    transfers: BTreeMap<TransferId, TransferEntry>,
    next_id: TransferId,
}

impl Ledger {
    /// A fresh id; deposits, withdrawals and transfers share the counter, as they share one
    /// namespace per shard.
    fn new_id(&mut self) -> u128 {
        self.next_id += 1;
        self.next_id
    }

    fn new_transfer(&mut self, debit: AccountId, credit: AccountId, amount: Amount) -> TransferId {
        self.next_id += 1;
        let id = self.next_id;
        self.transfers.insert(
            id,
            TransferEntry {
                debit,
                credit,
                amount,
                heard: None,
            },
        );
        id
    }
}

/// What the shards say after recovery, read once per check.
#[derive(Debug, Clone)]
struct Observed {
    balances: BTreeMap<AccountId, Amount>,
    audits: Vec<ShardAudit>,
    in_doubt: Vec<usize>,
    unended: Vec<usize>,
    /// A shared lock on every account of the shard was granted at once: no lock leaked.
    locks_free: Vec<bool>,
    transfers: BTreeMap<TransferId, ObservedTransfer>,
}

#[derive(Debug, Clone)]
struct ObservedTransfer {
    /// The coordinator's (debit shard's) logged decision.
    decision: Option<CoordinatorDecision>,
    debit_side: TransferStatus,
    credit_side: TransferStatus,
}

/// How the checker resolved what the clients did not hear.
#[derive(Debug, Default)]
struct Resolution {
    /// Per transfer: the outcome the shards agree on; `None` when it never happened.
    outcomes: BTreeMap<TransferId, Option<Outcome>>,
    /// Per unknown deposit or withdrawal (same order as the ledger's): it was applied.
    cash_applied: Vec<bool>,
}

fn status_outcome(status: &TransferStatus) -> Option<Outcome> {
    match status {
        TransferStatus::Decided(record) => Some(record.outcome),
        TransferStatus::Prepared(_) | TransferStatus::Unknown => None,
    }
}

/// Checks every invariant of the acknowledged state against what the shards say; returns how
/// unknown outcomes resolved, and every violation found.
fn check_invariants(ledger: &Ledger, observed: &Observed) -> (Resolution, Vec<String>) {
    let mut violations = Vec::new();
    let mut resolution = Resolution::default();

    // Shard by shard: books balanced, nothing left in doubt or unended, no lock leaked.
    for (shard, audit) in observed.audits.iter().enumerate() {
        if !audit.is_balanced() {
            violations.push(format!("shard {shard}: books do not balance: {audit:?}"));
        }
        if audit.in_doubt != 0 || observed.in_doubt[shard] != 0 {
            violations.push(format!(
                "shard {shard}: {} prepared transactions in the tables, {} in doubt after recovery",
                audit.in_doubt, observed.in_doubt[shard]
            ));
        }
        if observed.unended[shard] != 0 {
            violations.push(format!(
                "shard {shard}: {} decisions still unended after recovery",
                observed.unended[shard]
            ));
        }
        if !observed.locks_free[shard] {
            violations.push(format!(
                "shard {shard}: a lock is still held after recovery"
            ));
        }
    }

    // Deposits and withdrawals cut by a crash: the shard's totals say whether they happened.
    let mut deposited = ledger.deposited.clone();
    let mut withdrawn = ledger.withdrawn.clone();
    let shard_sum = |map: &BTreeMap<AccountId, u128>, shard: usize| -> u128 {
        map.iter()
            .filter(|(account, _)| shard_of(**account) == shard)
            .map(|(_, amount)| amount)
            .sum()
    };
    for cash in &ledger.unknown_cash {
        let shard = shard_of(cash.account);
        let (map, total) = if cash.deposit {
            (&mut deposited, observed.audits[shard].totals.deposited)
        } else {
            (&mut withdrawn, observed.audits[shard].totals.withdrawn)
        };
        let applied = total == shard_sum(map, shard) + u128::from(cash.amount);
        if applied {
            *map.entry(cash.account).or_default() += u128::from(cash.amount);
        }
        resolution.cash_applied.push(applied);
    }
    for shard in 0..SHARDS {
        let totals = observed.audits[shard].totals;
        if totals.deposited != shard_sum(&deposited, shard) {
            violations.push(format!(
                "shard {shard}: deposited {} but the clients deposited {}",
                totals.deposited,
                shard_sum(&deposited, shard)
            ));
        }
        if totals.withdrawn != shard_sum(&withdrawn, shard) {
            violations.push(format!(
                "shard {shard}: withdrawn {} but the clients withdrew {}",
                totals.withdrawn,
                shard_sum(&withdrawn, shard)
            ));
        }
    }

    // Transfer by transfer: what the shards agree on, against what the client heard.
    let mut expected: BTreeMap<AccountId, i128> = (1..=ACCOUNTS)
        .map(|account| {
            let cash = i128::try_from(*deposited.get(&account).unwrap_or(&0)).unwrap()
                - i128::try_from(*withdrawn.get(&account).unwrap_or(&0)).unwrap();
            (account, cash)
        })
        .collect();
    for (id, entry) in &ledger.transfers {
        let Some(seen) = observed.transfers.get(id) else {
            violations.push(format!("transfer {id}: not observed"));
            continue;
        };
        let content = entry.transfer();
        let resolved = if entry.is_cross_shard() {
            resolve_cross_shard(*id, content, seen, &mut violations)
        } else {
            resolve_local(*id, content, &seen.debit_side, &mut violations)
        };
        if let Some(heard) = entry.heard
            && resolved != Some(heard)
        {
            violations.push(format!(
                "transfer {id}: the client heard {heard:?}, after recovery the shards say {resolved:?}"
            ));
        }
        if resolved == Some(Outcome::Committed) {
            *expected.get_mut(&entry.debit).unwrap() -= i128::from(entry.amount);
            *expected.get_mut(&entry.credit).unwrap() += i128::from(entry.amount);
        }
        resolution.outcomes.insert(*id, resolved);
    }

    // Account by account: every committed transfer applied exactly once, nothing else.
    for (account, expected) in &expected {
        let balance = observed.balances.get(account).copied();
        if balance.map(i128::from) != Some(*expected) {
            violations.push(format!(
                "account {account}: balance {balance:?}, expected {expected} from the acknowledged \
                 deposits, withdrawals and committed transfers"
            ));
        }
    }

    // The cluster as a whole: money neither created nor destroyed.
    let balances: u128 = observed.audits.iter().map(|audit| audit.balance_sum).sum();
    let credited: u128 = observed
        .audits
        .iter()
        .map(|audit| audit.totals.credited_by_transactions)
        .sum();
    let debited: u128 = observed
        .audits
        .iter()
        .map(|audit| audit.totals.debited_by_transactions)
        .sum();
    let cash_in: u128 = deposited.values().sum();
    let cash_out: u128 = withdrawn.values().sum();
    if credited != debited || balances + cash_out != cash_in {
        violations.push(format!(
            "money not conserved: balances {balances}, deposited {cash_in}, withdrawn {cash_out}, \
             credited by 2PC {credited}, debited by 2PC {debited}"
        ));
    }
    (resolution, violations)
}

/// A one-phase transfer's outcome is its record at its shard.
fn resolve_local(
    id: TransferId,
    content: Transfer,
    status: &TransferStatus,
    violations: &mut Vec<String>,
) -> Option<Outcome> {
    match status {
        TransferStatus::Decided(record) => {
            if record.transfer != Some(content) {
                violations.push(format!("transfer {id}: recorded as {record:?}"));
            }
            Some(record.outcome)
        }
        TransferStatus::Prepared(_) => {
            violations.push(format!("local transfer {id}: prepared in 2PC"));
            None
        }
        TransferStatus::Unknown => None,
    }
}

/// A cross-shard transfer's outcome is the coordinator's decision; both shards must agree.
fn resolve_cross_shard(
    id: TransferId,
    content: Transfer,
    seen: &ObservedTransfer,
    violations: &mut Vec<String>,
) -> Option<Outcome> {
    let resolved = seen.decision.as_ref().map(|decision| {
        // A presumed abort does not know the transfer's content.
        if decision
            .transfer
            .is_some_and(|transfer| transfer != content)
        {
            violations.push(format!("transfer {id}: decided as {decision:?}"));
        }
        decision.outcome
    });
    for (side, status) in [("debit", &seen.debit_side), ("credit", &seen.credit_side)] {
        match (status, status_outcome(status)) {
            (TransferStatus::Prepared(_), _) => {
                violations.push(format!("transfer {id}: still prepared at the {side} shard"));
            }
            (_, Some(applied)) if resolved.is_none() => violations.push(format!(
                "transfer {id}: the {side} shard applied {applied:?} but the coordinator has no \
                 decision"
            )),
            (_, Some(Outcome::Committed)) if resolved != Some(Outcome::Committed) => {
                violations.push(format!(
                    "transfer {id}: committed at the {side} shard, decided {resolved:?}"
                ));
            }
            (_, Some(Outcome::Aborted(_))) | (_, None) if resolved == Some(Outcome::Committed) => {
                violations.push(format!(
                    "transfer {id}: decided commit, but the {side} shard says {status:?}"
                ));
            }
            _ => {}
        }
    }
    resolved
}

/// Counters printed at the end of a run: which crash points were hit, what recovery did.
#[derive(Debug, Default)]
struct Stats {
    /// (step, strike) → crashes.
    crash_points: BTreeMap<(&'static str, Strike), u64>,
    idle_crashes: u64,
    whole_cluster_crashes: u64,
    shard_power_losses: u64,
    torn_images: u64,
    torn_tails_dropped: u64,
    records_replayed: u64,
    in_doubt_at_open: u64,
    presumed_aborts: u64,
    decisions_resent: u64,
    segments_deleted: u64,
    checks: u64,
    retries_checked: u64,
    transfers_heard: u64,
    transfers_resolved_after_crash: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(formatter, "crash points hit (step, strike: count):")?;
        for ((step, strike), count) in &self.crash_points {
            writeln!(formatter, "  {step:<40} {strike:<12?} {count}")?;
        }
        writeln!(
            formatter,
            "idle crashes {}, whole-cluster crashes {}, shard power losses {} ({} torn images, \
             {} torn tails dropped at open)",
            self.idle_crashes,
            self.whole_cluster_crashes,
            self.shard_power_losses,
            self.torn_images,
            self.torn_tails_dropped
        )?;
        write!(
            formatter,
            "records replayed {}, in doubt at open {}, presumed aborts {}, decisions resent {}, \
             WAL segments deleted by checkpoints {}, checks {}, retries checked {}, outcomes \
             heard {}, resolved after a crash {}",
            self.records_replayed,
            self.in_doubt_at_open,
            self.presumed_aborts,
            self.decisions_resent,
            self.segments_deleted,
            self.checks,
            self.retries_checked,
            self.transfers_heard,
            self.transfers_resolved_after_crash
        )
    }
}

/// One shard: its storage and tables as a restarted machine would find them, and its engine
/// while powered.
struct Shard {
    storage: MemoryStorage,
    tables: MemoryTables,
    engine: Option<ShardEngine>,
    /// The shard's coordinator core while powered.
    core: Option<Coordinator>,
}

type Checked<T> = Result<T, String>;

fn ok<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> Checked<T> {
    result.map_err(|error| format!("{what}: unexpected engine error: {error}"))
}

/// Three shards, the clients' ledger, and the seeded generator every choice comes from.
struct Cluster {
    shards: Vec<Shard>,
    random: StdRng,
    ledger: Ledger,
    stats: Stats,
    crash_probability: f64,
    /// Crashes the current operation or recovery may still suffer.
    crash_budget: u32,
    trace: VecDeque<String>,
    /// The cores' clock: one second per operation and per recovery round, so that every
    /// unacknowledged decision is due for a resend at the next one.
    clock: Time,
    next_token: u64,
    /// Answers the cores released: to clients, and to inquiries.
    answers: BTreeMap<ClientToken, Answer>,
    inquiry_answers: BTreeMap<InquiryToken, Vec<Verdict>>,
}

impl Cluster {
    /// A cluster with every account created and funded (no crashes during setup).
    fn new(seed: u64, crash_probability: f64) -> Checked<Cluster> {
        let mut cluster = Cluster {
            shards: Vec::new(),
            random: StdRng::seed_from_u64(seed),
            ledger: Ledger::default(),
            stats: Stats::default(),
            crash_probability,
            crash_budget: 0,
            trace: VecDeque::new(),
            clock: Time::ZERO,
            next_token: 0,
            answers: BTreeMap::new(),
            inquiry_answers: BTreeMap::new(),
        };
        for shard in 0..SHARDS {
            cluster.shards.push(Shard {
                storage: MemoryStorage::new(),
                tables: MemoryTables::new(),
                engine: None,
                core: None,
            });
            cluster.power_on(shard)?;
        }
        for account in 1..=ACCOUNTS {
            let id = cluster.ledger.new_id();
            let engine = cluster.engine(shard_of(account));
            ok(engine.create_account(account, None, 0, 0), "create account")?;
            ok(engine.deposit(id, account, INITIAL_DEPOSIT), "deposit")?;
            cluster
                .ledger
                .deposited
                .insert(account, u128::from(INITIAL_DEPOSIT));
        }
        Ok(cluster)
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn is_up(&self, shard: usize) -> bool {
        self.shards[shard].engine.is_some()
    }

    fn all_up(&self) -> bool {
        (0..SHARDS).all(|shard| self.is_up(shard))
    }

    fn engine(&self, shard: usize) -> &ShardEngine {
        self.shards[shard]
            .engine
            .as_ref()
            .expect("the shard is powered")
    }

    /// Reopens a shard from what survived: WAL recovery, then engine replay.
    fn power_on(&mut self, shard: usize) -> Checked<()> {
        let node = &self.shards[shard];
        let (wal, wal_report) =
            Wal::open(node.storage.clone(), wal_options()).map_err(|error| {
                format!("shard {shard}: WAL does not open after the crash: {error}")
            })?;
        let (engine, report) =
            Engine::open(wal, node.tables.clone(), single_threaded_engine_options()).map_err(
                |error| format!("shard {shard}: engine does not open after the crash: {error}"),
            )?;
        let unended = ok(engine.unended_decisions(), "unended decisions")?;
        self.stats.decisions_resent += unended.len() as u64;
        let limits = CoordinatorLimits {
            batch_transfers_max: BATCH_TRANSFERS_MAX,
            ..CoordinatorLimits::default()
        };
        self.shards[shard].core = Some(Coordinator::new(
            shard as NodeId,
            limits,
            unended,
            self.clock,
        ));
        self.shards[shard].engine = Some(engine);
        if wal_report.torn_bytes_dropped > 0 {
            self.stats.torn_tails_dropped += 1;
        }
        self.stats.records_replayed += report.records_replayed;
        self.stats.in_doubt_at_open += report.in_doubt.len() as u64;
        self.note(format!(
            "  shard {shard} up: WAL {}..={} ({} torn bytes dropped), tables at {}, {} replayed, \
             {} in doubt",
            wal_report.first_lsn,
            wal_report.last_lsn,
            wal_report.torn_bytes_dropped,
            report.applied_lsn_before,
            report.records_replayed,
            report.in_doubt.len()
        ));
        Ok(())
    }

    /// Power loss at a shard: the storage keeps what was synced (and perhaps a prefix of what
    /// was not), the tables what was flushed; the engine and everything in its memory is gone.
    fn power_off(&mut self, shard: usize) {
        let mode = if self.random.random_bool(0.5) {
            CrashMode::DropUnsynced
        } else {
            self.stats.torn_images += 1;
            CrashMode::KeepUnsyncedPrefix {
                seed: self.random.random(),
            }
        };
        let node = &mut self.shards[shard];
        // The images are taken first: dropping the engine would write and sync what it queued.
        let storage = node.storage.crash(mode);
        let tables = node.tables.crash();
        node.engine = None;
        node.core = None;
        node.storage = storage;
        node.tables = tables;
        self.stats.shard_power_losses += 1;
        self.note(format!("  shard {shard} loses power ({mode:?})"));
    }

    fn whole_cluster_loses_power(&mut self) {
        self.stats.whole_cluster_crashes += 1;
        for shard in 0..SHARDS {
            if self.is_up(shard) {
                self.power_off(shard);
            }
        }
    }

    /// Whether power is lost at the next engine call, and how; and whether the whole cluster
    /// goes with it.
    fn plan_strike(&mut self) -> Option<(Strike, bool)> {
        if self.crash_budget == 0 || !self.random.random_bool(self.crash_probability) {
            return None;
        }
        self.crash_budget -= 1;
        let strike = STRIKES[self.random.random_range(0..STRIKES.len())];
        Some((strike, self.random.random_bool(0.2)))
    }

    /// Runs one state-changing engine call at `shard`, which may be cut by power loss (see
    /// [`Strike`]). `None`: the shard is down, or lost power during the call and its answer
    /// with it.
    fn call<R>(
        &mut self,
        shard: usize,
        step: &'static str,
        run: impl FnOnce(&ShardEngine) -> R,
    ) -> Option<R> {
        if !self.is_up(shard) {
            return None;
        }
        let Some((strike, whole_cluster)) = self.plan_strike() else {
            return Some(run(self.engine(shard)));
        };
        let node = &self.shards[shard];
        // Armed just before the call and never disarmed: the shard is crashed right after, and
        // the crash image is a fresh storage with no faults. The storage's fault counters are
        // shared with the WAL's preallocator thread, but "the next write (sync) and every later
        // one" fails the call's own write (sync) whichever thread meets the fault first, so the
        // crash image does not depend on timing. (Faults further out, e.g. between the syncs of
        // a segment rotation, would: the preallocator's sync could take the count.)
        match strike {
            Strike::BeforeWrite => node.storage.fail_write_after(1),
            Strike::BeforeSync => node.storage.fail_sync_after(1),
            Strike::BeforeApply => node.tables.fail_writes(),
            Strike::AfterReturn => {}
        }
        drop(run(self.engine(shard)));
        *self.stats.crash_points.entry((step, strike)).or_default() += 1;
        self.note(format!(
            "  crash at shard {shard}: {step}, {strike:?}{}",
            if whole_cluster { ", whole cluster" } else { "" }
        ));
        self.power_off(shard);
        if whole_cluster {
            self.whole_cluster_loses_power();
        }
        None
    }

    /// A client hears an outcome: if it heard one before, it must be the same.
    fn hear(&mut self, id: TransferId, outcome: Outcome) -> Checked<()> {
        let entry = self.ledger.transfers.get_mut(&id).expect("registered");
        match entry.heard {
            Some(earlier) if earlier != outcome => {
                return Err(format!(
                    "transfer {id}: the client heard {earlier:?} before, now {outcome:?}"
                ));
            }
            _ => entry.heard = Some(outcome),
        }
        self.stats.transfers_heard += 1;
        self.note(format!("  transfer {id}: heard {outcome:?}"));
        Ok(())
    }

    // ---- Operations of the driver, each as the node runs it. ----

    fn random_operation(&mut self) -> Checked<()> {
        self.crash_budget = CRASHES_PER_OPERATION_MAX;
        self.clock = self.clock + Duration::from_secs(1);
        match self.random.random_range(0..100) {
            0..35 => self.local_transfer(),
            35..80 => self.random_cross_shard_batch(),
            80..88 => self.cash(),
            88..97 => {
                let shard = self.random.random_range(0..SHARDS);
                self.note(format!("checkpoint shard {shard}"));
                if let Some(result) = self.call(shard, "checkpoint", ShardEngine::checkpoint) {
                    self.stats.segments_deleted += ok(result, "checkpoint")? as u64;
                }
                Ok(())
            }
            _ => Ok(()),
        }?;
        if self.all_up() && self.random.random_bool(IDLE_CRASH_PROBABILITY) {
            // Nothing is in flight: only the tables' unflushed state is lost.
            self.stats.idle_crashes += 1;
            if self.random.random_bool(0.3) {
                self.note("idle crash of the whole cluster".into());
                self.whole_cluster_loses_power();
            } else {
                let shard = self.random.random_range(0..SHARDS);
                self.note(format!("idle crash of shard {shard}"));
                self.power_off(shard);
            }
        }
        if !self.all_up() {
            self.recover()?;
            self.check()?;
        }
        Ok(())
    }

    /// A same-shard transfer: the engine's one phase. Sometimes a client's retry of an earlier
    /// one (same id and content), which must not run twice.
    fn local_transfer(&mut self) -> Checked<()> {
        let retry = self.pick_transfer(false);
        let id = match retry {
            Some(id) => id,
            None => {
                let shard = self.random.random_range(0..SHARDS);
                let accounts = accounts_of(shard);
                let debit = accounts[self.random.random_range(0..accounts.len())];
                let credit = loop {
                    let credit = accounts[self.random.random_range(0..accounts.len())];
                    if credit != debit {
                        break credit;
                    }
                };
                let amount = self.random.random_range(1..400);
                self.ledger.new_transfer(debit, credit, amount)
            }
        };
        let entry = self.ledger.transfers[&id].clone();
        let shard = shard_of(entry.debit);
        self.note(format!(
            "local transfer {id}{}: {} -> {} ({})",
            if retry.is_some() { " (retry)" } else { "" },
            entry.debit,
            entry.credit,
            entry.amount
        ));
        let answer = self
            .run_transfers(shard, &[(id, entry.transfer())])?
            .remove(&id);
        match answer {
            Some(Ok(outcome)) => self.hear(id, outcome),
            Some(Err(Refusal::DuplicateWithDifferentContent)) => Err(format!(
                "local transfer {id}: a retry with the same content is refused as a duplicate"
            )),
            Some(Err(refusal)) => Err(format!("local transfer {id}: refused: {refusal:?}")),
            // The shard lost power: the client heard nothing.
            None => Ok(()),
        }
    }

    /// An earlier transfer of the given kind to resend, sometimes.
    fn pick_transfer(&mut self, cross_shard: bool) -> Option<TransferId> {
        if self.ledger.transfers.is_empty() || !self.random.random_bool(0.15) {
            return None;
        }
        let candidates: Vec<TransferId> = self
            .ledger
            .transfers
            .iter()
            .filter(|(_, entry)| entry.is_cross_shard() == cross_shard)
            .map(|(id, _)| *id)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.random.random_range(0..candidates.len())])
    }

    fn random_cross_shard_batch(&mut self) -> Checked<()> {
        let coordinator = self.random.random_range(0..SHARDS);
        let mut batch: Vec<TransferId> = Vec::new();
        for _ in 0..self.random.random_range(1..=BATCH_TRANSFERS_MAX) {
            if let Some(id) = self.pick_transfer(true)
                && self.ledger.transfers[&id].coordinator() == coordinator
                && !batch.contains(&id)
            {
                batch.push(id);
                continue;
            }
            let debits = accounts_of(coordinator);
            let debit = debits[self.random.random_range(0..debits.len())];
            let credit = loop {
                let credit = self.random.random_range(1..=ACCOUNTS);
                if shard_of(credit) != coordinator {
                    break credit;
                }
            };
            let amount = self.random.random_range(1..400);
            batch.push(self.ledger.new_transfer(debit, credit, amount));
        }
        self.cross_shard_batch(coordinator, &batch)
    }

    /// Sends transfers (all debiting accounts of `coordinator`) to its core and carries out
    /// whatever it releases until it is idle; returns the answers the clients got (none for a
    /// transfer whose coordinator lost power first).
    fn run_transfers(
        &mut self,
        coordinator: usize,
        transfers: &[(TransferId, Transfer)],
    ) -> Checked<BTreeMap<TransferId, Answer>> {
        let mut tokens = Vec::new();
        for &(id, transfer) in transfers {
            let request = TransferRequest {
                id,
                transfer,
                credit_node: shard_of(transfer.credit) as NodeId,
            };
            self.next_token += 1;
            let token = ClientToken(self.next_token);
            tokens.push((id, token));
            let Some(core) = self.shards[coordinator].core.as_mut() else {
                return Ok(BTreeMap::new());
            };
            core.transfer(token, request);
        }
        self.drive(coordinator, false)?;
        Ok(tokens
            .into_iter()
            .filter_map(|(id, token)| self.answers.remove(&token).map(|answer| (id, answer)))
            .collect())
    }

    /// A batch of cross-shard transfers, all debiting accounts of `coordinator`, through the
    /// real coordinator core: dedupe, prepare at every credit shard and locally, log every
    /// decision with the coordinator's own part, answer the clients, deliver phase two, end what
    /// was acknowledged. Every engine call may be cut by power loss; a participant that loses
    /// power counts as a missing vote, the coordinator losing power abandons the batch (its
    /// clients hear nothing).
    fn cross_shard_batch(&mut self, coordinator: usize, batch: &[TransferId]) -> Checked<()> {
        self.note(format!(
            "cross-shard batch at shard {coordinator}: {batch:?}"
        ));
        let transfers: Vec<(TransferId, Transfer)> = batch
            .iter()
            .map(|id| (*id, self.ledger.transfers[id].transfer()))
            .collect();
        for (id, answer) in self.run_transfers(coordinator, &transfers)? {
            match answer {
                Ok(outcome) => self.hear(id, outcome)?,
                Err(Refusal::DuplicateWithDifferentContent) => {
                    return Err(format!(
                        "transfer {id}: a retry with the same content is refused as a duplicate"
                    ));
                }
                Err(refusal) => return Err(format!("transfer {id}: refused: {refusal:?}")),
            }
        }
        Ok(())
    }

    /// Carries out the effects `coordinator`'s core releases, each at once as one engine call
    /// (at the shard it concerns), feeding the results back, until the core is idle or the
    /// coordinator loses power.
    fn drive(&mut self, coordinator: usize, recovery: bool) -> Checked<()> {
        let me = coordinator as NodeId;
        for _ in 0..1_000 {
            let clock = self.clock;
            let Some(core) = self.shards[coordinator].core.as_mut() else {
                return Ok(());
            };
            let effects = core.take_ready(clock);
            if effects.is_empty() {
                return Ok(());
            }
            for effect in effects {
                if self.shards[coordinator].core.is_none() {
                    self.note(format!(
                        "  shard {coordinator}: the rest is lost with its power"
                    ));
                    return Ok(());
                }
                self.carry_out(me, effect, recovery)?;
            }
        }
        Err(format!(
            "shard {coordinator}: the coordinator core never goes idle"
        ))
    }

    /// The shard's core; `None` when it lost power (with the whole cluster, perhaps while
    /// another shard's engine call was struck): the rest of its work is lost with it.
    fn core(&mut self, shard: usize) -> Option<&mut Coordinator> {
        self.shards[shard].core.as_mut()
    }

    fn carry_out(&mut self, me: NodeId, effect: Effect, recovery: bool) -> Checked<()> {
        let coordinator = me as usize;
        match effect {
            Effect::LookUp { ids } => {
                for id in ids {
                    let known = self.engine(coordinator).look_up(id).map_err(Arc::new);
                    let Some(core) = self.core(coordinator) else {
                        return Ok(());
                    };
                    core.looked_up(id, known);
                }
            }
            Effect::RunLocal { id, transfer } => {
                let Some(result) = self.call(coordinator, "local transfer", |engine| {
                    engine.local_transfer(id, transfer.debit, transfer.credit, transfer.amount)
                }) else {
                    return Ok(());
                };
                let answer = match result {
                    Err(LocalTransferError::DuplicateWithDifferentContent(_)) => {
                        Err(Refusal::DuplicateWithDifferentContent)
                    }
                    other => Ok(ok(other, "local transfer")?),
                };
                if let Some(core) = self.core(coordinator) {
                    core.local_done(id, answer);
                }
            }
            Effect::Prepare {
                batch,
                participant,
                entries,
            } => {
                let requests: Vec<PrepareRequest> =
                    entries.iter().map(|entry| entry.request(me)).collect();
                let step = if participant == me {
                    "coordinator: prepare"
                } else {
                    "participant: prepare"
                };
                let answer = self.call(participant as usize, step, |engine| {
                    engine.prepare(&requests)
                });
                let votes = match answer {
                    Some(result) => Ok((
                        requests
                            .iter()
                            .map(|request| request.id)
                            .zip(ok(result, step)?)
                            .collect(),
                        self.engine(participant as usize).clock_now(),
                    )),
                    None => Err(VoteFailure::Unreachable {
                        surely_not_applied: false,
                    }),
                };
                if let Some(core) = self.core(coordinator) {
                    core.votes(batch, participant, votes);
                }
            }
            Effect::LogDecisions {
                log,
                decisions,
                local,
                commit_ts,
            } => {
                let presumed = decisions
                    .iter()
                    .filter(|decision| {
                        decision.outcome == Outcome::Aborted(AbortReason::PresumedAbort)
                    })
                    .count();
                let step = if presumed > 0 {
                    "recovery: log presumed abort"
                } else {
                    "coordinator: log decisions"
                };
                let Some(results) = self.call(coordinator, step, |engine| {
                    engine.log_decisions_and_decide(me, decisions, &local, commit_ts)
                }) else {
                    self.note("  decisions lost: the coordinator is down".into());
                    return Ok(());
                };
                for ((id, _), result) in local.iter().zip(ok(results, step)?) {
                    ok(result, &format!("transfer {id}: coordinator's own part"))?;
                }
                self.stats.presumed_aborts += presumed as u64;
                let clock = self.clock;
                if let Some(core) = self.core(coordinator) {
                    core.decisions_logged(log, clock, Ok(()));
                }
            }
            Effect::Answer { client, answer, .. } => {
                self.answers.insert(client, answer);
            }
            Effect::AnswerInquiry { inquiry, decisions } => {
                self.inquiry_answers.insert(inquiry, decisions);
            }
            Effect::SendDecisions {
                delivery,
                participant,
                decisions,
            } => {
                let step = if recovery {
                    "recovery: participant applies resent"
                } else {
                    "participant: apply decisions"
                };
                let results = self.call(participant as usize, step, |engine| {
                    engine.decide_from(me, &decisions)
                });
                let mut acknowledged = Vec::new();
                if let Some(results) = results {
                    for ((id, outcome, _), result) in decisions.iter().zip(ok(results, step)?) {
                        ok(
                            result,
                            &format!("transfer {id}: shard {participant} refuses {outcome:?}"),
                        )?;
                        acknowledged.push(*id);
                    }
                }
                if let Some(core) = self.core(coordinator) {
                    core.delivered(delivery, acknowledged);
                }
            }
            Effect::LogEnded { ids } => {
                if let Some(result) =
                    self.call(coordinator, "coordinator: end decisions", |engine| {
                        engine.end_decisions(&ids)
                    })
                {
                    ok(result, "end decisions")?;
                }
            }
        }
        Ok(())
    }

    /// A deposit or withdrawal on a random account.
    fn cash(&mut self) -> Checked<()> {
        let cash = Cash {
            id: self.ledger.new_id(),
            account: self.random.random_range(1..=ACCOUNTS),
            amount: self.random.random_range(1..300),
            deposit: self.random.random_bool(0.5),
        };
        self.note(format!(
            "{} {} {} on account {}",
            cash.kind(),
            cash.id,
            cash.amount,
            cash.account
        ));
        let step = if cash.deposit {
            "deposit"
        } else {
            "withdrawal"
        };
        let result = self.call(shard_of(cash.account), step, |engine| {
            engine.move_money(cash.id, cash.account, cash.kind(), cash.amount)
        });
        match result {
            None => self.ledger.unknown_cash.push(cash),
            Some(Ok(outcome)) => self.hear_cash(cash, outcome)?,
            // Funds there but held by pending debits: nothing done, nothing recorded; this client
            // gives up on it.
            Some(Err(MovementError::FundsHeld { .. })) if !cash.deposit => {}
            Some(Err(error)) => return Err(format!("{step}: unexpected engine error: {error}")),
        }
        Ok(())
    }

    /// Books the answer a client heard for a deposit or withdrawal. Only a withdrawal may be
    /// refused, and only for want of funds.
    fn hear_cash(&mut self, cash: Cash, outcome: MovementOutcome) -> Checked<()> {
        match outcome {
            MovementOutcome::Applied { .. } => {
                let map = if cash.deposit {
                    &mut self.ledger.deposited
                } else {
                    &mut self.ledger.withdrawn
                };
                *map.entry(cash.account).or_default() += u128::from(cash.amount);
            }
            MovementOutcome::Refused(RefusalReason::InsufficientFunds) if !cash.deposit => {}
            MovementOutcome::Refused(reason) => {
                return Err(format!("{cash:?}: unexpected refusal: {reason}"));
            }
        }
        self.ledger.heard_cash.push((cash, outcome));
        Ok(())
    }

    // ---- Recovery, as the nodes run it after a restart. ----

    /// Powers every shard on, then repeats until nothing is left to do: coordinators resend
    /// their unended decisions and end the acknowledged ones; participants ask the coordinator
    /// of every in-doubt transaction, which answers from its decision or logs a presumed abort
    /// (a coordinator answers its own shard in place). Any of these calls may lose power too.
    fn recover(&mut self) -> Checked<()> {
        self.crash_budget = CRASHES_PER_RECOVERY_MAX;
        self.note("recovery".into());
        for _round in 0..10 {
            for shard in 0..SHARDS {
                if !self.is_up(shard) {
                    self.power_on(shard)?;
                }
            }
            // Coordinators resend their unacknowledged decisions (all due: the clock moved on).
            self.clock = self.clock + Duration::from_secs(10);
            for coordinator in 0..SHARDS {
                self.drive(coordinator, true)?;
            }
            for participant in 0..SHARDS {
                if !self.is_up(participant) {
                    continue;
                }
                let mut by_coordinator: BTreeMap<usize, Vec<TransferId>> = BTreeMap::new();
                for transaction in self.engine(participant).in_doubt() {
                    by_coordinator
                        .entry(transaction.coordinator as usize)
                        .or_default()
                        .push(transaction.id);
                }
                for (coordinator, ids) in by_coordinator {
                    let asker = if coordinator == participant {
                        Asker::ThisNode
                    } else {
                        Asker::OtherNode
                    };
                    let Some(answers) = self.answer_inquiry(coordinator, &ids, asker)? else {
                        continue;
                    };
                    let from = coordinator as NodeId;
                    if let Some(results) =
                        self.call(participant, "recovery: participant applies answer", |e| {
                            e.decide_from(from, &answers)
                        })
                    {
                        for ((id, outcome, _), result) in
                            answers.iter().zip(ok(results, "apply answer")?)
                        {
                            ok(
                                result,
                                &format!("transfer {id}: shard {participant} refuses {outcome:?}"),
                            )?;
                        }
                    }
                }
            }
            if self.all_up() && self.settled()? {
                return Ok(());
            }
        }
        Err("recovery does not converge".into())
    }

    /// No shard has an in-doubt transaction or an unended decision.
    fn settled(&self) -> Checked<bool> {
        for shard in 0..SHARDS {
            let engine = self.engine(shard);
            let core = self.shards[shard].core.as_ref().expect("powered");
            if !engine.in_doubt().is_empty()
                || !ok(engine.unended_decisions(), "unended decisions")?.is_empty()
                || core.in_flight_count() > 0
                || core.unended_count() > 0
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The coordinator core's answer to an inquiry: the logged decisions, and presumed aborts
    /// logged first for what it never decided. `None` when the coordinator is down or loses
    /// power before answering.
    fn answer_inquiry(
        &mut self,
        coordinator: usize,
        ids: &[TransferId],
        asker: Asker,
    ) -> Checked<Option<Vec<Verdict>>> {
        let Some(core) = self.shards[coordinator].core.as_mut() else {
            return Ok(None);
        };
        self.next_token += 1;
        let inquiry = InquiryToken(self.next_token);
        core.inquiry(inquiry, ids.to_vec(), asker);
        self.drive(coordinator, true)?;
        Ok(self.inquiry_answers.remove(&inquiry))
    }

    // ---- Checks. ----

    fn observe(&self) -> Checked<Observed> {
        let mut observed = Observed {
            balances: BTreeMap::new(),
            audits: Vec::new(),
            in_doubt: Vec::new(),
            unended: Vec::new(),
            locks_free: Vec::new(),
            transfers: BTreeMap::new(),
        };
        for shard in 0..SHARDS {
            let engine = self.engine(shard);
            observed.audits.push(ok(engine.audit(), "audit")?);
            observed.in_doubt.push(engine.in_doubt().len());
            observed
                .unended
                .push(ok(engine.unended_decisions(), "unended decisions")?.len());
            let accounts = accounts_of(shard);
            observed
                .locks_free
                .push(engine.fence_settled(&engine.read_fence(None), Some(&accounts)));
            for account in accounts {
                observed
                    .balances
                    .insert(account, ok(engine.balance(account), "balance")?);
            }
        }
        for (id, entry) in &self.ledger.transfers {
            let debit_shard = self.engine(shard_of(entry.debit));
            let credit_shard = self.engine(shard_of(entry.credit));
            observed.transfers.insert(
                *id,
                ObservedTransfer {
                    decision: ok(debit_shard.decision(*id), "decision")?,
                    debit_side: ok(debit_shard.transfer_status(*id), "status")?,
                    credit_side: ok(credit_shard.transfer_status(*id), "status")?,
                },
            );
        }
        Ok(observed)
    }

    fn violations(&self) -> Checked<Vec<String>> {
        Ok(check_invariants(&self.ledger, &self.observe()?).1)
    }

    /// After recovery: every invariant, then what the clients learn about what they did not
    /// hear (`transfer_status`), then retries of everything they heard.
    fn check(&mut self) -> Checked<()> {
        self.stats.checks += 1;
        let observed = self.observe()?;
        let (resolution, violations) = check_invariants(&self.ledger, &observed);
        if !violations.is_empty() {
            return Err(format!(
                "invariants violated:\n  {}",
                violations.join("\n  ")
            ));
        }
        // A client that heard nothing resends with the same id. One the shard applied must be
        // answered as applied, and not applied again (the next check's totals would show it);
        // one that never became durable is done now, for the first time.
        for (cash, applied) in std::mem::take(&mut self.ledger.unknown_cash)
            .into_iter()
            .zip(resolution.cash_applied)
        {
            let engine = self.engine(shard_of(cash.account));
            let answer = ok(
                engine.move_money(cash.id, cash.account, cash.kind(), cash.amount),
                "resent deposit or withdrawal",
            )?;
            let answered_applied = matches!(answer, MovementOutcome::Applied { .. });
            if applied && !answered_applied {
                return Err(format!(
                    "{cash:?}: applied before the crash, but its resend is answered {answer:?}"
                ));
            }
            self.hear_cash(cash, answer)?;
        }
        for (id, resolved) in resolution.outcomes {
            let entry = self.ledger.transfers.get_mut(&id).expect("from the ledger");
            if entry.heard.is_none() && resolved.is_some() {
                entry.heard = resolved;
                self.stats.transfers_resolved_after_crash += 1;
            }
        }
        self.check_retries()
    }

    /// A retry of a transfer, deposit or withdrawal whose outcome a client heard gets the same
    /// outcome and changes nothing; reusing an id for other content is refused.
    fn check_retries(&mut self) -> Checked<()> {
        for (cash, outcome) in self.ledger.heard_cash.clone() {
            let engine = self.engine(shard_of(cash.account));
            let next_lsn = engine.wal().next_lsn();
            let different = engine.move_money(cash.id, cash.account, cash.kind(), cash.amount + 1);
            if !matches!(
                different,
                Err(MovementError::DuplicateWithDifferentContent(_))
            ) {
                return Err(format!(
                    "{cash:?}: reused with other content, answered {different:?}"
                ));
            }
            let again = ok(
                engine.move_money(cash.id, cash.account, cash.kind(), cash.amount),
                "retry",
            )?;
            if again != outcome || engine.wal().next_lsn() != next_lsn {
                return Err(format!(
                    "{cash:?}: the client heard {outcome:?}, a retry is answered {again:?} \
                     (log {next_lsn} -> {})",
                    engine.wal().next_lsn()
                ));
            }
            self.stats.retries_checked += 1;
        }
        let heard: Vec<(TransferId, TransferEntry, Outcome)> = self
            .ledger
            .transfers
            .iter()
            .filter_map(|(id, entry)| entry.heard.map(|outcome| (*id, entry.clone(), outcome)))
            .collect();
        for (id, entry, outcome) in heard {
            let shard = entry.coordinator();
            // Reusing the id for other content is refused, by the core or the engine.
            let other = Transfer {
                amount: entry.amount + 1,
                ..entry.transfer()
            };
            let different = self.run_transfers(shard, &[(id, other)])?.remove(&id);
            // A presumed abort never knew the content: any reuse of its id hears the abort.
            let expected_refusal = outcome != Outcome::Aborted(AbortReason::PresumedAbort);
            let refused = matches!(different, Some(Err(Refusal::DuplicateWithDifferentContent)));
            if refused != expected_refusal {
                return Err(format!(
                    "transfer {id}: reused with other content, answered {different:?}"
                ));
            }
            let again = match self
                .run_transfers(shard, &[(id, entry.transfer())])?
                .remove(&id)
            {
                Some(Ok(outcome)) => Some(outcome),
                _ => None,
            };
            if again != Some(outcome) {
                return Err(format!(
                    "transfer {id}: the client heard {outcome:?}, a retry is answered {again:?}"
                ));
            }
            self.stats.retries_checked += 1;
        }
        Ok(())
    }

    /// Runs an iteration: random operations, crashes and recoveries, then a last power loss of
    /// the whole cluster and a last check.
    fn run(&mut self, operations: usize) -> Checked<()> {
        for operation in 0..operations {
            self.note(format!("-- operation {operation}"));
            self.random_operation()?;
        }
        self.note("final power loss".into());
        self.whole_cluster_loses_power();
        self.recover()?;
        self.check()
    }
}

#[test]
fn acknowledged_outcomes_survive_power_loss() {
    let seed = test_seed("power_loss");
    let started = Instant::now();
    let mut iterations = StdRng::seed_from_u64(seed);
    let mut totals = Stats::default();
    for iteration in 0..ITERATIONS {
        let iteration_seed: u64 = iterations.random();
        let mut cluster = Cluster::new(iteration_seed, STEP_CRASH_PROBABILITY)
            .unwrap_or_else(|error| panic!("seed {seed} iteration {iteration}: {error}"));
        if let Err(error) = cluster.run(OPERATIONS_PER_ITERATION) {
            let trace: Vec<String> = cluster.trace.iter().cloned().collect();
            panic!(
                "seed {seed} (replay with TALLY_SEED={seed}), iteration {iteration}: {error}\n\
                 last events:\n{}",
                trace.join("\n")
            );
        }
        merge(&mut totals, cluster.stats);
    }
    println!("{totals}");
    println!(
        "power_loss: {ITERATIONS} iterations of {OPERATIONS_PER_ITERATION} operations in {:.2?}",
        started.elapsed()
    );
    // The run must really have crashed at the points it claims to cover.
    for strike in STRIKES {
        assert!(
            totals
                .crash_points
                .iter()
                .any(|((_, hit), count)| *hit == strike && *count > 0),
            "seed {seed}: no crash with {strike:?}"
        );
    }
    assert!(totals.torn_images > 0 && totals.whole_cluster_crashes > 0);
}

fn merge(totals: &mut Stats, stats: Stats) {
    for (point, count) in stats.crash_points {
        *totals.crash_points.entry(point).or_default() += count;
    }
    totals.idle_crashes += stats.idle_crashes;
    totals.whole_cluster_crashes += stats.whole_cluster_crashes;
    totals.shard_power_losses += stats.shard_power_losses;
    totals.torn_images += stats.torn_images;
    totals.torn_tails_dropped += stats.torn_tails_dropped;
    totals.records_replayed += stats.records_replayed;
    totals.in_doubt_at_open += stats.in_doubt_at_open;
    totals.presumed_aborts += stats.presumed_aborts;
    totals.decisions_resent += stats.decisions_resent;
    totals.segments_deleted += stats.segments_deleted;
    totals.checks += stats.checks;
    totals.retries_checked += stats.retries_checked;
    totals.transfers_heard += stats.transfers_heard;
    totals.transfers_resolved_after_crash += stats.transfers_resolved_after_crash;
}

/// The checker is not vacuous: a doubled credit, a changed outcome and a lost commit are each
/// reported.
#[test]
fn the_checker_reports_a_doubled_credit_a_changed_outcome_and_a_lost_commit() {
    let mut cluster = Cluster::new(7, 0.0).unwrap();
    // Account 1 is on shard 1, account 2 on shard 2: a cross-shard transfer, committed.
    let id = cluster.ledger.new_transfer(1, 2, 100);
    cluster.cross_shard_batch(1, &[id]).unwrap();
    assert_eq!(
        cluster.ledger.transfers[&id].heard,
        Some(Outcome::Committed)
    );
    assert_eq!(cluster.violations().unwrap(), Vec::<String>::new());

    // A changed outcome: the client is told the opposite of what the coordinator decided.
    let mut tampered = cluster.ledger.clone();
    tampered.transfers.get_mut(&id).unwrap().heard =
        Some(Outcome::Aborted(AbortReason::InsufficientFunds));
    let (_, violations) = check_invariants(&tampered, &cluster.observe().unwrap());
    assert!(
        violations
            .iter()
            .any(|violation| violation.contains(&format!("transfer {id}: the client heard"))),
        "{violations:?}"
    );

    // A lost commit: a client heard "committed" for a transfer no shard knows.
    let mut tampered = cluster.ledger.clone();
    let lost = tampered.new_transfer(4, 5, 10);
    tampered.transfers.get_mut(&lost).unwrap().heard = Some(Outcome::Committed);
    let mut observed = cluster.observe().unwrap();
    observed.transfers.insert(
        lost,
        ObservedTransfer {
            decision: None,
            debit_side: TransferStatus::Unknown,
            credit_side: TransferStatus::Unknown,
        },
    );
    let (_, violations) = check_invariants(&tampered, &observed);
    assert!(
        violations
            .iter()
            .any(|violation| violation.contains(&format!("transfer {lost}: the client heard"))),
        "{violations:?}"
    );

    // A doubled credit: the credit shard applies the same credit a second time (as a replay
    // bug or a second delivery under another id would).
    let participant = cluster.engine(2);
    let copy = PrepareRequest {
        id: 1_000_000,
        coordinator: 1,
        operations: vec![Operation {
            account: 2,
            kind: OperationKind::Credit,
            amount: 100,
            counterparty: 1,
        }],
    };
    assert_eq!(participant.prepare(&[copy]).unwrap(), vec![Vote::Yes]);
    participant
        .decide_from(1, &[(1_000_000, Outcome::Committed, 1)])
        .unwrap()
        .into_iter()
        .for_each(|result| result.unwrap());
    let violations = cluster.violations().unwrap();
    assert!(
        violations
            .iter()
            .any(|violation| violation.starts_with("account 2: balance Some(1200), expected 1100")),
        "{violations:?}"
    );
    assert!(
        violations
            .iter()
            .any(|violation| violation.starts_with("money not conserved")),
        "{violations:?}"
    );
}
