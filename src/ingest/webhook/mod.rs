//! Provider webhooks: signature verification ([`signature`]) and envelope parsing
//! ([`envelope`]) for Omise, KOMOJU, Stripe and Standard Webhooks senders.

pub(crate) mod envelope;
pub mod signature;
