//! One client of the load: picks its requests, sends them (closed or open loop), and records what
//! it hears, in the recorder for the measurements and in its ledger for the end-of-run checks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{ClientError, TallyClient};
use futures_util::future::join_all;
use net::{AccountId, TransferId, TransferOutcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::recorder::Recorder;
use crate::workload::{self, Accounts, SmallBank};
use crate::{LoadgenArgs, lock};

/// Ids of committed and aborted transfers each client keeps for the end-of-run status check.
const STATUS_SAMPLE_PER_CLIENT: usize = 200;

/// What one client saw, for the end-of-run checks.
#[derive(Default)]
pub(crate) struct Ledger {
    /// Net change per account implied by acknowledged outcomes.
    pub(crate) deltas: HashMap<AccountId, i128>,
    pub(crate) committed_sample: Vec<TransferId>,
    pub(crate) aborted_sample: Vec<TransferId>,
    /// Transfers whose outcome the client never heard: (id, debit, credit, amount).
    pub(crate) unknown_transfers: Vec<(TransferId, AccountId, AccountId, u64)>,
    /// Deposits and withdrawals whose outcome the client never heard, resent with their ids at
    /// the end.
    pub(crate) unknown_movements: Vec<Movement>,
}

/// A deposit (positive `change`) or withdrawal (negative) of `change.unsigned_abs()`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Movement {
    pub(crate) id: TransferId,
    pub(crate) account: AccountId,
    pub(crate) change: i128,
}

impl Movement {
    fn new(account: AccountId, amount: u64, deposit: bool) -> Movement {
        let amount = i128::from(amount);
        Movement {
            id: TallyClient::new_transfer_id(),
            account,
            change: if deposit { amount } else { -amount },
        }
    }

    /// Sends it (again: the node applies an id at most once and answers with its first answer).
    pub(crate) async fn send(&self, client: &TallyClient) -> Result<(), ClientError> {
        let amount = u64::try_from(self.change.unsigned_abs()).expect("made from a u64");
        if self.change > 0 {
            client.deposit(self.id, self.account, amount).await?;
        } else {
            client.withdraw(self.id, self.account, amount).await?;
        }
        Ok(())
    }
}

/// One request a client sends.
enum Request {
    Transfer {
        debit: AccountId,
        credit: AccountId,
        amount: u64,
    },
    SmallBank(SmallBank),
}

/// One client: sends requests until told to stop, records what it hears.
pub(crate) struct Worker {
    pub(crate) client: TallyClient,
    pub(crate) accounts: Arc<Accounts>,
    pub(crate) recorder: Arc<Mutex<Recorder>>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) args: LoadgenArgs,
    pub(crate) seed: u64,
    pub(crate) started: Instant,
    /// The end of the measured window: no request is scheduled after it.
    pub(crate) ends: Instant,
    pub(crate) index: u32,
}

impl Worker {
    pub(crate) async fn run(self) -> Ledger {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut ledger = Ledger::default();
        let mut ring = u64::from(self.index) * 7919;
        // Open loop: this client's share of the rate, on a fixed schedule.
        let interval = self.args.rate.map(|rate| {
            Duration::from_secs_f64(
                f64::from(self.args.client_batch) * f64::from(self.args.clients) / rate,
            )
        });
        let mut intended = self.started
            + interval.map_or(Duration::ZERO, |interval| {
                interval.mul_f64(f64::from(self.index) / f64::from(self.args.clients))
            });
        while !self.stop.load(Ordering::Relaxed) {
            if interval.is_some() {
                if intended >= self.ends {
                    break;
                }
                tokio::time::sleep_until(intended.into()).await;
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            let began = if interval.is_some() {
                intended
            } else {
                Instant::now()
            };
            let batch: Vec<Request> = (0..self.args.client_batch)
                .map(|_| self.next_request(&mut rng, &mut ring))
                .collect();
            // Requests of one client share its connection: awaiting them together pipelines
            // them.
            let answers = join_all(batch.into_iter().map(|request| async {
                let answer = self.send(request).await;
                (answer, Instant::now())
            }))
            .await;
            let mut recorder = lock(&self.recorder);
            for (answer, done) in answers {
                let micros = done.duration_since(began).as_micros() as u64;
                self.record(&mut recorder, &mut ledger, answer, micros);
            }
            drop(recorder);
            if let Some(interval) = interval {
                intended += interval;
            }
        }
        ledger
    }

    fn next_request(&self, rng: &mut StdRng, ring: &mut u64) -> Request {
        if self.args.smallbank {
            return Request::SmallBank(workload::small_bank(
                &self.accounts,
                rng,
                self.args.max_amount,
            ));
        }
        let (debit, credit) = self.accounts.pick(rng, self.args.cross_shard, ring);
        Request::Transfer {
            debit,
            credit,
            amount: rng.random_range(1..=self.args.max_amount),
        }
    }

    async fn send(&self, request: Request) -> Answer {
        let client = &self.client;
        match request {
            Request::Transfer {
                debit,
                credit,
                amount,
            }
            | Request::SmallBank(
                SmallBank::Amalgamate {
                    from_savings: debit,
                    to_checking: credit,
                    amount,
                }
                | SmallBank::SendPayment {
                    from: debit,
                    to: credit,
                    amount,
                },
            ) => {
                let id = TallyClient::new_transfer_id();
                let result = client.transfer(id, debit, credit, amount).await;
                Answer::Transfer {
                    id,
                    debit,
                    credit,
                    amount,
                    result,
                }
            }
            Request::SmallBank(SmallBank::Balance { checking, savings }) => Answer::Other {
                movement: None,
                result: client.balances(&[checking, savings]).await.map(|_| ()),
            },
            Request::SmallBank(
                SmallBank::DepositChecking { account, amount }
                | SmallBank::TransactSavings {
                    account,
                    amount,
                    withdraw: false,
                },
            ) => Self::send_movement(client, Movement::new(account, amount, true)).await,
            Request::SmallBank(
                SmallBank::WriteCheck { account, amount }
                | SmallBank::TransactSavings {
                    account,
                    amount,
                    withdraw: true,
                },
            ) => Self::send_movement(client, Movement::new(account, amount, false)).await,
        }
    }

    async fn send_movement(client: &TallyClient, movement: Movement) -> Answer {
        Answer::Other {
            movement: Some(movement),
            result: movement.send(client).await,
        }
    }

    fn record(&self, recorder: &mut Recorder, ledger: &mut Ledger, answer: Answer, micros: u64) {
        match answer {
            Answer::Transfer {
                id,
                debit,
                credit,
                amount,
                result,
            } => match result {
                Ok(TransferOutcome::Committed) => {
                    recorder.committed += 1;
                    recorder.second[0] += 1;
                    recorder.latency(micros);
                    *ledger.deltas.entry(debit).or_default() -= i128::from(amount);
                    *ledger.deltas.entry(credit).or_default() += i128::from(amount);
                    sample(&mut ledger.committed_sample, id, recorder.committed);
                }
                Ok(TransferOutcome::Aborted(reason)) => {
                    *recorder.aborted.entry(format!("{reason:?}")).or_default() += 1;
                    recorder.second[1] += 1;
                    recorder.latency(micros);
                    let seen: u64 = recorder.aborted.values().sum();
                    sample(&mut ledger.aborted_sample, id, seen);
                }
                Err(error) if maybe_applied(&error) => {
                    recorder.unknown += 1;
                    recorder.second[2] += 1;
                    recorder.latency(micros);
                    ledger.unknown_transfers.push((id, debit, credit, amount));
                }
                Err(_) => {
                    recorder.failed += 1;
                    recorder.second[3] += 1;
                    recorder.latency(micros);
                }
            },
            Answer::Other { movement, result } => match result {
                Ok(()) => {
                    recorder.other_ops += 1;
                    recorder.latency(micros);
                    if let Some(movement) = movement {
                        *ledger.deltas.entry(movement.account).or_default() += movement.change;
                    }
                }
                Err(error) if maybe_applied(&error) => {
                    recorder.unknown += 1;
                    recorder.second[2] += 1;
                    recorder.latency(micros);
                    if let Some(movement) = movement {
                        ledger.unknown_movements.push(movement);
                    }
                }
                // A refused withdrawal (insufficient funds) changed nothing.
                Err(ClientError::Remote { .. }) => {
                    recorder.other_ops += 1;
                    recorder.latency(micros);
                }
                Err(_) => {
                    recorder.failed += 1;
                    recorder.second[3] += 1;
                    recorder.latency(micros);
                }
            },
        }
    }
}

/// The request may have been applied although no outcome came: no answer after sending, or a
/// node that failed while handling it (`Internal`, `Timeout`).
pub(crate) fn maybe_applied(error: &ClientError) -> bool {
    match error {
        ClientError::OutcomeUnknown { .. } => true,
        ClientError::Remote { code, .. } => {
            matches!(code, net::ErrorCode::Internal | net::ErrorCode::Timeout)
        }
        _ => false,
    }
}

/// What a request got.
enum Answer {
    Transfer {
        id: TransferId,
        debit: AccountId,
        credit: AccountId,
        amount: u64,
        result: Result<TransferOutcome, ClientError>,
    },
    /// A read, or a deposit or withdrawal (`movement`).
    Other {
        movement: Option<Movement>,
        result: Result<(), ClientError>,
    },
}

/// Keeps an evenly spread sample of at most `STATUS_SAMPLE_PER_CLIENT` ids.
fn sample(sample: &mut Vec<TransferId>, id: TransferId, seen: u64) {
    if sample.len() < STATUS_SAMPLE_PER_CLIENT {
        sample.push(id);
    } else if seen % 17 == 0 {
        let slot = (seen / 17) as usize % STATUS_SAMPLE_PER_CLIENT;
        sample[slot] = id;
    }
}
