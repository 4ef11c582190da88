//! `tally audit`: whether money is conserved across the cluster, at one consistent cut.

use net::{AuditReport, NodeAudit, NodeId};
use serde::Serialize;

use super::output::{decimal, print_output, render_table};
use super::{Exit, Failure};
use client::client::TallyClient;
use client::config::ClusterConfig;

pub(super) async fn audit(client: TallyClient, json: bool) -> Result<Exit, Failure> {
    let report = client.audit().await.map_err(Failure::read)?;
    let check = check_audit(&report, client.config());
    let mut rows: Vec<Vec<String>> = report
        .nodes
        .iter()
        .map(|node| audit_row(node.node_id.to_string(), &AuditTotals::of_node(node)))
        .collect();
    if let Some(totals) = &check.totals {
        rows.push(audit_row("total".to_string(), totals));
    }
    let headers = [
        "node",
        "accounts",
        "balances",
        "deposits",
        "withdrawals",
        "negative",
        "in doubt",
    ];
    let mut text = render_table(&headers, &rows);
    if check.violations.is_empty() {
        text.push_str("\nconservation: OK");
    } else {
        text.push_str(&format!(
            "\nconservation: VIOLATED ({})",
            check.violations.join("; ")
        ));
    }
    let output = AuditOutput {
        nodes: report.nodes.iter().map(AuditNodeOutput::from).collect(),
        totals: check.totals,
        conservation: if check.violations.is_empty() {
            "ok"
        } else {
            "violated"
        },
        violations: check.violations,
    };
    print_output(json, &output, &text)?;
    Ok(if output.violations.is_empty() {
        Exit::Success
    } else {
        Exit::Error
    })
}

fn audit_row(label: String, totals: &AuditTotals) -> Vec<String> {
    vec![
        label,
        totals.account_count.to_string(),
        totals.balances_sum.to_string(),
        totals.deposits_sum.to_string(),
        totals.withdrawals_sum.to_string(),
        totals.negative_balance_count.to_string(),
        totals.in_doubt_count.to_string(),
    ]
}

/// The sums of an audit: one node's, or the cluster's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct AuditTotals {
    #[serde(serialize_with = "decimal")]
    balances_sum: u128,
    #[serde(serialize_with = "decimal")]
    deposits_sum: u128,
    #[serde(serialize_with = "decimal")]
    withdrawals_sum: u128,
    account_count: u64,
    negative_balance_count: u64,
    in_doubt_count: u64,
}

impl AuditTotals {
    fn of_node(node: &NodeAudit) -> AuditTotals {
        AuditTotals {
            balances_sum: node.balances_sum,
            deposits_sum: node.deposits_sum,
            withdrawals_sum: node.withdrawals_sum,
            account_count: node.account_count,
            negative_balance_count: node.negative_balance_count,
            in_doubt_count: node.in_doubt_count,
        }
    }

    /// The sum of two, or `None` if a field overflows.
    fn checked_add(&self, other: &AuditTotals) -> Option<AuditTotals> {
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
}

/// The cluster's totals (`None` if they overflow) and every way the report breaks conservation.
#[derive(Debug)]
struct AuditCheck {
    totals: Option<AuditTotals>,
    violations: Vec<String>,
}

/// Checks `sum(balances) == sum(deposits) - sum(withdrawals)`, no negative balance, nothing in
/// doubt, and that every node of the config is in the report exactly once.
fn check_audit(report: &AuditReport, config: &ClusterConfig) -> AuditCheck {
    let mut violations = Vec::new();
    for node in &config.nodes {
        match report
            .nodes
            .iter()
            .filter(|audit| audit.node_id == node.id)
            .count()
        {
            1 => {}
            0 => violations.push(format!("node {} missing from the report", node.id)),
            count => violations.push(format!("node {} reported {count} times", node.id)),
        }
    }
    let zero = AuditTotals {
        balances_sum: 0,
        deposits_sum: 0,
        withdrawals_sum: 0,
        account_count: 0,
        negative_balance_count: 0,
        in_doubt_count: 0,
    };
    let totals = report.nodes.iter().try_fold(zero, |sum, node| {
        sum.checked_add(&AuditTotals::of_node(node))
    });
    match &totals {
        None => violations.push("the totals overflow 128 bits".to_string()),
        Some(totals) => {
            let expected = totals.deposits_sum.checked_sub(totals.withdrawals_sum);
            if expected != Some(totals.balances_sum) {
                violations.push(format!(
                    "balances {} != deposits {} - withdrawals {}",
                    totals.balances_sum, totals.deposits_sum, totals.withdrawals_sum
                ));
            }
            if totals.negative_balance_count != 0 {
                violations.push(format!(
                    "{} negative balance(s)",
                    totals.negative_balance_count
                ));
            }
            if totals.in_doubt_count != 0 {
                violations.push(format!("{} transaction(s) in doubt", totals.in_doubt_count));
            }
        }
    }
    AuditCheck { totals, violations }
}

#[derive(Debug, Serialize)]
struct AuditNodeOutput {
    node_id: NodeId,
    #[serde(flatten)]
    totals: AuditTotals,
}

impl From<&NodeAudit> for AuditNodeOutput {
    fn from(node: &NodeAudit) -> Self {
        AuditNodeOutput {
            node_id: node.node_id,
            totals: AuditTotals::of_node(node),
        }
    }
}

#[derive(Debug, Serialize)]
struct AuditOutput {
    nodes: Vec<AuditNodeOutput>,
    /// `None` (null) when the totals overflow.
    totals: Option<AuditTotals>,
    conservation: &'static str,
    violations: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_audit(node_id: NodeId, balances: u128, deposits: u128, withdrawals: u128) -> NodeAudit {
        NodeAudit {
            node_id,
            balances_sum: balances,
            deposits_sum: deposits,
            withdrawals_sum: withdrawals,
            account_count: 2,
            negative_balance_count: 0,
            in_doubt_count: 0,
        }
    }

    #[test]
    fn audit_checks_conservation_across_nodes() {
        let config = ClusterConfig::local(2, 7101);
        // Money moved between nodes: each node alone looks unbalanced, the cluster does not.
        let report = AuditReport {
            nodes: vec![node_audit(1, 50, 100, 0), node_audit(2, 70, 30, 10)],
        };
        let check = check_audit(&report, &config);
        assert!(check.violations.is_empty(), "{:?}", check.violations);
        let totals = check.totals.expect("no overflow");
        assert_eq!(
            (
                totals.balances_sum,
                totals.deposits_sum,
                totals.withdrawals_sum
            ),
            (120, 130, 10)
        );
        assert_eq!(totals.account_count, 4);

        let mut report = AuditReport {
            nodes: vec![node_audit(1, 50, 100, 0)],
        };
        report.nodes[0].negative_balance_count = 1;
        report.nodes[0].in_doubt_count = 2;
        let check = check_audit(&report, &config);
        assert_eq!(
            check.violations,
            vec![
                "node 2 missing from the report",
                "balances 50 != deposits 100 - withdrawals 0",
                "1 negative balance(s)",
                "2 transaction(s) in doubt",
            ]
        );

        // More withdrawn than deposited cannot balance, and must not wrap around.
        let report = AuditReport {
            nodes: vec![node_audit(1, 0, 0, 5), node_audit(2, 0, 0, 0)],
        };
        assert_eq!(
            check_audit(&report, &config).violations,
            vec!["balances 0 != deposits 0 - withdrawals 5"]
        );

        let report = AuditReport {
            nodes: vec![node_audit(1, u128::MAX, 0, 0), node_audit(2, 1, 0, 0)],
        };
        let check = check_audit(&report, &config);
        assert_eq!(check.totals, None);
        assert_eq!(check.violations, vec!["the totals overflow 128 bits"]);
    }

    #[test]
    fn json_writes_the_sums_as_decimal_strings() {
        let node = AuditNodeOutput::from(&node_audit(1, 5, 6, 1));
        assert_eq!(
            serde_json::to_string(&node).expect("json"),
            r#"{"node_id":1,"balances_sum":"5","deposits_sum":"6","withdrawals_sum":"1","account_count":2,"negative_balance_count":0,"in_doubt_count":0}"#
        );
    }
}
