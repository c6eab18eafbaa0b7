//! Black-box tests: a real server on port 0, spoken to over gRPC and HTTP, with a fresh database
//! per test — SQLite by default, PostgreSQL when REFUND_TEST_DATABASE_URL names a server
//! (`postgres://postgres@127.0.0.1:5432/postgres`). One binary keeps link time down.

mod helpers;

mod adyen;
mod approval;
mod audit;
mod auth;
mod browsers;
mod bulk;
mod bulk_cli;
mod cli;
mod concurrency;
mod connections;
mod crash;
mod create;
mod events;
mod fuzz;
mod idempotency;
mod list;
mod mercadopago;
mod money;
mod observability;
mod outage;
mod reconcile;
mod replicas;
mod server;
mod signing_interop;
mod spans;
mod stripe;
mod tls;
mod traffic;
mod verify;
mod webhooks;
mod webhooks_out;
