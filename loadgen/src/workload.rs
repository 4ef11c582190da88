//! What the load generator sends: which accounts a transfer touches (uniform, zipfian, hot spot,
//! many-to-one, one-to-many, circular; a fraction of them cross-shard), or a SmallBank operation.
//!
//! Every choice comes from a seeded RNG, so a run's workload is reproducible from its seed.

use std::collections::BTreeMap;
use std::str::FromStr;

use client::config::ClusterConfig;
use net::AccountId;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Tries to find an account meeting the cross-shard constraint by sampling the distribution
/// before falling back to a uniform pick among the accounts that meet it.
const CONSTRAINED_PICK_ATTEMPTS: usize = 64;

/// How accounts are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// Every account equally likely.
    Uniform,
    /// Zipfian with exponent `theta` over the accounts in a shuffled order (hot accounts are
    /// spread over the shards).
    Zipf { theta: f64 },
    /// `percent_transfers`% of picks come from the hottest `percent_accounts`% of accounts.
    HotSpot {
        percent_transfers: f64,
        percent_accounts: f64,
    },
    /// Every transfer credits one account (a merchant), from uniform debit accounts.
    ManyToOne,
    /// Every transfer debits one account (a payroll), to uniform credit accounts.
    OneToMany,
    /// Each client walks its own ring of accounts: k -> k+1 -> ... -> k.
    Circular,
}

impl FromStr for Pattern {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "uniform" => Ok(Pattern::Uniform),
            "many-to-one" => Ok(Pattern::ManyToOne),
            "one-to-many" => Ok(Pattern::OneToMany),
            "circular" => Ok(Pattern::Circular),
            other => Err(format!(
                "unknown pattern {other:?} (uniform, many-to-one, one-to-many, circular; use --zipf or --hot-spot for skew)"
            )),
        }
    }
}

/// Parses `X:Y` ("X% of transfers touch Y% of accounts").
pub fn parse_hot_spot(text: &str) -> Result<Pattern, String> {
    let (transfers, accounts) = text
        .split_once(':')
        .ok_or_else(|| format!("--hot-spot wants X:Y (percentages), got {text:?}"))?;
    let percent = |value: &str| -> Result<f64, String> {
        let value: f64 = value
            .trim()
            .trim_end_matches('%')
            .parse()
            .map_err(|_| format!("{value:?} is not a percentage"))?;
        if value > 0.0 && value < 100.0 {
            Ok(value)
        } else {
            Err(format!("{value} must be between 0 and 100, exclusive"))
        }
    };
    Ok(Pattern::HotSpot {
        percent_transfers: percent(transfers)?,
        percent_accounts: percent(accounts)?,
    })
}

/// The accounts 1..=count and where they live.
pub struct Accounts {
    /// Accounts in "heat" order: index 0 is the hottest under zipf and hot spot.
    by_heat: Vec<AccountId>,
    /// Accounts of each node, for constrained picks.
    by_node: BTreeMap<u32, Vec<AccountId>>,
    owner: Vec<u32>,
    /// Zipf: cumulative weights over `by_heat`.
    zipf_cdf: Vec<f64>,
    pattern: Pattern,
}

impl Accounts {
    pub fn new(config: &ClusterConfig, count: u64, pattern: Pattern, seed: u64) -> Accounts {
        let mut by_node: BTreeMap<u32, Vec<AccountId>> = BTreeMap::new();
        let mut owner = Vec::with_capacity(count as usize);
        for account in 1..=count {
            let node = config.owner_of(account);
            by_node.entry(node).or_default().push(account);
            owner.push(node);
        }
        let mut by_heat: Vec<AccountId> = (1..=count).collect();
        by_heat.shuffle(&mut <StdRng as rand::SeedableRng>::seed_from_u64(seed));
        let zipf_cdf = match pattern {
            Pattern::Zipf { theta } => {
                let mut total = 0.0;
                (1..=count)
                    .map(|rank| {
                        total += 1.0 / (rank as f64).powf(theta);
                        total
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        Accounts {
            by_heat,
            by_node,
            owner,
            zipf_cdf,
            pattern,
        }
    }

    pub fn count(&self) -> usize {
        self.by_heat.len()
    }

    pub fn owner(&self, account: AccountId) -> u32 {
        self.owner[account as usize - 1]
    }

    /// One account drawn from the pattern's distribution (uniform for the fixed-end patterns).
    pub fn draw(&self, rng: &mut StdRng) -> AccountId {
        let index = match self.pattern {
            Pattern::Zipf { .. } => {
                let total = *self.zipf_cdf.last().expect("at least one account");
                let target = rng.random_range(0.0..total);
                self.zipf_cdf.partition_point(|weight| *weight < target)
            }
            Pattern::HotSpot {
                percent_transfers,
                percent_accounts,
            } => {
                let hot = ((self.count() as f64 * percent_accounts / 100.0).ceil() as usize)
                    .clamp(1, self.count());
                if rng.random_bool(percent_transfers / 100.0) || hot == self.count() {
                    rng.random_range(0..hot)
                } else {
                    rng.random_range(hot..self.count())
                }
            }
            _ => rng.random_range(0..self.count()),
        };
        self.by_heat[index.min(self.count() - 1)]
    }

    /// An account that is not `other` and is on another node than `other` iff `cross`.
    fn draw_related(&self, rng: &mut StdRng, other: AccountId, cross: bool) -> Option<AccountId> {
        let home = self.owner(other);
        let fits = |account: AccountId| account != other && (self.owner(account) != home) == cross;
        for _ in 0..CONSTRAINED_PICK_ATTEMPTS {
            let account = self.draw(rng);
            if fits(account) {
                return Some(account);
            }
        }
        let candidates: Vec<&Vec<AccountId>> = self
            .by_node
            .iter()
            .filter(|(node, _)| (**node != home) == cross)
            .map(|(_, accounts)| accounts)
            .collect();
        for _ in 0..CONSTRAINED_PICK_ATTEMPTS {
            let accounts = candidates.get(rng.random_range(0..candidates.len().max(1)))?;
            let account = accounts[rng.random_range(0..accounts.len())];
            if fits(account) {
                return Some(account);
            }
        }
        None
    }

    /// The debit and credit accounts of the next transfer of a client. `ring` is the client's
    /// position for the circular pattern.
    pub fn pick(
        &self,
        rng: &mut StdRng,
        cross_fraction: f64,
        ring: &mut u64,
    ) -> (AccountId, AccountId) {
        let single_node = self.by_node.len() < 2;
        loop {
            let cross = !single_node && rng.random_bool(cross_fraction);
            let pair = match self.pattern {
                Pattern::ManyToOne => {
                    let sink = self.by_heat[0];
                    self.draw_related(rng, sink, cross)
                        .map(|debit| (debit, sink))
                }
                Pattern::OneToMany => {
                    let source = self.by_heat[0];
                    self.draw_related(rng, source, cross)
                        .map(|credit| (source, credit))
                }
                Pattern::Circular => {
                    let debit = self.by_heat[(*ring % self.count() as u64) as usize];
                    *ring += 1;
                    let next = self.by_heat[(*ring % self.count() as u64) as usize];
                    (debit != next).then_some((debit, next))
                }
                _ => {
                    let debit = self.draw(rng);
                    self.draw_related(rng, debit, cross)
                        .map(|credit| (debit, credit))
                }
            };
            if let Some(pair) = pair {
                return pair;
            }
        }
    }
}

/// One SmallBank operation, adapted to Tally: customer `c` has a checking account (`2c - 1`)
/// and a savings account (`2c`); money moves between them with transfers, enters with deposits
/// and leaves with withdrawals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmallBank {
    /// Read a customer's checking and savings at one consistent cut.
    Balance {
        checking: AccountId,
        savings: AccountId,
    },
    /// Deposit into a checking account.
    DepositChecking { account: AccountId, amount: u64 },
    /// Deposit into (or withdraw from) a savings account.
    TransactSavings {
        account: AccountId,
        amount: u64,
        withdraw: bool,
    },
    /// Move a customer's savings into another customer's checking (a transfer of a bounded
    /// amount: Tally has no "all of it").
    Amalgamate {
        from_savings: AccountId,
        to_checking: AccountId,
        amount: u64,
    },
    /// Write a check: a withdrawal from checking.
    WriteCheck { account: AccountId, amount: u64 },
    /// Pay another customer: checking to checking.
    SendPayment {
        from: AccountId,
        to: AccountId,
        amount: u64,
    },
}

/// The SmallBank mix: Amalgamate 15%, Balance 15%, DepositChecking 15%, SendPayment 25%,
/// TransactSavings 15%, WriteCheck 15% (the benchmark's standard mix).
pub fn small_bank(accounts: &Accounts, rng: &mut StdRng, max_amount: u64) -> SmallBank {
    let customers = (accounts.count() / 2).max(2) as u64;
    let customer = |rng: &mut StdRng| {
        // The skew of the pattern picks the customer (through its checking account).
        let account = accounts.draw(rng);
        (account.div_ceil(2)).clamp(1, customers)
    };
    let checking = |c: u64| 2 * c - 1;
    let savings = |c: u64| 2 * c;
    let amount = rng.random_range(1..=max_amount);
    let first = customer(rng);
    let mut second = customer(rng);
    while second == first {
        second = rng.random_range(1..=customers);
    }
    match rng.random_range(0..100) {
        0..15 => SmallBank::Amalgamate {
            from_savings: savings(first),
            to_checking: checking(second),
            amount,
        },
        15..30 => SmallBank::Balance {
            checking: checking(first),
            savings: savings(first),
        },
        30..45 => SmallBank::DepositChecking {
            account: checking(first),
            amount,
        },
        45..70 => SmallBank::SendPayment {
            from: checking(first),
            to: checking(second),
            amount,
        },
        70..85 => SmallBank::TransactSavings {
            account: savings(first),
            amount,
            withdraw: rng.random_bool(0.5),
        },
        _ => SmallBank::WriteCheck {
            account: checking(first),
            amount,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn config() -> ClusterConfig {
        ClusterConfig::local(3, 7101)
    }

    #[test]
    fn cross_shard_fraction_is_respected() {
        let accounts = Accounts::new(&config(), 1000, Pattern::Uniform, 1);
        let mut rng = StdRng::seed_from_u64(2);
        let mut ring = 0;
        for fraction in [0.0, 1.0] {
            for _ in 0..500 {
                let (debit, credit) = accounts.pick(&mut rng, fraction, &mut ring);
                assert_ne!(debit, credit);
                assert_eq!(
                    accounts.owner(debit) != accounts.owner(credit),
                    fraction == 1.0
                );
            }
        }
    }

    #[test]
    fn zipf_and_hot_spot_are_skewed() {
        let mut rng = StdRng::seed_from_u64(3);
        let zipf = Accounts::new(&config(), 10_000, Pattern::Zipf { theta: 0.99 }, 4);
        let hottest = zipf.by_heat[0];
        let hits = (0..10_000)
            .filter(|_| zipf.draw(&mut rng) == hottest)
            .count();
        // The top account of a zipf(0.99) over 10,000 gets about 1/H(10000) ~ 10%.
        assert!((500..2000).contains(&hits), "{hits}");
        let hot = parse_hot_spot("90:10").unwrap();
        let spot = Accounts::new(&config(), 10_000, hot, 5);
        let hot_set: std::collections::HashSet<_> = spot.by_heat[..1000].iter().collect();
        let in_hot = (0..10_000)
            .filter(|_| hot_set.contains(&spot.draw(&mut rng)))
            .count();
        assert!((8700..9300).contains(&in_hot), "{in_hot}");
        assert!(parse_hot_spot("90").is_err());
        assert!(parse_hot_spot("0:10").is_err());
    }

    #[test]
    fn fixed_end_patterns_keep_their_end() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut ring = 0;
        let many = Accounts::new(&config(), 100, Pattern::ManyToOne, 7);
        let sink = many.pick(&mut rng, 0.5, &mut ring).1;
        for _ in 0..50 {
            assert_eq!(many.pick(&mut rng, 0.5, &mut ring).1, sink);
        }
        let circular = Accounts::new(&config(), 100, Pattern::Circular, 8);
        let mut ring = 0;
        let (a, b) = circular.pick(&mut rng, 0.5, &mut ring);
        let (c, _) = circular.pick(&mut rng, 0.5, &mut ring);
        assert_eq!(b, c);
        assert_ne!(a, b);
    }

    #[test]
    fn small_bank_uses_both_accounts_of_a_customer() {
        let accounts = Accounts::new(&config(), 1000, Pattern::Uniform, 9);
        let mut rng = StdRng::seed_from_u64(10);
        for _ in 0..1000 {
            match small_bank(&accounts, &mut rng, 100) {
                SmallBank::Balance { checking, savings } => assert_eq!(checking + 1, savings),
                SmallBank::Amalgamate {
                    from_savings,
                    to_checking,
                    ..
                } => {
                    assert_eq!(from_savings % 2, 0);
                    assert_eq!(to_checking % 2, 1);
                    assert!(from_savings <= 1000 && to_checking <= 1000);
                }
                SmallBank::SendPayment { from, to, .. } => assert_ne!(from, to),
                _ => {}
            }
        }
    }
}
