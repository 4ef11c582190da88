//! `tally audit`: whether money is conserved across the cluster, at one consistent cut. The
//! verdict is `client::AuditVerdict`'s; this file prints it.

use net::{NodeAudit, NodeId};
use serde::Serialize;

use super::output::{decimal, print_output, render_table};
use super::{Exit, Failure};
use client::client::TallyClient;
use client::{AuditTotals, AuditVerdict};

pub(super) async fn audit(client: TallyClient, json: bool) -> Result<Exit, Failure> {
    let report = client.audit().await.map_err(Failure::read)?;
    let verdict = AuditVerdict::new(&report, client.config());
    let mut rows: Vec<Vec<String>> = report
        .nodes
        .iter()
        .map(|node| {
            audit_row(
                format!("{} (node {})", node.shard, node.node_id),
                &AuditTotals::from(node),
            )
        })
        .collect();
    if let Some(totals) = verdict.totals() {
        rows.push(audit_row("total".to_string(), totals));
    }
    let headers = [
        "shard",
        "accounts",
        "balances",
        "deposits",
        "withdrawals",
        "negative",
        "in doubt",
    ];
    let violations: Vec<String> = verdict
        .violations()
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut text = render_table(&headers, &rows);
    if verdict.passed() {
        text.push_str("\nconservation: OK");
    } else {
        text.push_str(&format!(
            "\nconservation: VIOLATED ({})",
            violations.join("; ")
        ));
    }
    let output = AuditOutput {
        nodes: report.nodes.iter().map(AuditNodeOutput::from).collect(),
        totals: verdict.totals().map(AuditTotalsOutput::from),
        conservation: if verdict.passed() { "ok" } else { "violated" },
        violations,
    };
    print_output(json, &output, &text)?;
    Ok(if verdict.passed() {
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

/// The sums of an audit as JSON: one node's, or the cluster's.
#[derive(Debug, Serialize)]
struct AuditTotalsOutput {
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

impl From<&AuditTotals> for AuditTotalsOutput {
    fn from(totals: &AuditTotals) -> Self {
        AuditTotalsOutput {
            balances_sum: totals.balances_sum,
            deposits_sum: totals.deposits_sum,
            withdrawals_sum: totals.withdrawals_sum,
            account_count: totals.account_count,
            negative_balance_count: totals.negative_balance_count,
            in_doubt_count: totals.in_doubt_count,
        }
    }
}

#[derive(Debug, Serialize)]
struct AuditNodeOutput {
    shard: u32,
    node_id: NodeId,
    #[serde(flatten)]
    totals: AuditTotalsOutput,
}

impl From<&NodeAudit> for AuditNodeOutput {
    fn from(node: &NodeAudit) -> Self {
        AuditNodeOutput {
            shard: node.shard,
            node_id: node.node_id,
            totals: AuditTotalsOutput::from(&AuditTotals::from(node)),
        }
    }
}

#[derive(Debug, Serialize)]
struct AuditOutput {
    nodes: Vec<AuditNodeOutput>,
    /// `None` (null) when the totals overflow.
    totals: Option<AuditTotalsOutput>,
    conservation: &'static str,
    violations: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_writes_the_sums_as_decimal_strings() {
        let node = NodeAudit {
            node_id: 1,
            shard: 0,
            balances_sum: 5,
            deposits_sum: 6,
            withdrawals_sum: 1,
            account_count: 2,
            negative_balance_count: 0,
            in_doubt_count: 0,
        };
        assert_eq!(
            serde_json::to_string(&AuditNodeOutput::from(&node)).expect("json"),
            r#"{"shard":0,"node_id":1,"balances_sum":"5","deposits_sum":"6","withdrawals_sum":"1","account_count":2,"negative_balance_count":0,"in_doubt_count":0}"#
        );
    }
}
