//! The command line as clap parses it: every command's arguments and defaults, usage errors,
//! and the help texts that tell what to do with an unknown outcome.

use std::path::PathBuf;

use clap::CommandFactory;
use clap::error::ErrorKind;

use super::*;

fn parse(args: &[&str]) -> Result<Command, clap::Error> {
    Cli::try_parse_from(std::iter::once("tally").chain(args.iter().copied())).map(|cli| cli.command)
}

/// Parses `args` expecting a usage error, and returns its text.
fn parse_error(args: &[&str]) -> clap::Error {
    match parse(args) {
        Ok(command) => panic!("{args:?} parsed as {command:?}"),
        Err(error) => error,
    }
}

#[test]
fn the_command_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn start_and_cluster_up() {
    let command = parse(&[
        "start",
        "--id",
        "2",
        "--cluster",
        "c.toml",
        "--data-dir",
        "d",
    ])
    .expect("start");
    let Command::Start(args) = command else {
        panic!("{command:?}");
    };
    assert_eq!(
        (args.id, args.cluster, args.data_dir),
        (2, PathBuf::from("c.toml"), PathBuf::from("d"))
    );
    parse_error(&["start", "--id", "0", "--cluster", "c", "--data-dir", "d"]);
    parse_error(&["start", "--id", "1", "--cluster", "c"]);

    let command = parse(&["cluster", "up", "--data-dir", "d"]).expect("cluster up");
    let Command::Cluster(ClusterCommand::Up(args)) = command else {
        panic!("{command:?}");
    };
    assert_eq!((args.nodes, args.base_port), (3, 7101));
    let command = parse(&[
        "cluster",
        "up",
        "--nodes",
        "5",
        "--data-dir",
        "d",
        "--base-port",
        "9000",
    ])
    .expect("cluster up");
    let Command::Cluster(ClusterCommand::Up(args)) = command else {
        panic!("{command:?}");
    };
    assert_eq!((args.nodes, args.base_port), (5, 9000));
    parse_error(&["cluster", "up", "--nodes", "0", "--data-dir", "d"]);
    parse_error(&["cluster", "up", "--nodes", "257", "--data-dir", "d"]);
}

#[test]
fn client_commands() {
    let command = parse(&[
        "account",
        "create",
        "7",
        "--owner",
        "ann",
        "--flags",
        "0x3",
        "--cluster",
        "c",
        "--json",
    ])
    .expect("account create");
    let Command::Account(AccountCommand::Create(args)) = command else {
        panic!("{command:?}");
    };
    assert_eq!(
        (args.account, args.owner.as_deref(), args.flags),
        (7, Some("ann"), 3)
    );
    assert!(args.client.json);
    assert_eq!(args.client.cluster, PathBuf::from("c"));

    let command = parse(&["deposit", "7", "150", "--cluster", "c"]).expect("deposit");
    let Command::Deposit(args) = command else {
        panic!("{command:?}");
    };
    assert_eq!((args.account, args.amount, args.id), (7, 150, None));
    assert!(!args.client.json);

    let command =
        parse(&["withdraw", "7", "5", "--id", "0x10", "--cluster", "c"]).expect("withdraw");
    let Command::Withdraw(args) = command else {
        panic!("{command:?}");
    };
    assert_eq!(args.id, Some(16));

    let command = parse(&["balance", "1", "2", "3", "--cluster", "c"]).expect("balance");
    let Command::Balance(args) = command else {
        panic!("{command:?}");
    };
    assert_eq!(args.accounts, vec![1, 2, 3]);
    parse_error(&["balance", "--cluster", "c"]);

    let command = parse(&["history", "9", "--cluster", "c"]).expect("history");
    let Command::History(args) = command else {
        panic!("{command:?}");
    };
    assert_eq!((args.account, args.limit, args.cursor), (9, 20, 0));
    parse_error(&["history", "9", "--limit", "0", "--cluster", "c"]);
    parse_error(&["history", "9", "--limit", "1001", "--cluster", "c"]);

    let command = parse(&[
        "transfer",
        "--from",
        "1",
        "--to",
        "2",
        "--amount",
        "30",
        "--id",
        "99",
        "--cluster",
        "c",
    ])
    .expect("transfer");
    let Command::Transfer(args) = command else {
        panic!("{command:?}");
    };
    assert_eq!(
        (args.from, args.to, args.amount, args.id),
        (1, 2, 30, Some(99))
    );
    parse_error(&["transfer", "--from", "1", "--to", "2", "--cluster", "c"]);
    let error = parse_error(&[
        "transfer",
        "--from",
        "1",
        "--to",
        "2",
        "--amount",
        "1.5",
        "--cluster",
        "c",
    ]);
    assert_eq!(error.kind(), ErrorKind::ValueValidation);

    let command = parse(&["transfer-status", "0xff", "--cluster", "c"]).expect("transfer-status");
    let Command::TransferStatus(args) = command else {
        panic!("{command:?}");
    };
    assert_eq!(args.id, 255);

    assert!(matches!(
        parse(&["status", "--cluster", "c", "--json"]),
        Ok(Command::Status(ClientArgs { json: true, .. }))
    ));
    assert!(matches!(
        parse(&["audit", "--cluster", "c"]),
        Ok(Command::Audit(ClientArgs { json: false, .. }))
    ));
}

#[test]
fn help_is_available_everywhere_and_transfer_documents_its_exit_codes() {
    for args in [
        &["--help"][..],
        &["transfer", "--help"],
        &["cluster", "up", "--help"],
        &["account", "create", "--help"],
    ] {
        assert_eq!(parse_error(args).kind(), ErrorKind::DisplayHelp, "{args:?}");
    }
    let help = parse_error(&["transfer", "--help"]).to_string();
    for line in [
        "0  committed",
        "3  aborted",
        "4  outcome unknown",
        "1  error",
    ] {
        assert!(
            help.contains(line),
            "transfer --help lacks {line:?}:\n{help}"
        );
    }
}

#[test]
fn transfer_status_help_tells_unknown_from_an_unknown_outcome() {
    let help = one_line(&parse_error(&["transfer-status", "--help"]).to_string());
    for phrase in [
        "unknown no node has seen this id yet",
        "This is not exit 4",
        "Only resending the same transfer",
        "0 when the cluster answered (whatever the state)",
    ] {
        assert!(
            help.contains(phrase),
            "transfer-status --help lacks {phrase:?}:\n{help}"
        );
    }
}

#[test]
fn deposit_and_withdraw_help_say_how_to_resolve_an_unknown_outcome() {
    for command in ["deposit", "withdraw"] {
        let help = parse_error(&[command, "--help"]).to_string();
        let flat = one_line(&help);
        for phrase in [
            "Applied at most once per id",
            "exit code 4",
            "--id ID",
            "tally history ACCOUNT",
            "answers a repeat with its first answer",
        ] {
            assert!(
                flat.contains(phrase),
                "{command} --help lacks {phrase:?}:\n{help}"
            );
        }
        assert!(!flat.contains("Not resent"), "{command} --help:\n{help}");
    }
}
