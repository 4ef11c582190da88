//! Faults scheduled on the command line:
//! `--fault KIND:(node=N|leader-of=S)[,peer=M],at=T,for=D[,ms=X][,p=P]`.
//!
//! - `kill`: SIGKILL node N at T, start it again at T+D.
//! - `pause`: SIGSTOP node N at T, SIGCONT at T+D.
//! - `partition`: cut the links between node N and node M (or every other node) at T, heal at T+D
//!   (a reset: both ends see their connections fail at once).
//! - `blackhole`: the same links silently partitioned (connections stay open, nothing gets
//!   through either way; see `proxy::LinkMode::Blackhole`), healed at T+D.
//! - `delay`: delay the links between N and M (or all) by `ms` milliseconds (default 50).
//! - `drop`: make those links flaky: each chunk of bytes cuts its connection with probability `p`
//!   (default 0.01).
//!
//! `leader-of=S` instead of `node=N` aims the fault at whichever node leads shard S when the fault
//! begins, asked of the cluster then (`inject`); it ends on that same node. `partition:leader-of=S`
//! is a blackhole of every link to and from that node, both directions (a leader cut off without
//! a reset is the case Raft's elections must handle); `partition:node=N` stays a cut. `peer=` does
//! not combine with `leader-of=`.
//!
//! Link faults need the proxies the load generator places between the nodes of a cluster it
//! starts, so they are refused with `--cluster`. Times are seconds from the start of the measured
//! run: `10s`, `1.5s`, `500ms`, or a bare number of seconds.

use std::fmt;
use std::time::Duration;

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultKind {
    Kill,
    Pause,
    Partition,
    Blackhole,
    Delay(Duration),
    Drop(f64),
}

/// Whom a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// This node.
    Node(u32),
    /// The node that leads this shard when the fault begins.
    LeaderOf(u32),
}

impl fmt::Display for Target {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(node) => write!(formatter, "node {node}"),
            Target::LeaderOf(shard) => write!(formatter, "the leader of shard {shard}"),
        }
    }
}

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    pub target: Target,
    /// The other end of a link fault; `None` means every other node.
    pub peer: Option<u32>,
    pub at: Duration,
    pub duration: Duration,
}

impl Fault {
    pub fn is_link_fault(&self) -> bool {
        matches!(
            self.kind,
            FaultKind::Partition | FaultKind::Blackhole | FaultKind::Delay(_) | FaultKind::Drop(_)
        )
    }

    /// What the fault does to the target's links or process, for labels: `partition` aimed at a
    /// role is a blackhole.
    pub fn action(&self) -> String {
        match (self.kind, self.target) {
            (FaultKind::Kill, _) => "kill".to_owned(),
            (FaultKind::Pause, _) => "pause".to_owned(),
            (FaultKind::Partition, Target::LeaderOf(_)) | (FaultKind::Blackhole, _) => {
                "blackhole".to_owned()
            }
            (FaultKind::Partition, Target::Node(_)) => "partition".to_owned(),
            (FaultKind::Delay(delay), _) => format!("delay {} ms", delay.as_millis()),
            (FaultKind::Drop(probability), _) => format!("drop p={probability}"),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} {}", self.action(), self.target)?;
        if self.is_link_fault() {
            match self.peer {
                Some(peer) => write!(formatter, " <-> node {peer}")?,
                None => write!(formatter, " <-> all")?,
            }
        }
        write!(
            formatter,
            " at {:.1}s for {:.1}s",
            self.at.as_secs_f64(),
            self.duration.as_secs_f64()
        )
    }
}

/// Parses `10s`, `1.5s`, `500ms` or `10` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(number) = text.strip_suffix("ms") {
        (number, 0.001)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (like 10s, 1.5s, 500ms)"))?;
    if !(0.0..=86_400.0).contains(&value) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(text: &str) -> Result<Fault, String> {
        let usage = "a fault is KIND:node=N[,peer=M],at=T,for=D or KIND:leader-of=SHARD,at=T,for=D (KIND: kill, pause, partition, blackhole, delay[,ms=X], drop[,p=P])";
        let (kind, rest) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?}: {usage}"))?;
        let (mut node, mut leader_of, mut peer, mut at, mut duration, mut ms, mut probability) =
            (None, None, None, None, None, None, None);
        for pair in rest.split(',') {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{text:?}: {pair:?} is not key=value; {usage}"))?;
            let number = |value: &str| {
                value
                    .parse::<u32>()
                    .map_err(|_| format!("{text:?}: {key}={value} is not a node id"))
            };
            match key.trim() {
                "node" => node = Some(number(value)?),
                "leader-of" => {
                    leader_of = Some(value.parse::<u32>().map_err(|_| {
                        format!("{text:?}: leader-of={value} is not a shard number")
                    })?)
                }
                "peer" => peer = Some(number(value)?),
                "at" => at = Some(parse_duration(value)?),
                "for" => duration = Some(parse_duration(value)?),
                "ms" => {
                    ms = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| format!("{text:?}: ms={value} is not a number"))?,
                    )
                }
                "p" => {
                    let p: f64 = value
                        .parse()
                        .map_err(|_| format!("{text:?}: p={value} is not a number"))?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(format!("{text:?}: p must be between 0 and 1"));
                    }
                    probability = Some(p);
                }
                other => return Err(format!("{text:?}: unknown key {other:?}; {usage}")),
            }
        }
        let kind = match kind.trim() {
            "kill" => FaultKind::Kill,
            "pause" => FaultKind::Pause,
            "partition" => FaultKind::Partition,
            "blackhole" => FaultKind::Blackhole,
            "delay" => FaultKind::Delay(Duration::from_millis(ms.unwrap_or(50))),
            "drop" => FaultKind::Drop(probability.unwrap_or(0.01)),
            other => return Err(format!("{text:?}: unknown fault kind {other:?}; {usage}")),
        };
        let target = match (node, leader_of) {
            (Some(node), None) => Target::Node(node),
            (None, Some(shard)) => Target::LeaderOf(shard),
            (Some(_), Some(_)) => {
                return Err(format!("{text:?}: node= or leader-of=, not both; {usage}"));
            }
            (None, None) => return Err(format!("{text:?}: node= is missing; {usage}")),
        };
        let fault = Fault {
            kind,
            target,
            peer,
            at: at.ok_or_else(|| format!("{text:?}: at= is missing; {usage}"))?,
            duration: duration.ok_or_else(|| format!("{text:?}: for= is missing; {usage}"))?,
        };
        if fault.peer.is_some() && !fault.is_link_fault() {
            return Err(format!("{text:?}: peer= only applies to link faults"));
        }
        if fault.peer.is_some() && matches!(target, Target::LeaderOf(_)) {
            return Err(format!(
                "{text:?}: peer= does not combine with leader-of= (the leader is known only when the fault begins)"
            ));
        }
        if let (Target::Node(node), Some(peer)) = (target, fault.peer)
            && node == peer
        {
            return Err(format!("{text:?}: a node has no link to itself"));
        }
        Ok(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_print() {
        let kill: Fault = "kill:node=2,at=10s,for=5s".parse().unwrap();
        assert_eq!(
            kill,
            Fault {
                kind: FaultKind::Kill,
                target: Target::Node(2),
                peer: None,
                at: Duration::from_secs(10),
                duration: Duration::from_secs(5),
            }
        );
        assert_eq!(kill.to_string(), "kill node 2 at 10.0s for 5.0s");
        let delay: Fault = "delay:node=1,peer=3,at=500ms,for=2,ms=20".parse().unwrap();
        assert_eq!(delay.kind, FaultKind::Delay(Duration::from_millis(20)));
        assert_eq!(delay.at, Duration::from_millis(500));
        assert_eq!(
            delay.to_string(),
            "delay 20 ms node 1 <-> node 3 at 0.5s for 2.0s"
        );
        assert!(
            "partition:node=1,at=1s,for=1s"
                .parse::<Fault>()
                .unwrap()
                .is_link_fault()
        );
        let leader: Fault = "kill:leader-of=0,at=10s,for=5s".parse().unwrap();
        assert_eq!(leader.target, Target::LeaderOf(0));
        assert_eq!(
            leader.to_string(),
            "kill the leader of shard 0 at 10.0s for 5.0s"
        );
        let cut_off: Fault = "partition:leader-of=2,at=1s,for=3s".parse().unwrap();
        assert!(cut_off.is_link_fault());
        assert_eq!(
            cut_off.to_string(),
            "blackhole the leader of shard 2 <-> all at 1.0s for 3.0s"
        );
        assert_eq!(
            "partition:node=2,at=1s,for=3s"
                .parse::<Fault>()
                .unwrap()
                .action(),
            "partition",
            "a partition of a named node stays a cut"
        );
        assert_eq!(
            "blackhole:node=3,peer=1,at=1s,for=1s"
                .parse::<Fault>()
                .unwrap()
                .to_string(),
            "blackhole node 3 <-> node 1 at 1.0s for 1.0s"
        );
        for bad in [
            "kill",
            "kill:node=2",
            "kill:node=x,at=1s,for=1s",
            "explode:node=1,at=1s,for=1s",
            "kill:node=1,peer=2,at=1s,for=1s",
            "partition:node=1,peer=1,at=1s,for=1s",
            "drop:node=1,at=1s,for=1s,p=2",
            "kill:node=1,at=soon,for=1s",
            "kill:leader-of=x,at=1s,for=1s",
            "kill:node=1,leader-of=0,at=1s,for=1s",
            "partition:leader-of=0,peer=2,at=1s,for=1s",
        ] {
            assert!(bad.parse::<Fault>().is_err(), "{bad}");
        }
    }
}
