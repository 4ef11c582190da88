//! The shard's data model: accounts, transfers and their outcomes, history entries, 2PC
//! operations, and the limits on them that the engine and the wire share (one constant each, so
//! that what the protocol accepts and what the engine stores cannot drift apart). A crate of its
//! own, with no dependencies, so that `net` uses the same limits without depending on the engine.

/// Account identifier, chosen by the client.
pub type AccountId = u64;
/// Transfer identifier, chosen by the client: the idempotency key, and the 2PC transaction id.
pub type TransferId = u128;
/// Deposit or withdrawal identifier, chosen by the client: its idempotency key. One node keeps
/// one namespace for these and for the transfer ids it knows (ARCHITECTURE.md, "Outcomes and
/// idempotency").
pub type MovementId = u128;
/// Node identifier in the cluster file.
pub type NodeId = u32;
/// Amounts and balances, in minor units.
pub type Amount = u64;

/// Longest owner name accepted, in UTF-8 bytes.
pub const OWNER_NAME_MAX_BYTES: u32 = 64;
/// Most history entries returned by one page.
pub const HISTORY_PAGE_MAX_ENTRIES: u32 = 1000;
/// Most operations one distributed transaction may carry at one participant (a PREPARE entry's
/// operations on the wire, a PREPARED record's in the log).
pub const TRANSACTION_OPERATIONS_MAX: u32 = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub balance: Amount,
    pub owner: Option<String>,
    pub flags: u32,
    /// Milliseconds since the Unix epoch, as logged when the account was created.
    pub created_at_ms: u64,
}

/// Why a transfer was aborted. The numeric codes are stable (logged, and sent on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AbortReason {
    InsufficientFunds = 1,
    UnknownAccount = 2,
    LockConflict = 3,
    ParticipantUnavailable = 4,
    Overflow = 5,
    /// The coordinator gave up waiting (or an inquiry found it still collecting votes).
    Timeout = 6,
    /// The transaction itself is malformed (no operations, zero amount, an account twice).
    InvalidRequest = 7,
    /// A coordinator asked about a transaction it has no decision for answers abort.
    PresumedAbort = 8,
    /// The funds are there but held by pending debits of the account (escrow reservations):
    /// a new transfer may succeed once they are decided.
    FundsHeld = 9,
}

impl AbortReason {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::InsufficientFunds,
            2 => Self::UnknownAccount,
            3 => Self::LockConflict,
            4 => Self::ParticipantUnavailable,
            5 => Self::Overflow,
            6 => Self::Timeout,
            7 => Self::InvalidRequest,
            8 => Self::PresumedAbort,
            9 => Self::FundsHeld,
            _ => return None,
        })
    }
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::InsufficientFunds => "insufficient funds",
            Self::UnknownAccount => "unknown account",
            Self::LockConflict => "lock conflict",
            Self::ParticipantUnavailable => "participant unavailable",
            Self::Overflow => "overflow",
            Self::Timeout => "timeout",
            Self::InvalidRequest => "invalid request",
            Self::PresumedAbort => "presumed abort",
            Self::FundsHeld => "funds held",
        })
    }
}

/// The final outcome of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Aborted(AbortReason),
}

/// What a shard knows of a transfer id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRecord {
    pub id: TransferId,
    /// What was transferred, to tell a retry from a different request that reuses the id;
    /// `None` when this shard saw only an abort of a transaction it never prepared.
    pub transfer: Option<Transfer>,
    pub outcome: Outcome,
}

/// What changed an account, in a history entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HistoryKind {
    Deposit = 1,
    Withdrawal = 2,
    TransferDebit = 3,
    TransferCredit = 4,
}

impl HistoryKind {
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Deposit,
            2 => Self::Withdrawal,
            3 => Self::TransferDebit,
            4 => Self::TransferCredit,
            _ => return None,
        })
    }
}

/// Which way a movement takes money across the system's edge. A *movement* is a deposit or a
/// withdrawal; a transfer moves money between accounts and is never called one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MovementKind {
    Deposit = 1,
    Withdrawal = 2,
}

impl MovementKind {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Deposit,
            2 => Self::Withdrawal,
            _ => return None,
        })
    }

    pub fn history_kind(self) -> HistoryKind {
        match self {
            Self::Deposit => HistoryKind::Deposit,
            Self::Withdrawal => HistoryKind::Withdrawal,
        }
    }
}

impl std::fmt::Display for MovementKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Self::Deposit => "deposit",
            Self::Withdrawal => "withdrawal",
        })
    }
}

/// Why a movement was refused: the refusals that depend on state, logged so that a retry of the
/// id is refused again even once the state changed. A subset of [`AbortReason`], whose stable
/// codes and names it uses, so that one reason has one code in every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    InsufficientFunds,
    UnknownAccount,
    Overflow,
}

impl RefusalReason {
    pub fn code(self) -> u8 {
        AbortReason::from(self).code()
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match AbortReason::from_code(code)? {
            AbortReason::InsufficientFunds => Some(Self::InsufficientFunds),
            AbortReason::UnknownAccount => Some(Self::UnknownAccount),
            AbortReason::Overflow => Some(Self::Overflow),
            _ => None,
        }
    }
}

impl From<RefusalReason> for AbortReason {
    fn from(reason: RefusalReason) -> Self {
        match reason {
            RefusalReason::InsufficientFunds => Self::InsufficientFunds,
            RefusalReason::UnknownAccount => Self::UnknownAccount,
            RefusalReason::Overflow => Self::Overflow,
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        AbortReason::from(*self).fmt(formatter)
    }
}

/// The permanent answer to a movement id: what its first request was told, and every retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovementOutcome {
    /// Applied once, by the record at `lsn` (also the sequence of its history entry).
    Applied {
        balance_after: Amount,
        lsn: u64,
    },
    Refused(RefusalReason),
}

/// What a shard knows of a movement id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovementRecord {
    pub id: MovementId,
    /// Account, kind and amount, to tell a retry from a different request that reuses the id.
    pub account: AccountId,
    pub kind: MovementKind,
    pub amount: Amount,
    pub outcome: MovementOutcome,
}

/// One change of one account. Entries of an account are ordered by LSN; the LSN is the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub account: AccountId,
    pub lsn: u64,
    pub kind: HistoryKind,
    pub amount: Amount,
    /// The other account of a transfer; 0 otherwise.
    pub counterparty: AccountId,
    /// The id of the transfer, deposit or withdrawal; 0 for a deposit or withdrawal logged
    /// before their ids were kept (record kinds 2 and 3).
    pub transfer: TransferId,
    pub balance_after: Amount,
}

/// One page of history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub entries: Vec<HistoryEntry>,
    /// Pass as `before_lsn` to get the next (older) page; `None` when there is none.
    pub next_cursor: Option<u64>,
}

/// Direction of one operation of a distributed transaction at a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OperationKind {
    Debit = 1,
    Credit = 2,
}

/// One account change of a distributed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    pub account: AccountId,
    pub kind: OperationKind,
    pub amount: Amount,
    /// The other account of the transfer (for history).
    pub counterparty: AccountId,
}

/// A prepared, undecided transaction at a participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedTransaction {
    pub id: TransferId,
    pub coordinator: NodeId,
    pub operations: Vec<Operation>,
}

/// Most participants one coordinator decision names.
pub const DECISION_PARTICIPANTS_MAX: usize = 16;

/// The content of a transfer: what a retry must repeat exactly to be the same request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transfer {
    pub debit: AccountId,
    pub credit: AccountId,
    pub amount: Amount,
}

/// A coordinator's logged decision on a distributed transfer it coordinates: the transfer's
/// permanent outcome (what a retry of its id is answered) and who must hear it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorDecision {
    pub id: TransferId,
    /// What was decided on; `None` for a presumed abort, logged by a coordinator that no longer
    /// knew the transfer (any retry of the id gets the abort).
    pub transfer: Option<Transfer>,
    pub outcome: Outcome,
    /// Nodes that must apply the decision and acknowledge it before it is ended.
    pub participants: Vec<NodeId>,
    /// Every participant acknowledged: nothing is left to resend. The outcome stays.
    pub ended: bool,
    /// The commit's timestamp, which every participant applies it at, so that a read at a
    /// timestamp sees it at every account or at none (see `engine::clock`). 0 for an abort, and
    /// for a decision logged before timestamps existed.
    pub commit_ts: Timestamp,
}

/// A point on a node's hybrid logical clock (`engine::clock::Hlc`): microseconds since the Unix
/// epoch, pushed ahead of the physical clock when the node hears of a later one. Totally ordered
/// across the cluster; a commit's timestamp orders it against every read.
pub type Timestamp = u64;

/// Money that entered and left the shard, for the conservation check:
/// sum of balances == deposits - withdrawals + credits received - debits sent by 2PC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub deposited: u128,
    pub withdrawn: u128,
    /// Money that arrived through committed distributed transactions.
    pub credited_by_transactions: u128,
    /// Money that left through committed distributed transactions.
    pub debited_by_transactions: u128,
}
