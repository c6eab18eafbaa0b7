//! gRPC clients of the replicas (the crate's generated client, as `bulk_cli` uses it) and the
//! names the summary gives to outcomes.

use std::time::Duration;

use refund_service::api::pb;
use refund_service::api::pb::refund_service_client::RefundServiceClient;
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt as _;

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type Client = RefundServiceClient<InterceptedService<Channel, Bearer>>;

/// A client of the replica at `url` with `key`. The channel connects lazily and reconnects by
/// itself after the replica is killed and restarted.
pub fn client(url: &str, key: &str) -> anyhow::Result<Client> {
    let bearer: MetadataValue<Ascii> = format!("Bearer {key}").parse()?;
    let channel = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    let max = refund_service::api::max_message_bytes(1_000);
    Ok(
        RefundServiceClient::with_interceptor(channel, Bearer(bearer))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    )
}

/// Codes after which a call is sent again (with the same idempotency key): the service may or may
/// not have done it. UNKNOWN and CANCELLED are what a connection cut by `kill -9` looks like.
pub fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
    )
}

/// e.g. `FAILED_PRECONDITION/OVER_REFUND`, `UNAVAILABLE`.
pub fn status_label(s: &tonic::Status) -> String {
    let code = code_name(s.code());
    match s.get_error_details().error_info() {
        Some(info) => format!("{code}/{}", info.reason),
        None => code.to_owned(),
    }
}

pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `SUCCEEDED`, `PENDING`, … of a refund.
pub fn refund_status(status: i32) -> &'static str {
    match pb::RefundStatus::try_from(status) {
        Ok(pb::RefundStatus::Pending) => "PENDING",
        Ok(pb::RefundStatus::Succeeded) => "SUCCEEDED",
        Ok(pb::RefundStatus::Failed) => "FAILED",
        Ok(pb::RefundStatus::Canceled) => "CANCELED",
        Ok(pb::RefundStatus::RequiresApproval) => "REQUIRES_APPROVAL",
        Ok(pb::RefundStatus::Unspecified) | Err(_) => "UNSPECIFIED",
    }
}

pub fn item_status(status: i32) -> &'static str {
    match pb::BulkItemStatus::try_from(status) {
        Ok(pb::BulkItemStatus::Queued) => "QUEUED",
        Ok(pb::BulkItemStatus::Running) => "RUNNING",
        Ok(pb::BulkItemStatus::Succeeded) => "SUCCEEDED",
        Ok(pb::BulkItemStatus::Failed) => "FAILED",
        Ok(pb::BulkItemStatus::Skipped) => "SKIPPED",
        Ok(pb::BulkItemStatus::Canceled) => "CANCELED",
        Ok(pb::BulkItemStatus::RequiresApproval) => "REQUIRES_APPROVAL",
        Ok(pb::BulkItemStatus::Unspecified) | Err(_) => "UNSPECIFIED",
    }
}

pub fn batch_state(state: i32) -> &'static str {
    match pb::BulkRefundState::try_from(state) {
        Ok(pb::BulkRefundState::Running) => "RUNNING",
        Ok(pb::BulkRefundState::Completed) => "COMPLETED",
        Ok(pb::BulkRefundState::Aborted) => "ABORTED",
        Ok(pb::BulkRefundState::Canceled) => "CANCELED",
        Ok(pb::BulkRefundState::Unspecified) | Err(_) => "UNSPECIFIED",
    }
}

/// A refund that holds (or held on to) money: what must exist at most once.
pub fn holds_money(status: i32) -> bool {
    matches!(
        pb::RefundStatus::try_from(status),
        Ok(pb::RefundStatus::Pending
            | pb::RefundStatus::Succeeded
            | pb::RefundStatus::RequiresApproval)
    )
}
