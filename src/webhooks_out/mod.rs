//! Building blocks of the webhooks we send to subscribers ("Events out"): how a webhook is signed
//! ([`signing`], the Standard Webhooks scheme) and which endpoint URLs we agree to send to
//! ([`target`], the SSRF guard), and one attempt to send it ([`sender`]). What to send and when
//! to try again is the service's dispatcher's (`service/subscriptions.rs`).

pub mod sender;
pub mod signing;
pub mod target;
