//! refund-service: refunds payments across payment providers, one at a time or in batches, and
//! never refunds a payment twice or beyond what was captured.
//!
//! Layout (dependencies point down the list; see ARCHITECTURE.md):
//! - [`cli`], [`app`], [`config`], [`telemetry`]: process wiring — flags, settings, start, drain.
//! - [`bulk_cli`]: the `bulk` command, a gRPC client that refunds the rows of a CSV file.
//! - [`api`]: the gRPC surface (tonic). [`http`]: the HTTP port (probes, embedded sandbox).
//! - [`service`]: the refund use cases and the reconciler.
//! - [`domain`]: money, requests, refunds, the status machine, errors. No I/O.
//! - [`store`]: SeaORM persistence (SQLite or PostgreSQL) and migrations.
//! - [`providers`]: outbound adapters to payment providers behind one trait.
//! - [`sandbox`]: the built-in fake payment provider, in-process or standalone over HTTP.
//! - [`vault`]: sealing of stored credentials (AES-256-GCM under a master key from a file).
//! - [`verify`]: the invariant checker, our books against the provider's ledger (`verify`).
//! - [`webhooks_out`]: the webhooks we send to subscribers: Standard Webhooks signatures and the
//!   SSRF guard on their endpoint URLs.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod bulk_cli;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error_chain;
pub mod http;
pub mod metrics;
pub mod providers;
pub mod sandbox;
pub mod secret;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod vault;
pub mod verify;
pub mod webhooks_out;
