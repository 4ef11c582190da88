//! Client tests against fake nodes: `net::Server`s on 127.0.0.1:0 whose handler answers by a
//! script and records every request it sees.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use net::{
    AbortReason, Balance, ClusterStatus, ErrorCode, ErrorResponse, Handler, Message, NodeAudit,
    NodeId, NodeStatus, Server, ServerConfig, TransferOutcome, TransferResult, TransferState,
};
use tokio::task::JoinHandle;

use super::*;
use crate::config::{ClusterConfig, NodeConfig};

/// What a fake node does with one request.
enum Reply {
    Answer(Message),
    /// Never answers (the client's timeout fires).
    Hang,
}

/// `script(node, request, requests seen by this node before it)` decides the reply.
type Script = Arc<dyn Fn(NodeId, &Message, usize) -> Reply + Send + Sync>;

struct FakeNode {
    id: NodeId,
    seen: Arc<Mutex<Vec<Message>>>,
    script: Script,
}

impl Handler for FakeNode {
    async fn handle(&self, request: Message) -> Message {
        let reply = {
            let mut seen = self.seen.lock().expect("not poisoned");
            let reply = (self.script)(self.id, &request, seen.len());
            seen.push(request);
            reply
        };
        match reply {
            Reply::Answer(answer) => answer,
            Reply::Hang => std::future::pending().await,
        }
    }
}

/// Fake nodes 1..=node_count, holding shards as in `ClusterConfig::local_replicated` (with one
/// replica: node `i` holds shard `i - 1`); the nodes in `down` have an address nothing listens on.
struct FakeCluster {
    config: ClusterConfig,
    seen: Vec<Arc<Mutex<Vec<Message>>>>,
    servers: Vec<Option<JoinHandle<()>>>,
}

impl FakeCluster {
    async fn start(node_count: u32, down: &[NodeId], script: Script) -> FakeCluster {
        FakeCluster::start_replicated(node_count, 1, down, script).await
    }

    async fn start_replicated(
        node_count: u32,
        replicas: u32,
        down: &[NodeId],
        script: Script,
    ) -> FakeCluster {
        let mut nodes = ClusterConfig::local_replicated(node_count, replicas, 1).nodes;
        let mut seen = Vec::new();
        let mut servers = Vec::new();
        for node in &mut nodes {
            let node_seen = Arc::new(Mutex::new(Vec::new()));
            let (address, server) = if down.contains(&node.id) {
                (closed_address(), None)
            } else {
                let (address, server) =
                    serve(node.id, node_seen.clone(), script.clone(), None).await;
                (address, Some(server))
            };
            node.address = address;
            seen.push(node_seen);
            servers.push(server);
        }
        let config = ClusterConfig::new(node_count, nodes).expect("valid config");
        FakeCluster {
            config,
            seen,
            servers,
        }
    }

    /// The requests node `id` has seen so far.
    fn seen(&self, id: NodeId) -> Vec<Message> {
        self.seen[id as usize - 1]
            .lock()
            .expect("not poisoned")
            .clone()
    }

    fn client(&self, options: ClientOptions) -> TallyClient {
        TallyClient::new(self.config.clone(), options)
    }

    /// An account owned by node `id`.
    fn account_of(&self, id: NodeId) -> AccountId {
        (1..)
            .find(|&account| self.config.owner_of(account) == id)
            .expect("every node owns some account")
    }

    /// An account of `shard`.
    fn account_in(&self, shard: u32) -> AccountId {
        (1..)
            .find(|&account| self.config.shard_of(account) == shard)
            .expect("every shard has accounts")
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        for server in self.servers.iter().flatten() {
            server.abort();
        }
    }
}

/// Serves a fake node on `address` (a fresh port when `None`) until the task is aborted.
async fn serve(
    id: NodeId,
    seen: Arc<Mutex<Vec<Message>>>,
    script: Script,
    address: Option<&str>,
) -> (String, JoinHandle<()>) {
    let handler = FakeNode { id, seen, script };
    let server = Server::bind(
        address.unwrap_or("127.0.0.1:0"),
        ServerConfig::default(),
        handler,
    )
    .await
    .expect("bind");
    let address = server.local_addr().expect("bound address").to_string();
    let task = tokio::spawn(async move {
        let _ = server.run(std::future::pending()).await;
    });
    (address, task)
}

/// An address with nothing listening: a port the OS just handed out, closed again.
fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("bound address").to_string();
    drop(listener);
    address
}

/// Short timeouts and backoffs, so failing attempts cost milliseconds.
fn fast_options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(200),
        attempts_max: 3,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        ..ClientOptions::default()
    }
}

fn script(reply: impl Fn(NodeId, &Message, usize) -> Reply + Send + Sync + 'static) -> Script {
    Arc::new(reply)
}

fn refuse(code: ErrorCode) -> Reply {
    Reply::Answer(ErrorResponse::new(code, "scripted refusal").into())
}

fn committed(request: &Message) -> Reply {
    match request {
        Message::Transfer(transfer) => Reply::Answer(
            TransferResult {
                id: transfer.id,
                outcome: TransferOutcome::Committed,
            }
            .into(),
        ),
        other => panic!("expected a transfer, got {other:?}"),
    }
}

fn transfer_ids(requests: &[Message]) -> Vec<TransferId> {
    requests
        .iter()
        .map(|request| match request {
            Message::Transfer(transfer) => transfer.id,
            other => panic!("expected a transfer, got {other:?}"),
        })
        .collect()
}

/// Answers `GetBalance` with `1000 * node + account`, `GetClusterStatus` with the node's own
/// status, `Audit` with one row, and `GetTransferStatus` with `states[node - 1]`.
fn reads(states: Vec<TransferState>) -> Script {
    script(move |node, request, _| {
        Reply::Answer(match request {
            Message::GetBalance(get) => Balance {
                account: get.account,
                balance: 1000 * u64::from(node) + get.account,
            }
            .into(),
            Message::GetBalances(get) => Balances {
                balances: get
                    .accounts
                    .iter()
                    .map(|account| Balance {
                        account: *account,
                        balance: 1000 * u64::from(node) + account,
                    })
                    .collect(),
            }
            .into(),
            Message::GetClusterStatus(_) => ClusterStatus {
                nodes: vec![NodeStatus {
                    node_id: node,
                    up: true,
                    last_lsn: 40 + u64::from(node),
                    in_doubt_count: 0,
                    uptime_seconds: 7,
                    groups: Vec::new(),
                }],
            }
            .into(),
            Message::Audit(_) => AuditReport {
                nodes: vec![NodeAudit {
                    node_id: node,
                    shard: node - 1,
                    balances_sum: 5,
                    deposits_sum: 5,
                    withdrawals_sum: 0,
                    account_count: 1,
                    negative_balance_count: 0,
                    in_doubt_count: 0,
                }],
            }
            .into(),
            Message::GetTransferStatus(get) => TransferStatus {
                id: get.id,
                state: states[node as usize - 1],
            }
            .into(),
            other => panic!("unscripted request {other:?}"),
        })
    })
}

#[tokio::test]
async fn requests_go_to_the_owner_of_the_account() {
    let cluster = FakeCluster::start(3, &[], reads(Vec::new())).await;
    let client = cluster.client(fast_options());
    for account in 1..=30 {
        let owner = cluster.config.owner_of(account);
        let balance = client.balance(account).await.expect("balance");
        assert_eq!(balance, 1000 * u64::from(owner) + account);
    }
    for node in 1..=3 {
        for request in cluster.seen(node) {
            let Message::GetBalance(get) = request else {
                panic!("unexpected {request:?}");
            };
            assert_eq!(cluster.config.owner_of(get.account), node);
        }
    }
}

#[tokio::test]
async fn wrong_node_redirects_are_followed() {
    // Node 1 says node 2 owns everything; node 2 commits.
    let cluster = FakeCluster::start(
        3,
        &[],
        script(|node, request, _| match node {
            1 => Reply::Answer(ErrorResponse::wrong_node(2).into()),
            _ => committed(request),
        }),
    )
    .await;
    let client = cluster.client(fast_options());
    let debit = cluster.account_of(1);
    let outcome = client.transfer(11, debit, 99, 5).await.expect("transfer");
    assert_eq!(outcome, TransferOutcome::Committed);
    assert_eq!(transfer_ids(&cluster.seen(1)), vec![11]);
    assert_eq!(transfer_ids(&cluster.seen(2)), vec![11]);
}

#[tokio::test]
async fn a_redirect_to_an_unknown_node_is_an_error() {
    let cluster = FakeCluster::start(
        2,
        &[],
        script(|_, _, _| Reply::Answer(ErrorResponse::wrong_node(9).into())),
    )
    .await;
    let client = cluster.client(fast_options());
    let error = client
        .transfer(1, cluster.account_of(2), 3, 4)
        .await
        .expect_err("bad redirect");
    assert!(
        matches!(
            error,
            ClientError::BadRedirect {
                node: 2,
                redirect: Some(9)
            }
        ),
        "{error:?}"
    );
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn overloaded_is_retried_until_it_succeeds() {
    // Refused twice, then done: even a deposit is resent, since a refusal applied nothing.
    let cluster = FakeCluster::start(
        1,
        &[],
        script(|_, request, seen_before| match (request, seen_before) {
            (_, 0) => refuse(ErrorCode::Overloaded),
            (_, 1) => refuse(ErrorCode::ShuttingDown),
            (Message::Deposit(deposit), _) => Reply::Answer(
                Deposited {
                    id: deposit.id,
                    balance_after: deposit.amount,
                    lsn: 3,
                }
                .into(),
            ),
            (other, _) => panic!("unexpected {other:?}"),
        }),
    )
    .await;
    let client = cluster.client(fast_options());
    let deposited = client.deposit(21, 1, 700).await.expect("deposit");
    assert_eq!((deposited.id, deposited.balance_after), (21, 700));
    assert_eq!(cluster.seen(1).len(), 3);
}

#[tokio::test]
async fn a_read_is_retried_after_participant_unavailable_or_timeout_and_a_write_is_not() {
    // A read whose shard leader could not be reached, or whose leadership could not be
    // confirmed in time, changes nothing: it is asked again.
    let cluster = FakeCluster::start(
        1,
        &[],
        script(|_, request, seen_before| match (request, seen_before) {
            (Message::Deposit(_), _) => refuse(ErrorCode::ParticipantUnavailable),
            (_, 0) => refuse(ErrorCode::ParticipantUnavailable),
            (_, 1) => refuse(ErrorCode::Timeout),
            (Message::GetBalance(get), _) => Reply::Answer(
                Balance {
                    account: get.account,
                    balance: 5,
                }
                .into(),
            ),
            (other, _) => panic!("unexpected {other:?}"),
        }),
    )
    .await;
    let client = cluster.client(fast_options());
    assert_eq!(client.balance(1).await.expect("balance"), 5);
    assert_eq!(cluster.seen(1).len(), 3);
    let error = client.deposit(22, 1, 10).await.expect_err("refused");
    assert!(
        matches!(
            error,
            ClientError::Remote {
                code: ErrorCode::ParticipantUnavailable,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(cluster.seen(1).len(), 4, "the write was resent");
}

#[tokio::test]
async fn overloaded_on_every_attempt_is_returned() {
    let cluster = FakeCluster::start(1, &[], script(|_, _, _| refuse(ErrorCode::Overloaded))).await;
    let client = cluster.client(fast_options());
    let error = client.balance(1).await.expect_err("overloaded");
    assert!(
        matches!(
            error,
            ClientError::Remote {
                node: 1,
                code: ErrorCode::Overloaded,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(cluster.seen(1).len(), 3);
}

#[tokio::test]
async fn other_refusals_are_returned_at_once() {
    let cluster =
        FakeCluster::start(1, &[], script(|_, _, _| refuse(ErrorCode::UnknownAccount))).await;
    let client = cluster.client(fast_options());
    let error = client.balance(1).await.expect_err("unknown account");
    assert!(
        matches!(
            error,
            ClientError::Remote {
                code: ErrorCode::UnknownAccount,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert_eq!(cluster.seen(1).len(), 1);
}

#[tokio::test]
async fn a_transfer_without_answer_is_resent_with_the_same_id_then_unknown() {
    let cluster = FakeCluster::start(1, &[], script(|_, _, _| Reply::Hang)).await;
    let client = cluster.client(fast_options());
    let id = TallyClient::new_transfer_id();
    let error = client.transfer(id, 1, 2, 3).await.expect_err("no answer");
    match error {
        ClientError::OutcomeUnknown {
            node: 1,
            id: Some(unknown),
            ..
        } => assert_eq!(unknown, id),
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    assert_eq!(transfer_ids(&cluster.seen(1)), vec![id; 3]);
}

#[tokio::test]
async fn a_transfer_that_may_have_left_stays_unknown_when_later_attempts_cannot_connect() {
    // The only node hangs on the first attempt, then goes away: the first delivery may have been
    // applied, so "unavailable" would be a lie.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (address, server) = serve(1, seen.clone(), script(|_, _, _| Reply::Hang), None).await;
    let config = ClusterConfig::new(
        1,
        vec![NodeConfig {
            id: 1,
            address,
            shards: vec![0],
            leads: Vec::new(),
            http: None,
        }],
    )
    .expect("valid");
    let client = TallyClient::new(config, fast_options());
    let stopper = tokio::spawn({
        let seen = seen.clone();
        async move {
            while seen.lock().expect("not poisoned").is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            server.abort();
        }
    });
    let error = client.transfer(5, 1, 2, 3).await.expect_err("no answer");
    stopper.await.expect("stopper");
    assert!(
        matches!(error, ClientError::OutcomeUnknown { id: Some(5), .. }),
        "{error:?}"
    );
}

/// The ids of the deposits and withdrawals in `requests`, with `true` for a deposit.
fn movement_ids(requests: &[Message]) -> Vec<(TransferId, bool)> {
    requests
        .iter()
        .map(|request| match request {
            Message::Deposit(deposit) => (deposit.id, true),
            Message::Withdraw(withdraw) => (withdraw.id, false),
            other => panic!("expected a deposit or withdrawal, got {other:?}"),
        })
        .collect()
}

/// The answer a node gives a deposit or withdrawal it applied.
fn moved(request: &Message) -> Reply {
    Reply::Answer(match request {
        Message::Deposit(deposit) => Deposited {
            id: deposit.id,
            balance_after: deposit.amount,
            lsn: 7,
        }
        .into(),
        Message::Withdraw(withdraw) => Withdrawn {
            id: withdraw.id,
            balance_after: 1_000 - withdraw.amount,
            lsn: 8,
        }
        .into(),
        other => panic!("expected a deposit or withdrawal, got {other:?}"),
    })
}

#[tokio::test]
async fn a_deposit_or_withdrawal_without_answer_is_resent_with_the_same_id_then_unknown() {
    let cluster = FakeCluster::start(1, &[], script(|_, _, _| Reply::Hang)).await;
    let client = cluster.client(fast_options());
    let error = client.deposit(8, 1, 100).await.expect_err("no answer");
    assert!(
        matches!(
            error,
            ClientError::OutcomeUnknown {
                node: 1,
                id: Some(8),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    let error = client.withdraw(9, 1, 100).await.expect_err("no answer");
    assert!(
        matches!(error, ClientError::OutcomeUnknown { id: Some(9), .. }),
        "{error:?}"
    );
    let sent = movement_ids(&cluster.seen(1));
    assert_eq!(sent, [vec![(8, true); 3], vec![(9, false); 3]].concat());
}

#[tokio::test]
async fn a_deposit_or_withdrawal_whose_answer_was_lost_gets_the_answer_to_its_resend() {
    // Every first attempt of an id goes unanswered; the resend is answered.
    let cluster = FakeCluster::start(
        1,
        &[],
        script(|_, request, seen_before| {
            if seen_before % 2 == 0 {
                Reply::Hang
            } else {
                moved(request)
            }
        }),
    )
    .await;
    let client = cluster.client(fast_options());
    let deposited = client.deposit(21, 1, 700).await.expect("deposit");
    assert_eq!(
        (deposited.id, deposited.balance_after, deposited.lsn),
        (21, 700, 7)
    );
    let withdrawn = client.withdraw(22, 1, 300).await.expect("withdrawal");
    assert_eq!(
        (withdrawn.id, withdrawn.balance_after, withdrawn.lsn),
        (22, 700, 8)
    );
    assert_eq!(
        movement_ids(&cluster.seen(1)),
        vec![(21, true), (21, true), (22, false), (22, false)]
    );
}

#[tokio::test]
async fn a_refusal_of_a_resent_withdrawal_is_its_answer() {
    // The first attempt may have been refused and recorded; the resend hears the refusal.
    let cluster = FakeCluster::start(
        1,
        &[],
        script(|_, _, seen_before| match seen_before {
            0 => Reply::Hang,
            _ => refuse(ErrorCode::InsufficientFunds),
        }),
    )
    .await;
    let client = cluster.client(fast_options());
    let error = client.withdraw(31, 1, 5).await.expect_err("refused");
    assert!(
        matches!(
            error,
            ClientError::Remote {
                code: ErrorCode::InsufficientFunds,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert_eq!(movement_ids(&cluster.seen(1)), vec![(31, false); 2]);
}

#[tokio::test]
async fn a_lock_conflict_is_retried_and_does_not_settle_an_earlier_lost_attempt() {
    // A conflict, then success: retried like an overload.
    let cluster = FakeCluster::start(
        1,
        &[],
        script(|_, request, seen_before| match seen_before {
            0 => refuse(ErrorCode::LockConflict),
            _ => moved(request),
        }),
    )
    .await;
    let client = cluster.client(fast_options());
    let deposited = client.deposit(41, 1, 5).await.expect("deposit");
    assert_eq!(deposited.id, 41);
    assert_eq!(cluster.seen(1).len(), 2);

    // No answer, then conflicts until the attempts run out: the first attempt may still apply,
    // so the outcome is unknown, not a conflict that "surely applied nothing".
    let cluster = FakeCluster::start(
        1,
        &[],
        script(|_, _, seen_before| match seen_before {
            0 => Reply::Hang,
            _ => refuse(ErrorCode::LockConflict),
        }),
    )
    .await;
    let client = cluster.client(fast_options());
    let error = client.deposit(42, 1, 5).await.expect_err("unknown");
    assert!(
        matches!(error, ClientError::OutcomeUnknown { id: Some(42), .. }),
        "{error:?}"
    );
    assert_eq!(movement_ids(&cluster.seen(1)), vec![(42, true); 3]);
}

#[tokio::test]
async fn a_deposit_that_never_left_is_unavailable_not_unknown() {
    let cluster = FakeCluster::start(1, &[1], reads(Vec::new())).await;
    let client = cluster.client(fast_options());
    let error = client.deposit(51, 1, 5).await.expect_err("down");
    assert!(
        matches!(error, ClientError::Unavailable { node: 1, .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn a_read_without_answer_is_unavailable() {
    let cluster = FakeCluster::start(1, &[], script(|_, _, _| Reply::Hang)).await;
    let client = cluster.client(fast_options());
    let error = client.balance(1).await.expect_err("no answer");
    assert!(
        matches!(error, ClientError::Unavailable { node: 1, .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert_eq!(cluster.seen(1).len(), 3);
}

/// A consistent read goes to the owner of its first account, and to the next nodes in turn when
/// that one cannot be reached: any node serves it.
#[tokio::test]
async fn a_read_of_many_accounts_goes_around_an_unreachable_node() {
    let cluster = FakeCluster::start(3, &[2], reads(Vec::new())).await;
    let client = cluster.client(fast_options());
    let accounts = [cluster.account_of(2), cluster.account_of(1)];
    let balances = client.balances(&accounts).await.expect("served by node 3");
    assert_eq!(
        balances
            .iter()
            .map(|balance| balance.balance)
            .collect::<Vec<_>>(),
        accounts.map(|account| 3000 + account)
    );
    assert!(
        cluster.seen(1).is_empty(),
        "tried in turn from node 2: node 3 first"
    );
    let accounts = [cluster.account_of(1), cluster.account_of(3)];
    let balances = client.balances(&accounts).await.expect("served by node 1");
    assert_eq!(balances[0].balance, 1000 + accounts[0]);
}

#[tokio::test]
async fn an_unreachable_node_is_unavailable() {
    let cluster = FakeCluster::start(1, &[1], reads(Vec::new())).await;
    let client = cluster.client(fast_options());
    let error = client.transfer(3, 1, 2, 3).await.expect_err("down");
    assert!(
        matches!(error, ClientError::Unavailable { node: 1, .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn a_closed_connection_is_replaced() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (address, server) = serve(1, seen.clone(), reads(Vec::new()), None).await;
    let config = ClusterConfig::new(
        1,
        vec![NodeConfig {
            id: 1,
            address: address.clone(),
            shards: vec![0],
            leads: Vec::new(),
            http: None,
        }],
    )
    .expect("valid");
    let client = TallyClient::new(config, fast_options());
    assert_eq!(client.balance(4).await.expect("first"), 1004);
    // Restart the node on the same port: the client's connection is dead.
    server.abort();
    let _ = server.await;
    let (_, restarted) = serve(1, seen.clone(), reads(Vec::new()), Some(&address)).await;
    assert_eq!(client.balance(5).await.expect("after restart"), 1005);
    restarted.abort();
}

#[tokio::test]
async fn balances_are_read_in_one_request_to_the_first_accounts_owner() {
    let cluster = FakeCluster::start(
        3,
        &[],
        script(|_, request, _| match request {
            Message::GetBalances(get) => Reply::Answer(
                Balances {
                    balances: get
                        .accounts
                        .iter()
                        .map(|&account| Balance {
                            account,
                            balance: account * 10,
                        })
                        .collect(),
                }
                .into(),
            ),
            other => panic!("unexpected {other:?}"),
        }),
    )
    .await;
    let client = cluster.client(fast_options());
    let accounts = [
        cluster.account_of(3),
        cluster.account_of(1),
        cluster.account_of(2),
    ];
    let balances = client.balances(&accounts).await.expect("balances");
    let expected: Vec<_> = accounts
        .iter()
        .map(|&account| Balance {
            account,
            balance: account * 10,
        })
        .collect();
    assert_eq!(balances, expected);
    assert_eq!(cluster.seen(3).len(), 1);
    assert!(cluster.seen(1).is_empty() && cluster.seen(2).is_empty());
    assert!(client.balances(&[]).await.expect("empty").is_empty());
}

#[tokio::test]
async fn an_owner_name_too_long_is_refused_before_sending() {
    let cluster = FakeCluster::start(1, &[], reads(Vec::new())).await;
    let client = cluster.client(fast_options());
    let error = client
        .create_account(1, Some("x".repeat(65)), 0)
        .await
        .expect_err("too long");
    assert!(matches!(error, ClientError::InvalidRequest(_)), "{error:?}");
    assert!(cluster.seen(1).is_empty());
}

#[tokio::test]
async fn cluster_status_lists_a_down_node() {
    let cluster = FakeCluster::start(3, &[2], reads(Vec::new())).await;
    let client = cluster.client(fast_options());
    let statuses = client.cluster_status().await.expect("status");
    let down = NodeStatus {
        node_id: 2,
        up: false,
        last_lsn: 0,
        in_doubt_count: 0,
        uptime_seconds: 0,
        groups: Vec::new(),
    };
    assert_eq!(statuses.len(), 3);
    assert_eq!(statuses[1], down);
    for (index, node) in [(0, 1), (2, 3)] {
        assert_eq!(statuses[index].node_id, node);
        assert!(statuses[index].up);
        assert_eq!(statuses[index].last_lsn, 40 + u64::from(node));
    }
}

#[tokio::test]
async fn audit_asks_the_first_node_that_answers() {
    let cluster = FakeCluster::start(3, &[1], reads(Vec::new())).await;
    let client = cluster.client(fast_options());
    let report = client.audit().await.expect("audit");
    assert_eq!(report.nodes[0].node_id, 2);
    assert!(cluster.seen(3).is_empty());
}

#[tokio::test]
async fn transfer_status_merges_every_nodes_answer() {
    let committed = [
        TransferState::Unknown,
        TransferState::Committed,
        TransferState::Unknown,
    ];
    let cluster = FakeCluster::start(3, &[3], reads(committed.to_vec())).await;
    let client = cluster.client(fast_options());
    // A decision wins even with node 3 down.
    assert_eq!(
        client.transfer_status(77).await.expect("status"),
        TransferState::Committed
    );
    for node in 1..=2 {
        assert_eq!(
            cluster.seen(node),
            vec![GetTransferStatus { id: 77 }.into()]
        );
    }

    let undecided = [
        TransferState::Unknown,
        TransferState::InProgress,
        TransferState::Unknown,
    ];
    let cluster = FakeCluster::start(3, &[3], reads(undecided.to_vec())).await;
    let client = cluster.client(fast_options());
    let error = client.transfer_status(78).await.expect_err("incomplete");
    match error {
        ClientError::StatusIncomplete {
            id: 78,
            state: TransferState::InProgress,
            unreachable,
        } => assert_eq!(unreachable, vec![3]),
        other => panic!("expected StatusIncomplete, got {other:?}"),
    }
}

/// Merges `states` answered by nodes 1, 2, ... (`None`: no answer).
fn check_merge(states: &[Option<TransferState>]) -> Result<TransferState, ClientError> {
    let answers = states
        .iter()
        .zip(1..)
        .map(|(state, node)| {
            let answer = state.ok_or_else(|| ClientError::Unavailable {
                node,
                reason: "down".to_string(),
            });
            (node, answer)
        })
        .collect();
    merge_transfer_states(9, answers)
}

#[test]
fn merging_transfer_states() {
    use TransferState::{Aborted, Committed, InProgress, Unknown};
    let aborted = Aborted(AbortReason::InsufficientFunds);
    let presumed = Aborted(AbortReason::PresumedAbort);
    assert_eq!(
        check_merge(&[Some(Unknown), Some(Unknown)]).ok(),
        Some(Unknown)
    );
    assert_eq!(
        check_merge(&[Some(Unknown), Some(InProgress)]).ok(),
        Some(InProgress)
    );
    assert_eq!(
        check_merge(&[Some(InProgress), Some(Committed)]).ok(),
        Some(Committed)
    );
    assert_eq!(check_merge(&[None, Some(aborted)]).ok(), Some(aborted));
    // Abort reasons may differ; the first node's is kept.
    assert_eq!(
        check_merge(&[Some(aborted), Some(presumed)]).ok(),
        Some(aborted)
    );
    assert!(matches!(
        check_merge(&[Some(Committed), Some(Unknown), Some(aborted)]),
        Err(ClientError::Inconsistent(_))
    ));
    assert!(matches!(
        check_merge(&[Some(Unknown), None, None]),
        Err(ClientError::StatusIncomplete { state: Unknown, ref unreachable, .. })
            if *unreachable == vec![2, 3]
    ));
}

#[test]
fn new_transfer_ids_differ() {
    let first = TallyClient::new_transfer_id();
    let second = TallyClient::new_transfer_id();
    assert!(first != 0 && second != 0 && first != second);
}

#[test]
fn the_client_is_send_and_sync() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<TallyClient>();
}

// Replica groups: following and remembering leaders.

fn not_leader(leader: Option<NodeId>) -> Reply {
    Reply::Answer(ErrorResponse::not_leader(leader, 0).into())
}

/// The shard of the account a request is about, in a cluster of `shard_count` shards.
fn shard_of_request(request: &Message, shard_count: u32) -> u32 {
    let account = match request {
        Message::Transfer(transfer) => transfer.debit,
        Message::Deposit(deposit) => deposit.account,
        Message::GetBalance(get) => get.account,
        other => panic!("unexpected {other:?}"),
    };
    crate::config::shard_of(account, shard_count)
}

/// Answers a transfer, deposit or balance read as applied, the balance `1000 * node + account`.
fn served(node: NodeId, request: &Message) -> Reply {
    match request {
        Message::Transfer(_) => committed(request),
        Message::Deposit(_) => moved(request),
        Message::GetBalance(get) => Reply::Answer(
            Balance {
                account: get.account,
                balance: 1000 * u64::from(node) + get.account,
            }
            .into(),
        ),
        other => panic!("unexpected {other:?}"),
    }
}

/// A script where `leader` serves every request and every other node answers `follower()`.
fn led_by(leader: NodeId, follower: impl Fn() -> Reply + Send + Sync + 'static) -> Script {
    script(move |node, request, _| {
        if node == leader {
            served(node, request)
        } else {
            follower()
        }
    })
}

impl TallyClient {
    /// The node this client takes to lead `shard`.
    fn remembered_leader(&self, shard: u32) -> NodeId {
        self.shared.leaders.get(shard)
    }
}

#[tokio::test]
async fn not_leader_naming_a_replica_is_followed_and_remembered() {
    // Three replicas of each of three shards; node 3 leads them all, and the others say so.
    let cluster = FakeCluster::start_replicated(3, 3, &[], led_by(3, || not_leader(Some(3)))).await;
    let client = cluster.client(fast_options());
    let debit = cluster.account_in(0);
    assert_eq!(client.remembered_leader(0), 1, "the preferred leader first");
    let outcome = client.transfer(11, debit, 99, 5).await.expect("transfer");
    assert_eq!(outcome, TransferOutcome::Committed);
    assert_eq!(transfer_ids(&cluster.seen(1)), vec![11]);
    assert_eq!(client.remembered_leader(0), 3);
    // Remembered: the next request of the shard goes straight there.
    client.transfer(12, debit, 99, 5).await.expect("transfer");
    assert_eq!(transfer_ids(&cluster.seen(1)), vec![11]);
    assert!(cluster.seen(2).is_empty());
    assert_eq!(transfer_ids(&cluster.seen(3)), vec![11, 12]);
    // Reads and deposits are resent after NotLeader too: it says nothing was done.
    let account = cluster.account_in(1);
    assert_eq!(client.balance(account).await.expect("read"), 3000 + account);
    let deposited = client.deposit(21, account, 7).await.expect("deposit");
    assert_eq!(deposited.id, 21);
    assert_eq!(cluster.seen(2).len(), 1, "only the read asked node 2");
    assert_eq!(client.remembered_leader(1), 3);
    assert_eq!(client.remembered_leader(2), 3, "shard 2's preferred leader");
}

#[tokio::test]
async fn not_leader_without_a_leader_moves_to_the_next_replica() {
    // An election: no one knows the leader, which is node 2.
    let cluster = FakeCluster::start_replicated(3, 3, &[], led_by(2, || not_leader(None))).await;
    let client = cluster.client(fast_options());
    client
        .transfer(31, cluster.account_in(0), 99, 5)
        .await
        .expect("transfer");
    assert_eq!(transfer_ids(&cluster.seen(1)), vec![31]);
    assert_eq!(transfer_ids(&cluster.seen(2)), vec![31]);
    assert!(cluster.seen(3).is_empty(), "node 2 is next after node 1");
    assert_eq!(client.remembered_leader(0), 2);
    // Shard 2 starts at node 3, then wraps to node 1, then node 2.
    client
        .transfer(32, cluster.account_in(2), 99, 5)
        .await
        .expect("transfer");
    assert_eq!(transfer_ids(&cluster.seen(3)), vec![32]);
    assert_eq!(transfer_ids(&cluster.seen(1)), vec![31, 32]);
    assert_eq!(transfer_ids(&cluster.seen(2)), vec![31, 32]);
    assert_eq!(client.remembered_leader(2), 2);
}

#[tokio::test]
async fn a_dead_remembered_leader_is_skipped_for_the_next_replica() {
    let cluster =
        FakeCluster::start_replicated(3, 3, &[1], script(|node, request, _| served(node, request)))
            .await;
    let client = cluster.client(fast_options());
    let account = cluster.account_in(0);
    assert_eq!(client.balance(account).await.expect("read"), 2000 + account);
    assert_eq!(client.remembered_leader(0), 2);
    client.balance(account).await.expect("read");
    assert_eq!(cluster.seen(2).len(), 2);
    assert!(cluster.seen(3).is_empty());
}

#[tokio::test]
async fn a_leader_that_does_not_answer_is_skipped_and_a_write_resent_with_its_id() {
    let cluster = FakeCluster::start_replicated(
        3,
        3,
        &[],
        script(|node, request, _| match node {
            1 => Reply::Hang,
            _ => served(node, request),
        }),
    )
    .await;
    let client = cluster.client(fast_options());
    let outcome = client
        .transfer(41, cluster.account_in(0), 99, 5)
        .await
        .expect("transfer");
    assert_eq!(outcome, TransferOutcome::Committed);
    assert_eq!(transfer_ids(&cluster.seen(1)), vec![41]);
    assert_eq!(transfer_ids(&cluster.seen(2)), vec![41]);
    assert_eq!(client.remembered_leader(0), 2);
}

#[tokio::test]
async fn not_leader_naming_a_node_outside_the_replicas_is_not_followed() {
    // Four nodes, two replicas a shard: shard s on nodes s + 1 and s + 2. The first replica of
    // shards 0 to 2 names a node that holds no replica of it (3), no node at all (9), or itself.
    let cluster = FakeCluster::start_replicated(
        4,
        2,
        &[],
        script(
            |node, request, _| match (node, shard_of_request(request, 4)) {
                (1, 0) => not_leader(Some(3)),
                (2, 1) => not_leader(Some(9)),
                (3, 2) => not_leader(Some(3)),
                _ => served(node, request),
            },
        ),
    )
    .await;
    let client = cluster.client(fast_options());
    assert_eq!(cluster.config.replicas_of(0), [1, 2]);
    assert_eq!(cluster.config.replicas_of(1), [2, 3]);
    client
        .transfer(51, cluster.account_in(0), 99, 5)
        .await
        .expect("transfer");
    for (id, shard) in [(52, 1), (53, 2)] {
        client
            .transfer(id, cluster.account_in(shard), 99, 5)
            .await
            .expect("transfer");
    }
    assert_eq!(transfer_ids(&cluster.seen(1)), vec![51]);
    assert_eq!(transfer_ids(&cluster.seen(2)), vec![51, 52]);
    assert_eq!(transfer_ids(&cluster.seen(3)), vec![52, 53]);
    assert_eq!(transfer_ids(&cluster.seen(4)), vec![53]);
    let remembered: Vec<NodeId> = (0..3)
        .map(|shard| client.remembered_leader(shard))
        .collect();
    assert_eq!(remembered, [2, 3, 4]);
}

#[tokio::test]
async fn the_remembered_leader_is_shared_by_clones() {
    let cluster = FakeCluster::start_replicated(3, 3, &[], led_by(3, || not_leader(Some(3)))).await;
    let client = cluster.client(fast_options());
    let clone = client.clone();
    let account = cluster.account_in(0);
    client.balance(account).await.expect("read");
    assert_eq!(clone.remembered_leader(0), 3);
    clone.balance(account).await.expect("read");
    assert_eq!(
        cluster.seen(1).len(),
        1,
        "the clone went straight to node 3"
    );
    assert_eq!(cluster.seen(3).len(), 2);
}

#[tokio::test]
async fn not_leader_on_every_attempt_is_returned_unless_a_write_may_have_left() {
    let cluster =
        FakeCluster::start_replicated(3, 3, &[], script(|_, _, _| not_leader(None))).await;
    let client = cluster.client(fast_options());
    let error = client
        .balance(cluster.account_in(0))
        .await
        .expect_err("no leader");
    assert!(
        matches!(
            error,
            ClientError::Remote {
                code: ErrorCode::NotLeader,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_retryable());
    // Around the replicas once: nodes 1, 2, 3.
    for node in 1..=3 {
        assert_eq!(cluster.seen(node).len(), 1);
    }

    // The first attempt may have been applied before its node lost the lead.
    let cluster = FakeCluster::start_replicated(
        3,
        3,
        &[],
        script(|node, _, _| match node {
            1 => Reply::Hang,
            _ => not_leader(None),
        }),
    )
    .await;
    let client = cluster.client(fast_options());
    let error = client
        .deposit(61, cluster.account_in(0), 5)
        .await
        .expect_err("unknown");
    assert!(
        matches!(error, ClientError::OutcomeUnknown { id: Some(61), .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_late_failure_does_not_undo_a_newer_leader() {
    // A read hangs on node 1; meanwhile another request learns that node 3 leads. When the read
    // times out it must not move the memory from node 3 to node 2 (the replica after node 1).
    let cluster = FakeCluster::start_replicated(
        3,
        3,
        &[],
        script(|node, request, _| match node {
            1 => Reply::Hang,
            2 => not_leader(Some(3)),
            _ => served(node, request),
        }),
    )
    .await;
    let client = cluster.client(fast_options());
    let account = cluster.account_in(0);
    let read = tokio::spawn({
        let client = client.clone();
        async move { client.balance(account).await }
    });
    while cluster.seen(1).is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(client.shared.leaders.replace(0, 1, 3), 3);
    let balance = read.await.expect("joined").expect("read");
    assert_eq!(balance, 3000 + account);
    assert!(cluster.seen(2).is_empty(), "went to node 3, the newer news");
    assert_eq!(client.remembered_leader(0), 3);
}

/// The seed of a randomized test: `TALLY_SEED` if set, else a fresh one; printed either way, so
/// that a failing run can be replayed.
fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("TALLY_SEED") {
        Ok(seed) => seed.parse().expect("TALLY_SEED is a u64"),
        Err(_) => rand::random(),
    };
    println!("{test}: seed {seed} (replay with TALLY_SEED={seed})");
    seed
}

/// Leaders move at random among the live replicas of their shards, and followers answer with
/// the leader, with no leader, or with a node outside the shard: every read still finds its
/// shard's leader within as many attempts as the shard has replicas, goes only to replicas of
/// its shard, and leaves the leader remembered.
#[tokio::test]
async fn leaders_are_found_whatever_the_followers_say() {
    use rand::{Rng, SeedableRng, rngs::StdRng};

    const NODES: u32 = 5;
    const REPLICAS: u32 = 3;
    let seed = test_seed("leaders_are_found_whatever_the_followers_say");
    let layout = ClusterConfig::local_replicated(NODES, REPLICAS, 1);
    // Node 5 is down; each shard is first led by its first live replica.
    let down = 5;
    let truth: Arc<Mutex<Vec<NodeId>>> = Arc::new(Mutex::new(
        (0..NODES)
            .map(|shard| {
                *layout
                    .replicas_of(shard)
                    .iter()
                    .find(|&&node| node != down)
                    .expect("a live replica")
            })
            .collect(),
    ));
    let answers = Arc::new(Mutex::new(StdRng::seed_from_u64(seed ^ 1)));
    let cluster = FakeCluster::start_replicated(
        NODES,
        REPLICAS,
        &[down],
        script({
            let truth = truth.clone();
            move |node, request, _| {
                let leader =
                    truth.lock().expect("not poisoned")[shard_of_request(request, NODES) as usize];
                if node == leader {
                    return served(node, request);
                }
                match answers.lock().expect("not poisoned").random_range(0..3) {
                    0 => not_leader(Some(leader)),
                    1 => not_leader(None),
                    _ => not_leader(Some(9)),
                }
            }
        }),
    )
    .await;
    let client = cluster.client(ClientOptions {
        attempts_max: REPLICAS,
        ..fast_options()
    });
    let mut rng = StdRng::seed_from_u64(seed);
    for step in 0..300 {
        if rng.random_bool(0.3) {
            let shard = rng.random_range(0..NODES);
            let live: Vec<NodeId> = cluster
                .config
                .replicas_of(shard)
                .iter()
                .copied()
                .filter(|&node| node != down)
                .collect();
            truth.lock().expect("not poisoned")[shard as usize] =
                live[rng.random_range(0..live.len())];
        }
        let account = rng.random_range(1..=1_000);
        let shard = cluster.config.shard_of(account);
        let leader = truth.lock().expect("not poisoned")[shard as usize];
        let balance = client
            .balance(account)
            .await
            .unwrap_or_else(|error| panic!("step {step}: account {account}: {error}"));
        assert_eq!(balance, 1000 * u64::from(leader) + account, "step {step}");
        assert_eq!(client.remembered_leader(shard), leader, "step {step}");
    }
    for node in 1..=NODES {
        for request in cluster.seen(node) {
            let shard = shard_of_request(&request, NODES);
            assert!(
                cluster.config.replicas_of(shard).contains(&node),
                "node {node} was asked about shard {shard}"
            );
        }
    }
}
