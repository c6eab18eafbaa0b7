//! SeaORM entities: the tables as the store sees them. Money columns are BIGINT minor units,
//! timestamps BIGINT microseconds since the Unix epoch.

pub mod payment {
    use sea_orm::entity::prelude::*;

    /// What the service knows of a payment's balance: one row per real payment (provider and
    /// payment id), whichever account refunds it. `reserved_amount` is the sum of refunds that
    /// have not failed or been canceled; the store never lets it exceed `captured_amount`.
    /// `account_id` owns the payment here (the account that refunded it first); no other account
    /// can refund it.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "payments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub provider: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub payment_id: String,
        pub account_id: String,
        pub currency: String,
        pub captured_amount: i64,
        pub reserved_amount: i64,
        pub created_at: i64,
        pub updated_at: i64,
        /// The connection the payment is refunded through (NULL: the platform's); a refund
        /// through any other is refused, as the payment is not that connection's to see.
        pub connection_id: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod refund {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "refunds")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub account_id: String,
        pub payment_id: String,
        pub provider: String,
        pub provider_refund_id: Option<String>,
        pub amount: i64,
        pub currency: String,
        pub status: String,
        pub reason: String,
        pub reason_detail: String,
        /// JSON object of string values.
        pub metadata: String,
        pub failure_code: Option<String>,
        pub failure_reason: Option<String>,
        pub idempotency_key: Option<String>,
        /// Provider calls made to settle this refund (creation and look-ups).
        pub attempts: i32,
        /// When the reconciler may next look at a PENDING refund; doubles as a lease, so one
        /// worker at a time (across replicas) acts on it.
        pub next_check_at: Option<i64>,
        pub created_at: i64,
        pub updated_at: i64,
        /// The API key that asked for it (none for refunds made before keys existed).
        pub created_by_key: Option<String>,
        pub approved_by_key: Option<String>,
        /// The connection it goes through (NULL: the platform's).
        pub connection_id: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod idempotency_key {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "idempotency_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        /// Digest of the request parameters the key was first used with.
        pub fingerprint: String,
        pub refund_id: String,
        pub created_at: i64,
        pub expires_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod bulk {
    use sea_orm::entity::prelude::*;

    /// A batch of refund jobs. Counters and `last_sequence` change in the same transaction as the
    /// item and event they count, so they are never out of step.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bulks")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub account_id: String,
        pub idempotency_key: Option<String>,
        pub fingerprint: String,
        pub state: String,
        /// `abort` or `cancel` once the batch stops dispatching early.
        pub stop_reason: Option<String>,
        pub total: i32,
        pub succeeded: i32,
        pub failed: i32,
        pub skipped: i32,
        pub canceled: i32,
        pub abort_on_error: bool,
        pub max_concurrency: i32,
        pub metadata: String,
        /// Index of the next job to hand out; jobs below it have been claimed at least once.
        pub dispatch_cursor: i32,
        pub last_sequence: i64,
        pub created_at: i64,
        pub updated_at: i64,
        pub finished_at: Option<i64>,
        pub created_by_key: Option<String>,
        /// The providers whose jobs the batch holds now (JSON), as the runner last wrote them.
        pub provider_waits: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod bulk_item {
    use sea_orm::entity::prelude::*;

    /// One job of a batch. A RUNNING job is leased to one worker until `lease_until`; a worker
    /// that dies lets its lease expire and another takes the job over.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bulk_items")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub bulk_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub idx: i32,
        pub account_id: String,
        pub status: String,
        /// The validated job as JSON; NULL for a job that failed validation.
        pub job: Option<String>,
        pub payment_id: String,
        pub provider: String,
        pub refund_id: Option<String>,
        pub error_code: Option<String>,
        pub error_message: Option<String>,
        pub retryable: bool,
        pub attempts: i32,
        pub lease_owner: Option<String>,
        pub lease_until: Option<i64>,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod bulk_event {
    use sea_orm::entity::prelude::*;

    /// The stream of a batch, numbered without gaps. `result` events point at their item, whose
    /// outcome is final once written; `summary` reads the batch's final counts.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bulk_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub bulk_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub sequence: i64,
        pub account_id: String,
        pub kind: String,
        pub item_idx: Option<i32>,
        pub created_at: i64,
        /// What a `wait` or `wait_ended` event says (JSON): the kinds (at most 16 characters) are
        /// `accepted`, `result`, `summary`, `wait` and `wait_ended`.
        pub detail: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod webhook_event {
    use sea_orm::entity::prelude::*;

    /// One inbound provider webhook event and what became of it.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub provider: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub event_type: String,
        pub outcome: String,
        pub payment_id: Option<String>,
        pub provider_refund_id: Option<String>,
        pub refund_id: Option<String>,
        pub account_id: Option<String>,
        pub refund_status: Option<String>,
        pub refund_amount: Option<i64>,
        pub failure_code: Option<String>,
        pub failure_reason: Option<String>,
        pub received_at: i64,
        pub processed_at: Option<i64>,
        /// The connection whose secret signed it (NULL: the platform's); it applies only to
        /// that connection's refunds.
        pub connection_id: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod api_key {
    use sea_orm::entity::prelude::*;

    /// An API key: never its token, only the token's SHA-256.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub account_id: String,
        pub name: String,
        pub token_hash: String,
        /// Comma-separated scope names.
        pub scopes: String,
        pub created_at: i64,
        pub revoked_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod approval_threshold {
    use sea_orm::entity::prelude::*;

    /// Refunds of an account above `amount` minor units of `currency` need a second person.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "approval_thresholds")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub currency: String,
        pub amount: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod audit_event {
    use sea_orm::entity::prelude::*;

    /// One audited state change.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub account_id: String,
        pub actor_key_id: Option<String>,
        pub source: String,
        pub action: String,
        pub resource_id: String,
        pub request_id: Option<String>,
        pub outcome: String,
        pub detail: String,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod connection {
    use sea_orm::entity::prelude::*;

    /// An account's credentials for a provider, sealed by `vault` (never stored in the clear).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "connections")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub account_id: String,
        pub provider: String,
        pub api_base: Option<String>,
        /// JSON object: the provider's own settings (`ProviderSpec::extra`), not secret.
        pub settings: String,
        pub credential_sealed: String,
        pub webhook_secret_sealed: Option<String>,
        pub created_at: i64,
        pub rotated_at: i64,
        pub deleted_at: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod notified_capture {
    use sea_orm::entity::prelude::*;

    /// A payment's capture as a provider's notification stated it, per route (`''`: the
    /// platform's; else a connection id): the pre-flight of providers that cannot be asked.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notified_captures")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub provider: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub route: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub payment_id: String,
        pub currency: String,
        pub captured_amount: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod event {
    use sea_orm::entity::prelude::*;

    /// One client-facing event: the resource's JSON form as it was (`domain::EventResource`).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub account_id: String,
        pub sequence: i64,
        #[sea_orm(column_name = "type")]
        pub kind: String,
        pub resource_id: String,
        pub data: String,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod webhook_endpoint {
    use sea_orm::entity::prelude::*;

    /// An account's subscription to its events. Its secrets are sealed with the master key
    /// (record id: the endpoint's id); `cursor` is the last event sequence fanned out to it.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_endpoints")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub account_id: String,
        pub url: String,
        pub description: String,
        /// Comma-separated event types; empty means all.
        pub event_types: String,
        pub enabled: bool,
        pub disabled_reason: String,
        pub secret_sealed: String,
        pub previous_secret_sealed: Option<String>,
        pub previous_secret_expires_at: Option<i64>,
        pub cursor: i64,
        pub failing_since: Option<i64>,
        pub created_at: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod webhook_delivery {
    use sea_orm::entity::prelude::*;

    /// One event's delivery to one endpoint. A PENDING delivery is due at `next_attempt_at`,
    /// which an attempt moves forward as its lease.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_deliveries")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub endpoint_id: String,
        pub account_id: String,
        pub event_id: String,
        pub event_type: String,
        pub event_sequence: i64,
        pub status: String,
        pub attempts: i32,
        pub last_status_code: Option<i32>,
        pub last_error: String,
        pub next_attempt_at: Option<i64>,
        pub window_started_at: i64,
        pub delivered_at: Option<i64>,
        pub created_at: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
