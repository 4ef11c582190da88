//! Deposits and withdrawals through real nodes, idempotent by their id: each wire case is one
//! frame to the account's node on a raw connection (so no client retry hides what the node
//! answers); answers survive a restart, and a deposit whose node was killed before answering is
//! settled by resending it.

use std::time::Duration;

use client::{ClientError, ClientOptions, TallyClient};
use net::{
    ClientConfig, Deposit, Deposited, ErrorCode, ErrorResponse, GetHistory, HistoryKind, Message,
    Transfer, TransferOutcome, Withdraw, Withdrawn,
};
use node::failpoint::points;
use tests::{Cluster, account_on, balance, funded};

const PROGRAM: &str = env!("CARGO_BIN_EXE_tally-failpoints");

/// One connection to node `id`: each `call` is exactly one request frame, never resent.
async fn connect(cluster: &Cluster, id: u32) -> net::Client {
    let address = &cluster.config.node(id).expect("node").address;
    net::Client::connect(address.as_str(), ClientConfig::default())
        .await
        .expect("connect")
}

/// Sends `request` once and returns the answer frame's message (an `ErrorResponse` included).
async fn call(connection: &net::Client, request: impl Into<Message>) -> Message {
    match connection.call(request).await {
        Ok(answer) => answer,
        Err(net::ClientError::Remote(error)) => Message::ErrorResponse(error),
        Err(error) => panic!("no answer: {error}"),
    }
}

fn deposit(id: u128, account: u64, amount: u64) -> Deposit {
    Deposit {
        id,
        account,
        amount,
    }
}

fn withdraw(id: u128, account: u64, amount: u64) -> Withdraw {
    Withdraw {
        id,
        account,
        amount,
    }
}

/// The error code of an `ErrorResponse` answer.
fn error_code(answer: &Message) -> ErrorCode {
    match answer {
        Message::ErrorResponse(ErrorResponse { code, .. }) => *code,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Node 1's accounts `a` (holding 100) and `b` (holding 0) on a fresh 3-node cluster.
async fn cluster_with_two_accounts() -> (Cluster, u64, u64) {
    let cluster = Cluster::start(PROGRAM.as_ref(), 3);
    let client = cluster.client();
    let a = account_on(&cluster.config, 1, 1, 0);
    let b = account_on(&cluster.config, 1, 1, 1);
    funded(&client, a, 100).await;
    funded(&client, b, 0).await;
    (cluster, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_deposit_or_withdrawal_gets_its_first_answer_and_applies_once() {
    let (cluster, a, _) = cluster_with_two_accounts().await;
    let node = connect(&cluster, 1).await;
    let first = call(&node, deposit(11, a, 50)).await;
    let Message::Deposited(Deposited {
        id: 11,
        balance_after: 150,
        lsn,
    }) = first
    else {
        panic!("deposit answered {first:?}");
    };
    let withdrawn = call(&node, withdraw(12, a, 30)).await;
    assert!(
        matches!(
            withdrawn,
            Message::Withdrawn(Withdrawn {
                id: 12,
                balance_after: 120,
                ..
            })
        ),
        "{withdrawn:?}"
    );
    // Another change in between: the resends' answers stay the first ones.
    assert!(matches!(
        call(&node, deposit(13, a, 1)).await,
        Message::Deposited(_)
    ));
    for _ in 0..3 {
        assert_eq!(call(&node, deposit(11, a, 50)).await, first);
        assert_eq!(call(&node, withdraw(12, a, 30)).await, withdrawn);
    }
    let client = cluster.client();
    assert_eq!(balance(&client, a).await, 121);

    // History names both by id; the deposit's entry is at the LSN it was answered with.
    let history = call(
        &node,
        GetHistory {
            account: a,
            limit: 10,
            cursor: 0,
        },
    )
    .await;
    let Message::History(history) = history else {
        panic!("history answered {history:?}");
    };
    let entries: Vec<_> = history
        .entries
        .iter()
        .map(|entry| (entry.kind, entry.amount, entry.transfer_id))
        .collect();
    assert_eq!(
        entries[..3],
        [
            (HistoryKind::Deposit, 1, 13),
            (HistoryKind::Withdraw, 30, 12),
            (HistoryKind::Deposit, 50, 11),
        ]
    );
    assert_eq!(history.entries[2].sequence, lsn);
    assert_eq!(history.next_cursor, 0, "the page holds the oldest entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_with_other_content_is_error_4_and_changes_nothing() {
    let (cluster, a, b) = cluster_with_two_accounts().await;
    let client = cluster.client();
    let node = connect(&cluster, 1).await;
    assert!(matches!(
        call(&node, deposit(21, a, 50)).await,
        Message::Deposited(_)
    ));
    // A transfer id this node coordinated.
    assert_eq!(
        client.transfer(22, a, b, 10).await.expect("transfer"),
        TransferOutcome::Committed
    );
    let reuses: [Message; 5] = [
        deposit(21, a, 51).into(),
        deposit(21, b, 50).into(),
        withdraw(21, a, 50).into(),
        deposit(22, a, 10).into(),
        withdraw(22, a, 10).into(),
    ];
    for request in reuses {
        let answer = call(&node, request.clone()).await;
        assert_eq!(
            error_code(&answer),
            ErrorCode::DuplicateWithDifferentContent,
            "{request:?}: {answer:?}"
        );
    }
    // And a deposit's id is not taken by a transfer.
    let reused = call(
        &node,
        Transfer {
            id: 21,
            debit: a,
            credit: b,
            amount: 50,
        },
    )
    .await;
    assert_eq!(
        error_code(&reused),
        ErrorCode::DuplicateWithDifferentContent
    );
    assert_eq!(
        (balance(&client, a).await, balance(&client, b).await),
        (140, 10)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_withdrawal_is_refused_again_once_the_funds_are_there() {
    let (cluster, a, _) = cluster_with_two_accounts().await;
    let node = connect(&cluster, 1).await;
    let refused = call(&node, withdraw(31, a, 500)).await;
    assert_eq!(error_code(&refused), ErrorCode::InsufficientFunds);
    assert!(matches!(
        call(&node, deposit(32, a, 1_000)).await,
        Message::Deposited(_)
    ));
    assert_eq!(call(&node, withdraw(31, a, 500)).await, refused);
    // A new id is a new request.
    assert!(matches!(
        call(&node, withdraw(33, a, 500)).await,
        Message::Withdrawn(Withdrawn {
            balance_after: 600,
            ..
        })
    ));
    // A zero amount is malformed: refused, and nothing is recorded for the id.
    assert_eq!(
        error_code(&call(&node, deposit(34, a, 0)).await),
        ErrorCode::InvalidArgument
    );
    assert!(matches!(
        call(&node, deposit(34, a, 5)).await,
        Message::Deposited(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_survive_a_restart_and_a_lost_answer_is_settled_by_resending() {
    let (mut cluster, a, b) = cluster_with_two_accounts().await;
    let node = connect(&cluster, 1).await;
    let deposited = call(&node, deposit(41, a, 5)).await;
    let refused = call(&node, withdraw(42, b, 5)).await;
    assert_eq!(error_code(&refused), ErrorCode::InsufficientFunds);
    drop(node);

    // Node 1 dies (SIGKILL) after its next deposit is durable, before answering it.
    cluster.kill(1);
    cluster.start_node(1, &[points::MOVEMENT_BEFORE_ANSWER]);
    cluster.wait_up(1);
    let one_shot = TallyClient::new(
        cluster.config.clone(),
        ClientOptions {
            attempts_max: 1,
            request_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        },
    );
    match one_shot.deposit(43, a, 7).await {
        Err(ClientError::OutcomeUnknown { id: Some(43), .. }) => {}
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    cluster.wait_dead(1);
    cluster.restart(1);

    // After the restart (replayed from the WAL: the node was killed), every id still has its
    // first answer, and the lost one is applied exactly once however often it is resent.
    let client = cluster.client();
    let node = connect(&cluster, 1).await;
    assert_eq!(call(&node, deposit(41, a, 5)).await, deposited);
    assert_eq!(call(&node, withdraw(42, b, 5)).await, refused);
    let settled = client.deposit(43, a, 7).await.expect("resend");
    assert_eq!(settled.balance_after, 112);
    assert_eq!(client.deposit(43, a, 7).await.expect("again"), settled);
    assert_eq!(balance(&client, a).await, 112);
}
