//! The end of a run: wait (bounded) until nothing is PENDING and every batch has finished, then
//! judge. `refund-service verify` is the checker when the binary has it; the driver's own minimal
//! check compares our API's refunds with the sandbox's ledger either way.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use refund_service::api::pb;
use refund_service::sandbox::client::SandboxClient;
use refund_service::sandbox::{Refund as SandboxRefund, RefundStatus as SandboxStatus};

use crate::client::{Client, holds_money, refund_status, status_label};
use crate::workload::SeededPayment;

/// What was left when the wait ended.
pub struct Drained {
    pub pending: usize,
    pub running_batches: Vec<String>,
    pub waited: Duration,
}

/// Polls until no refund is PENDING and no batch is RUNNING, at most `within`.
pub async fn drain(client: &Client, bulk_ids: &[String], within: Duration) -> Drained {
    let started = Instant::now();
    let mut running: Vec<String> = bulk_ids.to_vec();
    loop {
        let pending = match list_all(client, pb::RefundStatus::Pending).await {
            Ok(r) => r.len(),
            Err(_) => usize::MAX,
        };
        let mut still = Vec::new();
        for id in &running {
            let state = client
                .clone()
                .get_bulk_refund(pb::GetBulkRefundRequest {
                    bulk_id: id.clone(),
                })
                .await
                .map(|b| b.into_inner().state);
            if !matches!(state, Ok(s) if s != pb::BulkRefundState::Running as i32) {
                still.push(id.clone());
            }
        }
        running = still;
        if (pending == 0 && running.is_empty()) || started.elapsed() >= within {
            return Drained {
                pending,
                running_batches: running,
                waited: started.elapsed(),
            };
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every refund of the account in `status` (UNSPECIFIED: all), through ListRefunds pages.
pub async fn list_all(
    client: &Client,
    status: pb::RefundStatus,
) -> Result<Vec<pb::Refund>, tonic::Status> {
    let mut out = Vec::new();
    let mut token = String::new();
    for _ in 0..10_000 {
        let page = client
            .clone()
            .list_refunds(pb::ListRefundsRequest {
                status: status as i32,
                page_size: 500,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(page.refunds);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    Ok(out)
}

/// The driver's own check of the two books, with what it found.
pub struct OwnCheck {
    pub refunds_by_status: BTreeMap<&'static str, usize>,
    pub provider_refunds: usize,
    pub violations: Vec<String>,
}

/// The minimal money check, from our API and the sandbox's ledger:
/// - at the provider, no payment is refunded beyond its capture;
/// - at the provider, at most one non-failed refund per our refund id (`metadata.refund_id`);
/// - every non-failed provider refund belongs to a refund we know of;
/// - no refund FAILED, CANCELED or REQUIRES_APPROVAL here has a non-failed refund at the
///   provider; a SUCCEEDED one has one, of its amount;
/// - at most one refund per idempotency key here, and what we hold per payment fits its capture.
pub async fn own_check(
    client: &Client,
    sandbox: &SandboxClient,
    payments: &[SeededPayment],
) -> anyhow::Result<OwnCheck> {
    let ours = list_all(client, pb::RefundStatus::Unspecified)
        .await
        .map_err(|s| anyhow::anyhow!("ListRefunds failed: {}", status_label(&s)))?;
    let ledger = sandbox.ledger(None).await?;
    let captured: HashMap<&str, i64> = payments.iter().map(|p| (p.id.as_str(), p.amount)).collect();
    let mut violations = Vec::new();

    let live =
        |r: &SandboxRefund| matches!(r.status, SandboxStatus::Pending | SandboxStatus::Succeeded);
    let mut provider_sum: BTreeMap<&str, i64> = BTreeMap::new();
    let mut provider_by_ours: HashMap<&str, Vec<&SandboxRefund>> = HashMap::new();
    for r in ledger.iter().filter(|r| live(r)) {
        *provider_sum.entry(r.payment.as_str()).or_default() += r.amount;
        let our_id = r
            .metadata
            .get("refund_id")
            .or(r.idempotency_key.as_ref())
            .map(String::as_str)
            .unwrap_or("");
        provider_by_ours.entry(our_id).or_default().push(r);
    }
    for (payment, sum) in &provider_sum {
        let cap = captured.get(payment).copied().unwrap_or(0);
        if *sum > cap {
            violations.push(format!(
                "over-refund at the provider: payment {payment} captured {cap}, refunded {sum}"
            ));
        }
    }
    let known: HashMap<&str, &pb::Refund> = ours.iter().map(|r| (r.id.as_str(), r)).collect();
    for (our_id, refunds) in &provider_by_ours {
        let ids: Vec<String> = refunds
            .iter()
            .map(|r| format!("{} {} {:?}", r.id, r.amount, r.status))
            .collect();
        if refunds.len() > 1 {
            violations.push(format!(
                "double refund at the provider: our refund {our_id} has {} non-failed provider refunds on payment {}: {}",
                refunds.len(),
                refunds[0].payment,
                ids.join(", ")
            ));
        }
        if !known.contains_key(our_id) {
            violations.push(format!(
                "provider refund(s) of unknown refund {our_id:?}: {}",
                ids.join(", ")
            ));
        }
    }

    let mut by_status: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut by_key: HashMap<&str, Vec<&pb::Refund>> = HashMap::new();
    let mut held: BTreeMap<&str, i64> = BTreeMap::new();
    for r in &ours {
        let status = refund_status(r.status);
        *by_status.entry(status).or_default() += 1;
        if !r.idempotency_key.is_empty() {
            by_key
                .entry(r.idempotency_key.as_str())
                .or_default()
                .push(r);
        }
        if holds_money(r.status) {
            *held.entry(r.payment_id.as_str()).or_default() += r.amount;
        }
        let at_provider = provider_by_ours.get(r.id.as_str());
        match status {
            "FAILED" | "CANCELED" | "REQUIRES_APPROVAL" => {
                if let Some(p) = at_provider {
                    violations.push(format!(
                        "refund {} is {status} here (payment {}, {}) but live at the provider: {}",
                        r.id,
                        r.payment_id,
                        r.amount,
                        p.iter()
                            .map(|x| format!("{} {} {:?}", x.id, x.amount, x.status))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            "SUCCEEDED" => match at_provider {
                None => violations.push(format!(
                    "refund {} is SUCCEEDED here (payment {}, {}) but has no live refund at the provider",
                    r.id, r.payment_id, r.amount
                )),
                Some(p) if p.iter().all(|x| x.amount != r.amount) => violations.push(format!(
                    "refund {} is SUCCEEDED here for {} but the provider refunded {}",
                    r.id, r.amount, p[0].amount
                )),
                Some(_) => {}
            },
            _ => {}
        }
    }
    for (key, refunds) in &by_key {
        if refunds.len() > 1 {
            violations.push(format!(
                "idempotency key {key} has {} refunds: {}",
                refunds.len(),
                refunds
                    .iter()
                    .map(|r| format!("{} {} {}", r.id, r.amount, refund_status(r.status)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    for (payment, sum) in &held {
        let cap = captured.get(payment).copied().unwrap_or(0);
        if *sum > cap {
            violations.push(format!(
                "over-refund in our books: payment {payment} captured {cap}, refunds holding {sum}"
            ));
        }
    }
    Ok(OwnCheck {
        refunds_by_status: by_status,
        provider_refunds: ledger.len(),
        violations,
    })
}

/// The result of `refund-service verify`.
pub enum Verify {
    /// The binary has no `verify` subcommand (yet).
    Missing,
    /// Exit status (0 no violation, 1 violations, 2 usage/connection error), and where its
    /// output went.
    Ran { code: i32, summary: String },
}

pub fn verify(
    bin: &str,
    database_url: &str,
    sandbox_url: &str,
    out: &Path,
) -> anyhow::Result<Verify> {
    let run = std::process::Command::new(bin)
        .args([
            "verify",
            "--database-url",
            database_url,
            "--sandbox-url",
            sandbox_url,
        ])
        .args(["--settled", "--json"])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    if run.status.code() == Some(2) && stderr.contains("unrecognized subcommand") {
        return Ok(Verify::Missing);
    }
    std::fs::write(out, &run.stdout)?;
    std::fs::write(out.with_extension("stderr"), stderr.as_bytes())?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let mut summary: String = stdout.chars().take(1_500).collect();
    if stdout.len() > summary.len() {
        summary.push_str(" …");
    }
    if summary.trim().is_empty() {
        summary = stderr.chars().take(1_500).collect();
    }
    Ok(Verify::Ran {
        code: run.status.code().unwrap_or(-1),
        summary,
    })
}
