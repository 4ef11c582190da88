//! What a run found: the report printed at the end, and the files written with `--out`
//! (summary.json, the HdrHistogram files, the timeline and the chart).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use client::AuditVerdict;
use hdrhistogram::Histogram;

use crate::leaders::LeaderChanges;
use crate::report::{FaultEvent, TimelineRow};
use crate::{Checks, LoadgenArgs, chart, report};

/// Every outcome of the run, and what the end-of-run checks found.
pub struct Report {
    pub elapsed: Duration,
    pub committed: u64,
    pub aborted: BTreeMap<String, u64>,
    pub unknown: u64,
    pub failed: u64,
    /// Non-transfer operations answered (SmallBank reads, deposits, withdrawals).
    pub other_ops: u64,
    pub latency: Histogram<u64>,
    pub timeline: Vec<TimelineRow>,
    pub intervals: Vec<Histogram<u64>>,
    pub faults: Vec<FaultEvent>,
    /// Each shard's leader changes seen during the run (every 250 ms).
    pub leader_changes: LeaderChanges,
    pub checks: Checks,
    pub start_unix_seconds: f64,
}

impl Report {
    pub fn committed_per_second(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency in milliseconds at a quantile.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// The report printed at the end of a run.
    pub fn render(&self) -> String {
        let aborted: u64 = self.aborted.values().sum();
        let mut out = String::new();
        out.push_str(&format!(
            "elapsed {:.1} s: {} committed ({:.0}/s), {} aborted, {} unknown outcome, {} failed",
            self.elapsed.as_secs_f64(),
            self.committed,
            self.committed_per_second(),
            aborted,
            self.unknown,
            self.failed
        ));
        if self.other_ops > 0 {
            out.push_str(&format!(", {} other operations", self.other_ops));
        }
        out.push('\n');
        for (reason, count) in &self.aborted {
            out.push_str(&format!("  aborted, {reason}: {count}\n"));
        }
        out.push_str(&format!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}\n",
            self.latency_ms(0.5),
            self.latency_ms(0.9),
            self.latency_ms(0.99),
            self.latency_ms(0.999),
            self.latency_ms(0.9999),
            self.latency.max() as f64 / 1000.0
        ));
        for fault in &self.faults {
            out.push_str(&format!(
                "fault at {:.1} s: {}\n",
                fault.at_seconds, fault.label
            ));
        }
        for change in &self.leader_changes.changes {
            out.push_str(&format!(
                "leader change at {:.1} s: shard {} led by node {} (term {})\n",
                change.at_seconds, change.shard, change.leader, change.term
            ));
        }
        if self.leader_changes.not_kept > 0 {
            out.push_str(&format!(
                "leader changes: {} more not kept\n",
                self.leader_changes.not_kept
            ));
        }
        let checks = &self.checks;
        match &checks.audit {
            Some(verdict) => out.push_str(&format!("audit: {verdict}\n")),
            None => out.push_str("audit: no answer\n"),
        }
        out.push_str(&format!(
            "exactly once: {} accounts off; {} of {} sampled statuses contradict their answer; unknown outcomes resolved: {} committed, {} aborted; deposits and withdrawals {} applied, {} refused",
            checks.balance_mismatches,
            checks.status_mismatches,
            checks.statuses_checked,
            checks.unknown_resolved_committed,
            checks.unknown_resolved_aborted,
            checks.unknown_movements_resolved_applied,
            checks.unknown_movements_resolved_refused
        ));
        out.push('\n');
        if let Some(counted) = checks.metrics_committed {
            out.push_str(&format!(
                "metrics: the nodes' /metrics count {counted} transfers answered committed; this run heard {} (+{} resolved after)\n",
                self.committed, checks.unknown_resolved_committed
            ));
        }
        for problem in &checks.problems {
            out.push_str(&format!("problem: {problem}\n"));
        }
        out.push_str(if checks.passed() {
            "invariants: PASS\n"
        } else {
            "invariants: FAIL\n"
        });
        out
    }
}

/// Writes the run's files into `out`.
pub(crate) fn write_files(
    args: &LoadgenArgs,
    report: &Report,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let create = |name: &str| {
        let path = out.join(name);
        std::fs::File::create(&path)
            .map(std::io::BufWriter::new)
            .with_context(|| format!("cannot write {}", path.display()))
    };
    report::write_hgrm(&report.latency, &mut create("latency.hgrm")?)?;
    report::write_hlog(
        report.start_unix_seconds,
        &report.intervals,
        &mut create("latency.hlog")?,
    )?;
    report::write_timeline_csv(&report.timeline, &mut create("timeline.csv")?)?;
    let title = format!(
        "tally loadgen: {} clients{}, {:.0} committed/s",
        args.clients,
        args.rate
            .map_or(String::new(), |rate| format!(", open loop {rate:.0}/s")),
        report.committed_per_second()
    );
    std::fs::write(
        out.join("chart.svg"),
        chart::run_chart(
            &title,
            &report.timeline,
            &report.faults,
            &report.leader_changes.changes,
            &report.latency,
        ),
    )
    .context("cannot write chart.svg")?;
    let summary = summary_json(args, report);
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary).expect("JSON values serialize"),
    )
    .context("cannot write summary.json")?;
    Ok(())
}

fn summary_json(args: &LoadgenArgs, report: &Report) -> serde_json::Value {
    let checks = &report.checks;
    let audit = checks.audit.as_ref();
    let totals = audit.and_then(AuditVerdict::totals);
    serde_json::json!({
        "command_line": std::env::args().collect::<Vec<_>>(),
        "versions": {
            "tally": env!("CARGO_PKG_VERSION"),
            "protocol": net::PROTOCOL_VERSION,
        },
        "options": {
            "accounts": args.accounts,
            "clients": args.clients,
            "rate": args.rate,
            "client_batch": args.client_batch,
            "duration_seconds": args.duration,
            "cross_shard": args.cross_shard,
            "workload": if args.smallbank { "smallbank".to_owned() } else { format!("{:?}", args.pattern()) },
            "faults": args.faults.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "elapsed_seconds": report.elapsed.as_secs_f64(),
        "committed": report.committed,
        "committed_per_second": report.committed_per_second(),
        "aborted": report.aborted,
        "unknown_outcome": report.unknown,
        "failed": report.failed,
        "other_operations": report.other_ops,
        "latency_ms": {
            "p50": report.latency_ms(0.5),
            "p90": report.latency_ms(0.9),
            "p99": report.latency_ms(0.99),
            "p99.9": report.latency_ms(0.999),
            "p99.99": report.latency_ms(0.9999),
            "max": report.latency.max() as f64 / 1000.0,
        },
        "faults": report.faults.iter().map(|fault| serde_json::json!({"at_seconds": fault.at_seconds, "event": fault.label, "node": fault.node})).collect::<Vec<_>>(),
        "leader_changes": report.leader_changes.changes.iter().map(|change| serde_json::json!({"at_seconds": change.at_seconds, "shard": change.shard, "leader": change.leader, "term": change.term})).collect::<Vec<_>>(),
        "leader_changes_not_kept": report.leader_changes.not_kept,
        "invariants": {
            "passed": checks.passed(),
            "conserved": audit.is_some_and(AuditVerdict::money_conserved),
            "audit": audit.map(ToString::to_string),
            "balances": totals.map(|totals| totals.balances_sum.to_string()),
            "deposits": totals.map(|totals| totals.deposits_sum.to_string()),
            "withdrawals": totals.map(|totals| totals.withdrawals_sum.to_string()),
            "in_doubt": totals.map(|totals| totals.in_doubt_count),
            "negative_balances": totals.map(|totals| totals.negative_balance_count),
            "balance_mismatches": checks.balance_mismatches,
            "unknown_movements_resolved_applied": checks.unknown_movements_resolved_applied,
            "unknown_movements_resolved_refused": checks.unknown_movements_resolved_refused,
            "status_mismatches": checks.status_mismatches,
            "statuses_checked": checks.statuses_checked,
            "unknown_resolved_committed": checks.unknown_resolved_committed,
            "unknown_resolved_aborted": checks.unknown_resolved_aborted,
            "problems": checks.problems,
        },
    })
}
