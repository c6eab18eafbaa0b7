//! Protobuf messages to domain types and back. Messages are destructured in full, so a new proto
//! field breaks the build here until it is handled.

use prost_types::Timestamp as PbTimestamp;

use super::pb;
use crate::domain::{
    Amount, AuditEvent, BulkId, Connection, ConnectionId, FieldViolation, NewRefund, ProviderName,
    RawRefundRequest, Refund, RefundError, RefundId, RefundReason, RefundStatus, Timestamp,
};
use crate::providers::ProviderSummary;
use crate::providers::traffic::CircuitState;
use crate::secret::Secret;
use crate::service::{ListQuery, NewConnection};

pub fn reason_from_pb(value: i32) -> Option<RefundReason> {
    Some(match pb::RefundReason::try_from(value).ok()? {
        pb::RefundReason::Unspecified => RefundReason::Unspecified,
        pb::RefundReason::Duplicate => RefundReason::Duplicate,
        pb::RefundReason::Fraudulent => RefundReason::Fraudulent,
        pb::RefundReason::RequestedByCustomer => RefundReason::RequestedByCustomer,
        pb::RefundReason::Other => RefundReason::Other,
    })
}

fn reason_to_pb(r: RefundReason) -> pb::RefundReason {
    match r {
        RefundReason::Unspecified => pb::RefundReason::Unspecified,
        RefundReason::Duplicate => pb::RefundReason::Duplicate,
        RefundReason::Fraudulent => pb::RefundReason::Fraudulent,
        RefundReason::RequestedByCustomer => pb::RefundReason::RequestedByCustomer,
        RefundReason::Other => pb::RefundReason::Other,
    }
}

/// `Ok(None)` is UNSPECIFIED (no filter).
fn status_from_pb(value: i32) -> Result<Option<RefundStatus>, ()> {
    Ok(Some(
        match pb::RefundStatus::try_from(value).map_err(|_| ())? {
            pb::RefundStatus::Unspecified => return Ok(None),
            pb::RefundStatus::Pending => RefundStatus::Pending,
            pb::RefundStatus::Succeeded => RefundStatus::Succeeded,
            pb::RefundStatus::Failed => RefundStatus::Failed,
            pb::RefundStatus::Canceled => RefundStatus::Canceled,
            pb::RefundStatus::RequiresApproval => RefundStatus::RequiresApproval,
        },
    ))
}

fn status_to_pb(s: RefundStatus) -> pb::RefundStatus {
    match s {
        RefundStatus::RequiresApproval => pb::RefundStatus::RequiresApproval,
        RefundStatus::Pending => pb::RefundStatus::Pending,
        RefundStatus::Succeeded => pb::RefundStatus::Succeeded,
        RefundStatus::Failed => pb::RefundStatus::Failed,
        RefundStatus::Canceled => pb::RefundStatus::Canceled,
    }
}

pub fn timestamp_to_pb(t: Timestamp) -> PbTimestamp {
    let micros = t.as_micros();
    PbTimestamp {
        seconds: micros.div_euclid(1_000_000),
        // rem_euclid keeps it in 0..1_000_000, so the multiplication fits an i32.
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1_000).unwrap_or(0),
    }
}

pub(super) fn timestamp_from_pb(t: PbTimestamp) -> Option<Timestamp> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    let micros = t
        .seconds
        .checked_mul(1_000_000)?
        .checked_add(i64::from(t.nanos / 1_000))?;
    Some(Timestamp::from_micros(micros))
}

/// Parses a create request. `header_key` is the `idempotency-key` request header; the field wins.
pub fn new_refund(
    msg: pb::CreateRefundRequest,
    header_key: Option<String>,
    default_provider: &ProviderName,
    field_prefix: &str,
) -> Result<NewRefund, Vec<FieldViolation>> {
    let pb::CreateRefundRequest {
        payment_id,
        provider,
        amount,
        currency,
        reason,
        reason_detail,
        metadata,
        idempotency_key,
    } = msg;
    let idempotency_key = if idempotency_key.is_empty() {
        header_key.unwrap_or_default()
    } else {
        idempotency_key
    };
    NewRefund::parse(
        RawRefundRequest {
            payment_id,
            provider,
            amount,
            currency,
            reason: reason_from_pb(reason),
            reason_detail,
            metadata: metadata.into_iter().collect(),
            idempotency_key,
        },
        default_provider,
        field_prefix,
    )
}

pub fn list_query(msg: pb::ListRefundsRequest) -> Result<ListQuery, Vec<FieldViolation>> {
    let pb::ListRefundsRequest {
        status,
        payment_id,
        provider,
        created_after,
        created_before,
        page_size,
        page_token,
    } = msg;
    let mut violations = Vec::new();
    let status = status_from_pb(status).unwrap_or_else(|()| {
        violations.push(FieldViolation::new(
            "status",
            "status is not a known RefundStatus",
        ));
        None
    });
    let mut time = |field: &str, t: Option<PbTimestamp>| {
        t.and_then(|t| {
            let parsed = timestamp_from_pb(t);
            if parsed.is_none() {
                violations.push(FieldViolation::new(field, "not a valid timestamp"));
            }
            parsed
        })
    };
    let created_from = time("created_after", created_after);
    let created_before = time("created_before", created_before);
    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(ListQuery {
        status,
        payment_id,
        provider,
        created_from,
        created_before,
        page_size,
        page_token,
    })
}

/// Request metadata that carries an idempotency key when the message field is empty.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// A metadata value as text, if present and ASCII.
pub fn header(request: &tonic::Request<impl Sized>, name: &str) -> Option<String> {
    request
        .metadata()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A refund id from a request's `field`; a malformed one is an invalid argument, not a miss.
pub fn refund_id(field: &str, id: &str) -> Result<RefundId, RefundError> {
    RefundId::parse(id).ok_or_else(|| {
        RefundError::invalid(
            field,
            if id.is_empty() {
                format!("{field} is required")
            } else {
                format!("{field} must look like rf_ followed by 32 hex digits")
            },
        )
    })
}

/// A connection id from a request's `id`.
pub fn connection_id(id: &str) -> Result<ConnectionId, RefundError> {
    ConnectionId::parse(id).ok_or_else(|| {
        RefundError::invalid(
            "id",
            if id.is_empty() {
                "id is required".to_owned()
            } else {
                "id must look like conn_ followed by 32 hex digits".to_owned()
            },
        )
    })
}

/// A connection to make, from `CreateConnection`. The API base stays the operator's to set.
pub fn new_connection(r: pb::CreateConnectionRequest) -> Result<NewConnection, RefundError> {
    let pb::CreateConnectionRequest {
        provider,
        credential,
        webhook_secret,
        settings,
    } = r;
    let provider =
        ProviderName::parse(&provider).map_err(|e| RefundError::invalid("provider", e))?;
    Ok(NewConnection {
        provider,
        credential: Secret::opaque(credential),
        webhook_secret: optional_secret(webhook_secret),
        api_base: None,
        settings: settings.into_iter().collect(),
    })
}

/// An empty string is "none".
pub fn optional_secret(s: String) -> Option<Secret> {
    (!s.is_empty()).then(|| Secret::opaque(s))
}

pub fn connection_to_pb(c: Connection) -> pb::Connection {
    let Connection {
        id,
        account: _,
        provider,
        // The operator's setting: not the account's business.
        api_base: _,
        settings,
        webhooks_enabled,
        created_at,
        rotated_at,
    } = c;
    pb::Connection {
        webhook_path: if webhooks_enabled {
            format!("/webhooks/{provider}/{id}")
        } else {
            String::new()
        },
        id: id.as_str().to_owned(),
        provider: provider.as_str().to_owned(),
        webhooks_enabled,
        created_at: Some(timestamp_to_pb(created_at)),
        rotated_at: Some(timestamp_to_pb(rotated_at)),
        settings: settings.into_iter().collect(),
    }
}

/// A batch id from a request's `bulk_id`.
pub fn bulk_id(id: &str) -> Result<BulkId, RefundError> {
    BulkId::parse(id).ok_or_else(|| {
        RefundError::invalid(
            "bulk_id",
            if id.is_empty() {
                "bulk_id is required"
            } else {
                "bulk_id must look like bulk_ followed by 32 hex digits"
            },
        )
    })
}

/// A request as the service accepted it, in the API's terms.
pub fn new_refund_to_pb(r: NewRefund) -> pb::CreateRefundRequest {
    let NewRefund {
        payment,
        provider,
        amount,
        currency,
        reason,
        reason_detail,
        metadata,
        idempotency_key,
    } = r;
    pb::CreateRefundRequest {
        payment_id: payment.as_str().to_owned(),
        provider: provider.as_str().to_owned(),
        amount: amount.map(Amount::minor_units),
        currency: currency.code().to_owned(),
        reason: reason_to_pb(reason).into(),
        reason_detail,
        metadata: metadata.into_iter().collect(),
        idempotency_key: idempotency_key
            .map(|k| k.as_str().to_owned())
            .unwrap_or_default(),
    }
}

pub fn refund_to_pb(r: Refund) -> pb::Refund {
    let Refund {
        id,
        account: _,
        payment,
        provider,
        route,
        provider_refund_id,
        amount,
        currency,
        status,
        reason,
        reason_detail,
        metadata,
        failure,
        idempotency_key,
        attempts: _,
        created_at,
        updated_at,
        created_by,
        approved_by,
    } = r;
    let (failure_code, failure_reason) = failure.map(|f| (f.code, f.reason)).unwrap_or_default();
    pb::Refund {
        id: id.as_str().to_owned(),
        payment_id: payment.as_str().to_owned(),
        provider: provider.as_str().to_owned(),
        provider_refund_id: provider_refund_id.unwrap_or_default(),
        connection_id: route
            .connection()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default(),
        amount: amount.minor_units(),
        currency: currency.code().to_owned(),
        status: status_to_pb(status).into(),
        reason: reason_to_pb(reason).into(),
        reason_detail,
        metadata: metadata.into_iter().collect(),
        failure_code,
        failure_reason,
        created_at: Some(timestamp_to_pb(created_at)),
        updated_at: Some(timestamp_to_pb(updated_at)),
        idempotency_key: idempotency_key
            .map(|k| k.as_str().to_owned())
            .unwrap_or_default(),
        created_by_key_id: created_by
            .map(|k| k.as_str().to_owned())
            .unwrap_or_default(),
        approved_by_key_id: approved_by
            .map(|k| k.as_str().to_owned())
            .unwrap_or_default(),
    }
}

pub fn provider_to_pb(p: ProviderSummary, connection: Option<ConnectionId>) -> pb::ProviderInfo {
    let circuit_state = match p.health.circuit {
        CircuitState::Closed => pb::CircuitState::Closed,
        CircuitState::Open => pb::CircuitState::Open,
        CircuitState::HalfOpen => pb::CircuitState::HalfOpen,
    };
    pb::ProviderInfo {
        name: p.name.as_str().to_owned(),
        is_default: p.is_default,
        supports_full_refunds: p.capabilities.full_refunds,
        supports_partial_refunds: p.capabilities.partial_refunds,
        health: Some(pb::ProviderHealth {
            circuit_state: circuit_state.into(),
            consecutive_failures: p.health.consecutive_failures,
            last_error: p.health.last_error.unwrap_or_default(),
        }),
        webhooks_enabled: p.webhooks_enabled,
        connection_id: connection
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default(),
        supports_refund_lookup: p.capabilities.refund_lookup,
        supports_payment_lookup: p.capabilities.payment_lookup,
        settles_by_webhook_only: p.capabilities.settles_by_webhook_only,
    }
}

pub fn audit_to_pb(e: AuditEvent) -> pb::AuditEvent {
    let AuditEvent {
        id,
        account,
        actor_key,
        source,
        action,
        resource_id,
        request_id,
        outcome,
        detail,
        created_at,
    } = e;
    pb::AuditEvent {
        id: id.as_str().to_owned(),
        account_id: account.as_str().to_owned(),
        actor_key_id: actor_key.map(|k| k.as_str().to_owned()).unwrap_or_default(),
        source,
        action,
        resource_id,
        request_id: request_id.unwrap_or_default(),
        outcome,
        detail,
        created_at: Some(timestamp_to_pb(created_at)),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn any_request() -> impl Strategy<Value = pb::CreateRefundRequest> {
        (
            (
                ".{0,300}",
                ".{0,80}",
                proptest::option::of(any::<i64>()),
                ".{0,6}",
            ),
            (
                any::<i32>(),
                ".{0,600}",
                proptest::collection::btree_map(".{0,60}", ".{0,600}", 0..60),
            ),
            ".{0,300}",
        )
            .prop_map(
                |(
                    (payment_id, provider, amount, currency),
                    (reason, reason_detail, metadata),
                    key,
                )| {
                    pb::CreateRefundRequest {
                        payment_id,
                        provider,
                        amount,
                        currency,
                        reason,
                        reason_detail,
                        metadata: metadata.into_iter().collect(),
                        idempotency_key: key,
                    }
                },
            )
    }

    proptest! {
        /// Anything a client can send is either a valid request or a list of named field
        /// violations: never a panic, never an empty rejection.
        #[test]
        fn any_create_request_parses_or_names_its_bad_fields(
            msg in any_request(),
            header in proptest::option::of(".{0,300}"),
        ) {
            let default = ProviderName::from_trusted("sandbox".to_owned());
            match new_refund(msg, header, &default, "") {
                Ok(parsed) => {
                    prop_assert!(parsed.amount.is_none_or(|a| a.minor_units() > 0));
                    prop_assert!(parsed.metadata.len() <= 50);
                }
                Err(violations) => {
                    prop_assert!(!violations.is_empty());
                    prop_assert!(violations.iter().all(|v| !v.field.is_empty() && !v.description.is_empty()));
                }
            }
        }
    }

    #[test]
    fn timestamps_round_trip_including_before_the_epoch() {
        for micros in [
            0,
            1,
            999_999,
            1_000_000,
            -1,
            -1_000_001,
            1_790_000_000_123_456,
        ] {
            let t = Timestamp::from_micros(micros);
            assert_eq!(timestamp_from_pb(timestamp_to_pb(t)), Some(t), "{micros}");
        }
        assert_eq!(
            timestamp_from_pb(PbTimestamp {
                seconds: 0,
                nanos: -1
            }),
            None
        );
        assert_eq!(
            timestamp_from_pb(PbTimestamp {
                seconds: i64::MAX,
                nanos: 0
            }),
            None
        );
    }

    #[test]
    fn unknown_enum_values_are_violations_not_defaults() {
        assert_eq!(reason_from_pb(99), None);
        assert!(status_from_pb(99).is_err());
        assert_eq!(status_from_pb(0), Ok(None));
    }
}
