//! Building blocks of the webhooks we send to subscribers ("Events out"): how a webhook is signed
//! ([`signing`], the Standard Webhooks scheme) and which endpoint URLs we agree to send to
//! ([`target`], the SSRF guard). Neither does I/O beyond name resolution; the delivery worker
//! that sends (and retries) is built on them elsewhere.

pub mod signing;
pub mod target;
