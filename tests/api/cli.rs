//! The binary: bad configuration fails before binding, with a clear message; the sandbox
//! commands work against a running service.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_refund-service");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REFUND_SANDBOX_URL")
        .env_remove("RUST_LOG")
        .output()
        .expect("run binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_non_zero_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["serve", "--grpc-addr", "not-an-address"],
            "invalid socket address",
        ),
        (&["serve", "--provider-timeout", "0s"], "--provider-timeout"),
        // Each provider's flags come from its registry entry, with the same checks.
        (
            &["serve", "--stripe-webhook-secret", "whsec_x"],
            "--stripe-webhook-secret needs a Stripe secret key (--stripe-secret-key)",
        ),
        (
            &[
                "serve",
                "--mercadopago-access-token-file",
                "/nonexistent/token",
            ],
            "cannot read --mercadopago-access-token-file /nonexistent/token",
        ),
        (
            &["serve", "--stripe-secret-key", "  "],
            "the Stripe secret key is empty",
        ),
        (
            &[
                "serve",
                "--stripe-secret-key",
                "sk_x",
                "--stripe-secret-key-file",
                "/k",
            ],
            "cannot be used with",
        ),
        (
            &[
                "serve",
                "--reconcile-delay",
                "2h",
                "--reconcile-max-delay",
                "1h",
            ],
            "--reconcile-delay",
        ),
        (
            &[
                "serve",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--database-url",
                "mysql://nowhere/x",
            ],
            "cannot connect to the database",
        ),
    ];
    for (args, expected) in cases {
        let (ok, _, stderr) = run(args);
        assert!(!ok, "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn seed_and_ledger_commands_drive_the_sandbox() {
    let (mut app, _db) = crate::helpers::spawn_app().await;
    let url = format!("http://{}/sandbox", app.http_addr);
    let (ok, stdout, stderr) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            run(&[
                "sandbox",
                "seed",
                "--amount",
                "10000",
                "--currency",
                "USD",
                "--count",
                "3",
                "--sandbox-url",
                &url,
            ])
        }
    })
    .await
    .unwrap();
    assert!(ok, "{stderr}");
    let ids: Vec<&str> = stdout.lines().collect();
    assert_eq!(ids.len(), 3, "{stdout}");

    app.client
        .create_refund(crate::helpers::refund_request(ids[1], Some(1234), "USD"))
        .await
        .unwrap();
    let payment = ids[1].to_owned();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run(&[
            "sandbox",
            "ledger",
            "--payment",
            &payment,
            "--sandbox-url",
            &url,
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["amount"], 1234);
    assert_eq!(lines[0]["payment"], ids[1]);
    assert_eq!(lines[0]["status"], "succeeded");
    assert!(
        lines[0]["idempotency_key"]
            .as_str()
            .unwrap()
            .starts_with("rf_")
    );
}

/// A port nothing listens on: bound, then let go.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn an_unreachable_postgres_is_named_with_its_cause_and_no_password() {
    let url = format!(
        "postgres://postgres:hunter2@127.0.0.1:{}/refunds",
        closed_port()
    );
    let (ok, _, stderr) = run(&["keys", "list", "--database-url", &url]);
    assert!(!ok);
    assert!(
        stderr.contains("connection refused by 127.0.0.1:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("postgres://postgres:***@127.0.0.1:"),
        "{stderr}"
    );
    assert!(!stderr.contains("pool timed out"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    // A URL that does not parse says why, without the password that the parser saw.
    let (ok, _, stderr) = run(&[
        "keys",
        "list",
        "--database-url",
        "postgres://postgres:hunter2@127.0.0.1:notaport/refunds",
    ]);
    assert!(!ok);
    assert!(stderr.contains("invalid port number"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn a_missing_postgres_database_is_named_with_the_fix() {
    let Ok(admin) = std::env::var("REFUND_TEST_DATABASE_URL") else {
        return; // PostgreSQL runs only in the PostgreSQL pass.
    };
    let base = admin.rsplit_once('/').expect("URL ends in /DATABASE").0;
    let url = format!("{base}/refund_no_such_db_{}", uuid::Uuid::new_v4().simple());
    let (ok, _, stderr) =
        tokio::task::spawn_blocking(move || run(&["keys", "list", "--database-url", &url]))
            .await
            .unwrap();
    assert!(!ok);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("createdb refund_no_such_db_"), "{stderr}");
}

#[test]
fn a_sqlite_url_without_a_mode_creates_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("refund.db");
    let url = format!("sqlite://{}", file.display());
    let (ok, stdout, stderr) = run(&["keys", "list", "--database-url", &url]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("id\taccount"), "{stdout}");
    assert!(file.exists());

    // A directory that is not there is named, once.
    let url = format!(
        "sqlite://{}",
        dir.path().join("missing/refund.db").display()
    );
    let (ok, _, stderr) = run(&["keys", "list", "--database-url", &url]);
    assert!(!ok);
    assert!(
        stderr.contains("of the SQLite file does not exist"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("does not exist").count(), 1, "{stderr}");
}

#[test]
fn a_port_in_use_is_named_with_its_flag_before_the_database_is_touched() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = listener.local_addr().unwrap().to_string();
    for (flag, other, name) in [
        ("--grpc-addr", "--http-addr", "gRPC"),
        ("--http-addr", "--grpc-addr", "HTTP"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("refund.db");
        let url = format!("sqlite://{}", file.display());
        let (ok, _, stderr) = run(&[
            "serve",
            flag,
            &taken,
            other,
            "127.0.0.1:0",
            "--database-url",
            &url,
        ]);
        assert!(!ok);
        assert!(
            stderr.contains(&format!("cannot listen for {name} on {taken}")),
            "{stderr}"
        );
        assert!(stderr.contains(flag), "{stderr}");
        assert!(
            !file.exists(),
            "the database was made before the bind failed"
        );
    }
}

#[test]
fn one_shot_commands_print_what_was_asked_and_log_only_with_v() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("refund.db").display());
    let (ok, stdout, stderr) = run(&[
        "keys",
        "create",
        "--database-url",
        &url,
        "--account",
        "acct_quiet",
        "--scopes",
        "refunds:read",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stderr, "", "a fresh database's migrations are not news");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");

    let url = format!("sqlite://{}", dir.path().join("other.db").display());
    let (ok, stdout, stderr) = run(&["migrate", "--database-url", &url, "-v"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("migrations applied to sqlite://"),
        "{stdout}"
    );
    assert!(stderr.contains("Applying migration"), "{stderr}");
}

/// README's configuration table lists every setting of `serve --help`, each with its flag and
/// environment variable in one row, and no setting that does not exist.
#[test]
fn the_readme_configuration_table_matches_serve_flags() {
    use clap::CommandFactory as _;

    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has a Configuration section");
    // (flag, environment variable) per table row.
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let ticked = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let (flags, envs) = (ticked(cells[1]), ticked(cells[2]));
        assert_eq!(flags.len(), envs.len(), "one variable per flag: {line}");
        rows.extend(flags.into_iter().zip(envs));
    }
    let cli = refund_service::cli::Cli::command();
    let serve = cli.find_subcommand("serve").expect("serve");
    let mut expected: Vec<(String, String)> = serve
        .get_arguments()
        .chain(cli.get_arguments())
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| {
            let flag = format!("--{}", a.get_long()?);
            let env = a.get_env()?.to_string_lossy().into_owned();
            Some((flag, env))
        })
        .collect();
    expected.sort();
    expected.dedup();
    rows.sort();
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn health_exits_zero_only_while_the_server_is_serving() {
    let db = crate::helpers::TestDb::new().await;
    let mut app = crate::helpers::spawn_app_with(&db, |s| {
        s.drain_delay = std::time::Duration::from_secs(30);
    })
    .await;
    let server = format!("http://{}", app.grpc_addr);
    let ask = |server: String, service: &'static str| {
        tokio::task::spawn_blocking(move || {
            run(&["health", "--server", &server, "--service", service])
        })
    };
    let (ok, stdout, stderr) = ask(server.clone(), "refunds.v1.RefundService")
        .await
        .unwrap();
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "refunds.v1.RefundService: SERVING");
    let (ok, _, stderr) = ask(server.clone(), "no.such.Service").await.unwrap();
    assert!(!ok);
    assert!(stderr.contains("NotFound"), "{stderr}");

    app.begin_stop();
    crate::helpers::eventually(
        std::time::Duration::from_secs(10),
        "health to exit non-zero while draining",
        || {
            let server = server.clone();
            async move {
                let (ok, stdout, _) = ask(server, "").await.unwrap();
                (!ok && stdout.contains("NOT_SERVING")).then_some(())
            }
        },
    )
    .await;

    // Nobody there: a clear failure, not a hang.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    drop(listener);
    let (ok, _, stderr) = tokio::task::spawn_blocking(move || {
        run(&["health", "--server", &closed, "--timeout", "2s"])
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(stderr.contains("cannot connect to"), "{stderr}");
}
