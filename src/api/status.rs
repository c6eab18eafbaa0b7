//! The one map from domain errors to gRPC statuses, with google.rpc error details.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::domain::RefundError;

/// `domain` of every google.rpc.ErrorInfo this service returns.
pub const ERROR_DOMAIN: &str = "refunds.v1";

pub fn to_status(err: RefundError) -> Status {
    match err {
        RefundError::InvalidArgument(violations) => {
            let message = violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; ");
            let violations: Vec<FieldViolation> = violations
                .into_iter()
                .map(|v| FieldViolation::new(v.field, v.description))
                .collect();
            Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request(violations),
            )
        }
        e @ RefundError::PaymentNotFound { .. } => Status::not_found(e.to_string()),
        e @ RefundError::RefundNotFound { .. } => Status::not_found(e.to_string()),
        e @ RefundError::BulkNotFound { .. } => Status::not_found(e.to_string()),
        e @ RefundError::NotFound { .. } => Status::not_found(e.to_string()),
        ref e @ RefundError::PaymentNotRefundable { ref status, .. } => failed_precondition(
            e,
            "PAYMENT_NOT_REFUNDABLE",
            [("payment_status", status.clone())],
        ),
        ref e @ RefundError::CaptureNotNotified { ref provider, .. } => failed_precondition(
            e,
            "CAPTURE_NOT_NOTIFIED",
            [("provider", provider.as_str().to_owned())],
        ),
        ref e @ RefundError::OverRefund {
            requested,
            remaining,
            currency,
        } => failed_precondition(
            e,
            "OVER_REFUND",
            [
                ("requested_amount", requested.to_string()),
                ("remaining_amount", remaining.to_string()),
                ("currency", currency.code().to_owned()),
            ],
        ),
        ref e @ RefundError::AlreadyRefunded { .. } => failed_precondition(
            e,
            "ALREADY_REFUNDED",
            [("remaining_amount", "0".to_owned())],
        ),
        ref e @ RefundError::IdempotencyKeyReused { .. } => {
            failed_precondition(e, "IDEMPOTENCY_KEY_REUSED", [])
        }
        ref e @ RefundError::ProviderUnavailable {
            ref provider,
            retry_after,
            ..
        } => {
            // ErrorInfo names the provider; RetryInfo, when known, says when to try again (the
            // circuit's next probe, or the provider's Retry-After).
            let mut details = ErrorDetails::with_error_info(
                "PROVIDER_UNAVAILABLE",
                ERROR_DOMAIN,
                HashMap::from([("provider".to_owned(), provider.as_str().to_owned())]),
            );
            if let Some(delay) = retry_after {
                details.set_retry_info(Some(delay));
            }
            Status::with_error_details(Code::Unavailable, e.to_string(), details)
        }
        ref e @ RefundError::SelfApproval { .. } => Status::with_error_details(
            Code::PermissionDenied,
            e.to_string(),
            ErrorDetails::with_error_info("SELF_APPROVAL", ERROR_DOMAIN, HashMap::new()),
        ),
        ref e @ RefundError::NotAwaitingApproval { status, .. } => failed_precondition(
            e,
            "NOT_AWAITING_APPROVAL",
            [("status", status.as_str().to_owned())],
        ),
        e @ RefundError::ConnectionNotFound { .. } => Status::not_found(e.to_string()),
        ref e @ RefundError::ConnectionExists { ref id, .. } => Status::with_error_details(
            Code::AlreadyExists,
            e.to_string(),
            ErrorDetails::with_error_info(
                "CONNECTION_EXISTS",
                ERROR_DOMAIN,
                HashMap::from([("connection_id".to_owned(), id.clone())]),
            ),
        ),
        ref e @ RefundError::NotSetUp { reason, .. } => failed_precondition(e, reason, []),
        RefundError::Internal(cause) => {
            // The client gets a generic message; the log gets the whole cause chain.
            tracing::error!(error = ?cause, "internal error");
            Status::internal("internal error")
        }
    }
}

fn failed_precondition<const N: usize>(
    err: &RefundError,
    reason: &str,
    metadata: [(&str, String); N],
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Status::with_error_details(
        Code::FailedPrecondition,
        err.to_string(),
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}
