//! The cluster-wide verdict on an audit: the per-shard answers of [`TallyClient::audit`] (each
//! taken by the shard's leader), read at one consistent cut, summed and judged by one rule. The command line, the load generator and
//! the tests all judge an audit with [`AuditVerdict`], so the rule is written once.
//!
//! The rule: every shard of the cluster answered exactly once, the sums fit in 128 bits,
//! `balances == deposits - withdrawals`, no balance is negative, and no transaction is in doubt.
//! Nothing in doubt is part of the rule because every caller audits a settled cluster (after a
//! run, or after waiting for the nodes to resolve their transactions); a cut taken while
//! transfers are still being decided may fail on that alone, and [`AuditVerdict::money_conserved`]
//! answers the narrower question.
//!
//! [`TallyClient::audit`]: crate::TallyClient::audit

use std::fmt;

use net::{AuditReport, NodeAudit};

use crate::config::ClusterConfig;

/// The sums of an audit: one node's, or the whole cluster's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditTotals {
    pub balances_sum: u128,
    pub deposits_sum: u128,
    pub withdrawals_sum: u128,
    pub account_count: u64,
    pub negative_balance_count: u64,
    pub in_doubt_count: u64,
}

impl AuditTotals {
    /// The sum of two, or `None` if a field overflows.
    pub fn checked_add(&self, other: &AuditTotals) -> Option<AuditTotals> {
        Some(AuditTotals {
            balances_sum: self.balances_sum.checked_add(other.balances_sum)?,
            deposits_sum: self.deposits_sum.checked_add(other.deposits_sum)?,
            withdrawals_sum: self.withdrawals_sum.checked_add(other.withdrawals_sum)?,
            account_count: self.account_count.checked_add(other.account_count)?,
            negative_balance_count: self
                .negative_balance_count
                .checked_add(other.negative_balance_count)?,
            in_doubt_count: self.in_doubt_count.checked_add(other.in_doubt_count)?,
        })
    }

    /// Whether `balances == deposits - withdrawals` (false when more was withdrawn than
    /// deposited: that cannot balance, and must not wrap around).
    pub fn balanced(&self) -> bool {
        self.deposits_sum.checked_sub(self.withdrawals_sum) == Some(self.balances_sum)
    }
}

impl From<&NodeAudit> for AuditTotals {
    fn from(node: &NodeAudit) -> AuditTotals {
        AuditTotals {
            balances_sum: node.balances_sum,
            deposits_sum: node.deposits_sum,
            withdrawals_sum: node.withdrawals_sum,
            account_count: node.account_count,
            negative_balance_count: node.negative_balance_count,
            in_doubt_count: node.in_doubt_count,
        }
    }
}

/// One way an audit breaks the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditViolation {
    /// A shard of the cluster is not in the answer: its money was not counted.
    ShardMissing { shard: u32 },
    /// A shard is in the answer more than once: its money was counted twice.
    ShardRepeated { shard: u32, count: usize },
    /// The cluster's sums do not fit in 128 bits, so nothing can be said of them.
    TotalsOverflow,
    /// `balances != deposits - withdrawals`: money was created or lost.
    NotConserved {
        balances_sum: u128,
        deposits_sum: u128,
        withdrawals_sum: u128,
    },
    /// Accounts whose balance is below zero.
    NegativeBalances { count: u64 },
    /// Transactions prepared and not yet decided at some node.
    InDoubt { count: u64 },
}

impl fmt::Display for AuditViolation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditViolation::ShardMissing { shard } => {
                write!(formatter, "shard {shard} missing from the report")
            }
            AuditViolation::ShardRepeated { shard, count } => {
                write!(formatter, "shard {shard} reported {count} times")
            }
            AuditViolation::TotalsOverflow => write!(formatter, "the totals overflow 128 bits"),
            AuditViolation::NotConserved {
                balances_sum,
                deposits_sum,
                withdrawals_sum,
            } => write!(
                formatter,
                "balances {balances_sum} != deposits {deposits_sum} - withdrawals \
                 {withdrawals_sum}"
            ),
            AuditViolation::NegativeBalances { count } => {
                write!(formatter, "{count} negative balance(s)")
            }
            AuditViolation::InDoubt { count } => {
                write!(formatter, "{count} transaction(s) in doubt")
            }
        }
    }
}

/// The verdict on one audit of the whole cluster: its totals and every violation of the rule (see
/// the module documentation). Its `Display` is a one-line explanation for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerdict {
    totals: Option<AuditTotals>,
    violations: Vec<AuditViolation>,
}

impl AuditVerdict {
    /// Judges `report`, the answer to an audit of the cluster described by `config`.
    pub fn new(report: &AuditReport, config: &ClusterConfig) -> AuditVerdict {
        let mut violations = Vec::new();
        for shard in 0..config.shard_count {
            match report
                .nodes
                .iter()
                .filter(|audit| audit.shard == shard)
                .count()
            {
                1 => {}
                0 => violations.push(AuditViolation::ShardMissing { shard }),
                count => violations.push(AuditViolation::ShardRepeated { shard, count }),
            }
        }
        let totals = report
            .nodes
            .iter()
            .try_fold(AuditTotals::default(), |sum, node| {
                sum.checked_add(&AuditTotals::from(node))
            });
        match &totals {
            None => violations.push(AuditViolation::TotalsOverflow),
            Some(totals) => {
                if !totals.balanced() {
                    violations.push(AuditViolation::NotConserved {
                        balances_sum: totals.balances_sum,
                        deposits_sum: totals.deposits_sum,
                        withdrawals_sum: totals.withdrawals_sum,
                    });
                }
                if totals.negative_balance_count != 0 {
                    violations.push(AuditViolation::NegativeBalances {
                        count: totals.negative_balance_count,
                    });
                }
                if totals.in_doubt_count != 0 {
                    violations.push(AuditViolation::InDoubt {
                        count: totals.in_doubt_count,
                    });
                }
            }
        }
        AuditVerdict { totals, violations }
    }

    /// Whether the audit keeps every rule.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Whether money is conserved across the cluster (`balances == deposits - withdrawals`, over
    /// every node once), whatever is in doubt or negative.
    pub fn money_conserved(&self) -> bool {
        self.violations.iter().all(|violation| {
            matches!(
                violation,
                AuditViolation::NegativeBalances { .. } | AuditViolation::InDoubt { .. }
            )
        })
    }

    /// The cluster's sums; `None` if they overflow.
    pub fn totals(&self) -> Option<&AuditTotals> {
        self.totals.as_ref()
    }

    /// Every way the audit breaks the rule, in a fixed order: missing or repeated nodes, overflow,
    /// conservation, negative balances, in doubt. Empty when it passed.
    pub fn violations(&self) -> &[AuditViolation] {
        &self.violations
    }
}

impl fmt::Display for AuditVerdict {
    /// `conserved: balances 120 = deposits 130 - withdrawals 10 over 4 accounts, none negative,
    /// nothing in doubt`, or `VIOLATED: ...` with every violation and the sums.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.passed() {
            let totals = self.totals.expect("an audit that passed has totals");
            return write!(
                formatter,
                "conserved: balances {} = deposits {} - withdrawals {} over {} accounts, none \
                 negative, nothing in doubt",
                totals.balances_sum,
                totals.deposits_sum,
                totals.withdrawals_sum,
                totals.account_count
            );
        }
        write!(formatter, "VIOLATED: ")?;
        for (index, violation) in self.violations.iter().enumerate() {
            let separator = if index == 0 { "" } else { "; " };
            write!(formatter, "{separator}{violation}")?;
        }
        if let Some(totals) = &self.totals {
            write!(
                formatter,
                " (balances {}, deposits {}, withdrawals {}, {} accounts)",
                totals.balances_sum,
                totals.deposits_sum,
                totals.withdrawals_sum,
                totals.account_count
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use net::NodeId;

    use super::*;

    /// Shard `node_id - 1`, taken by node `node_id`, with two accounts, nothing negative and
    /// nothing in doubt.
    fn node_audit(node_id: NodeId, balances: u128, deposits: u128, withdrawals: u128) -> NodeAudit {
        NodeAudit {
            node_id,
            shard: node_id - 1,
            balances_sum: balances,
            deposits_sum: deposits,
            withdrawals_sum: withdrawals,
            account_count: 2,
            negative_balance_count: 0,
            in_doubt_count: 0,
        }
    }

    fn judge(nodes: Vec<NodeAudit>) -> AuditVerdict {
        AuditVerdict::new(&AuditReport { nodes }, &ClusterConfig::local(2, 7101))
    }

    /// A cut whose money moved between nodes: each node alone looks unbalanced, the cluster does
    /// not. Each failing case below is this cut with one thing changed.
    fn balanced_cut() -> Vec<NodeAudit> {
        vec![node_audit(1, 50, 100, 0), node_audit(2, 70, 30, 10)]
    }

    #[test]
    fn a_balanced_cut_passes_with_the_cluster_totals() {
        let verdict = judge(balanced_cut());
        assert!(verdict.passed(), "{verdict}");
        assert!(verdict.money_conserved());
        assert_eq!(verdict.violations(), []);
        assert_eq!(
            verdict.totals(),
            Some(&AuditTotals {
                balances_sum: 120,
                deposits_sum: 130,
                withdrawals_sum: 10,
                account_count: 4,
                negative_balance_count: 0,
                in_doubt_count: 0,
            })
        );
        assert_eq!(
            verdict.to_string(),
            "conserved: balances 120 = deposits 130 - withdrawals 10 over 4 accounts, none \
             negative, nothing in doubt"
        );
    }

    #[test]
    fn an_unbalanced_cut_fails() {
        let mut nodes = balanced_cut();
        nodes[1].balances_sum += 1;
        let verdict = judge(nodes);
        assert!(!verdict.passed());
        assert!(!verdict.money_conserved());
        assert_eq!(
            verdict.violations(),
            [AuditViolation::NotConserved {
                balances_sum: 121,
                deposits_sum: 130,
                withdrawals_sum: 10,
            }]
        );
        assert_eq!(
            verdict.to_string(),
            "VIOLATED: balances 121 != deposits 130 - withdrawals 10 (balances 121, deposits 130, \
             withdrawals 10, 4 accounts)"
        );
    }

    #[test]
    fn more_withdrawn_than_deposited_fails_without_wrapping_around() {
        let verdict = judge(vec![node_audit(1, 0, 0, 5), node_audit(2, 0, 0, 0)]);
        assert_eq!(
            verdict.violations(),
            [AuditViolation::NotConserved {
                balances_sum: 0,
                deposits_sum: 0,
                withdrawals_sum: 5,
            }]
        );
        assert_eq!(
            verdict.violations()[0].to_string(),
            "balances 0 != deposits 0 - withdrawals 5"
        );
    }

    /// Judges `nodes`, a cut whose money is conserved, and checks that it fails with exactly
    /// `violation`, which its explanation names.
    fn assert_fails_though_conserved(nodes: Vec<NodeAudit>, violation: AuditViolation) {
        let verdict = judge(nodes);
        assert!(!verdict.passed());
        assert!(verdict.money_conserved());
        assert_eq!(verdict.violations(), std::slice::from_ref(&violation));
        assert!(
            verdict.to_string().contains(&violation.to_string()),
            "{verdict}"
        );
    }

    #[test]
    fn a_negative_balance_fails_though_money_is_conserved() {
        let mut nodes = balanced_cut();
        nodes[1].negative_balance_count = 1;
        assert_fails_though_conserved(nodes, AuditViolation::NegativeBalances { count: 1 });
    }

    #[test]
    fn a_transaction_in_doubt_fails_though_money_is_conserved() {
        let mut nodes = balanced_cut();
        nodes[0].in_doubt_count = 2;
        assert_fails_though_conserved(nodes, AuditViolation::InDoubt { count: 2 });
    }

    #[test]
    fn every_shard_of_the_cluster_counts_exactly_once() {
        // Shard 1 (node 2's) missing: what it holds is not counted, so the sums cannot be trusted either.
        let mut missing = vec![node_audit(1, 50, 100, 0)];
        missing[0].negative_balance_count = 1;
        missing[0].in_doubt_count = 2;
        let verdict = judge(missing);
        assert!(!verdict.money_conserved());
        assert_eq!(
            verdict
                .violations()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "shard 1 missing from the report",
                "balances 50 != deposits 100 - withdrawals 0",
                "1 negative balance(s)",
                "2 transaction(s) in doubt",
            ]
        );

        // Shard 0 twice: a balanced node counted twice still balances, and still fails.
        let twice = vec![
            node_audit(1, 10, 10, 0),
            node_audit(1, 10, 10, 0),
            node_audit(2, 0, 0, 0),
        ];
        let verdict = judge(twice);
        assert!(!verdict.money_conserved());
        assert_eq!(
            verdict.violations(),
            [AuditViolation::ShardRepeated { shard: 0, count: 2 }]
        );
        assert_eq!(
            verdict.violations()[0].to_string(),
            "shard 0 reported 2 times"
        );
    }

    #[test]
    fn totals_that_overflow_fail_and_have_no_sums() {
        let verdict = judge(vec![node_audit(1, u128::MAX, 0, 0), node_audit(2, 1, 0, 0)]);
        assert_eq!(verdict.totals(), None);
        assert!(!verdict.money_conserved());
        assert_eq!(verdict.violations(), [AuditViolation::TotalsOverflow]);
        assert_eq!(
            verdict.to_string(),
            "VIOLATED: the totals overflow 128 bits"
        );
    }
}
