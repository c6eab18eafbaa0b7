//! The id of the request being served, for the audit trail. The API layer sets it around each
//! call (the caller's `x-request-id`, or one it makes up); work the service does on its own
//! (reconciler, webhooks, bulk jobs) has none.

tokio::task_local! {
    static REQUEST_ID: String;
}

/// Runs `f` as part of the request `id`.
pub async fn with_request_id<F: Future>(id: String, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

/// The current request's id, if the current task serves one.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}
