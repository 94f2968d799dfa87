//! Webhook sources: which `/webhooks/{source}` routes exist, which provider's rules each
//! follows, and its secrets. Built once at start from the command line, the environment and
//! the secrets file; a bad secret stops the server with a message that names the source but
//! never repeats the secret.
//!
//! A route without a secret refuses every delivery unless the operator named it in
//! `--webhook-unsigned`: where the listener is (loopback, behind a local proxy) says nothing
//! about who can reach it, so accepting unsigned deliveries is always an explicit choice.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{parse_webhook_secret, validate_source_name, ServeConfig, WebhookSecret};
use crate::error::Error;
use crate::ingest::webhook::signature::{self, Provider};

/// One configured source.
#[derive(Clone)]
pub struct Source {
    /// Whose envelope and signature rules apply.
    pub provider: Provider,
    /// Signing secrets; several during a rotation.
    pub secrets: Vec<String>,
    /// Without secrets, whether unsigned deliveries are accepted (`--webhook-unsigned`).
    pub unsigned: bool,
}

/// Every webhook route and its settings.
#[derive(Clone)]
pub struct WebhookConfig {
    /// Sources by name.
    pub sources: BTreeMap<String, Source>,
    /// Allowed clock difference for signed timestamps.
    pub tolerance: Duration,
    /// livemode given to KOMOJU deliveries.
    pub komoju_livemode: bool,
}

impl WebhookConfig {
    /// Builds the routes from the configuration.
    pub fn from_config(config: &ServeConfig) -> Result<Self, Error> {
        let mut secrets: Vec<WebhookSecret> = config.webhook_secrets.clone();
        if let Some(path) = &config.webhook_secrets_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::Startup(format!(
                    "cannot read --webhook-secrets-file {}: {e}",
                    path.display()
                ))
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let secret = parse_webhook_secret(line).map_err(|e| {
                    Error::Startup(format!("{} line {}: {e}", path.display(), n + 1))
                })?;
                secrets.push(secret);
            }
        }

        let mut sources = BTreeMap::new();
        for (name, provider) in
            [("omise", Provider::Omise), ("komoju", Provider::Komoju), ("stripe", Provider::Stripe)]
        {
            sources.insert(
                name.to_string(),
                Source { provider, secrets: Vec::new(), unsigned: false },
            );
        }
        for name in &config.webhook_sources {
            validate_source_name(name).map_err(Error::Startup)?;
            sources.entry(name.clone()).or_insert(Source {
                provider: Provider::StandardWebhooks,
                secrets: Vec::new(),
                unsigned: false,
            });
        }
        for WebhookSecret { source, secret } in secrets {
            let entry = sources.entry(source.clone()).or_insert(Source {
                provider: Provider::StandardWebhooks,
                secrets: Vec::new(),
                unsigned: false,
            });
            signature::validate_secret(entry.provider, &secret)
                .map_err(|e| Error::Startup(format!("webhook secret for {source}: {e}")))?;
            entry.secrets.push(secret);
        }

        for name in &config.webhook_unsigned {
            let name = name.trim().to_ascii_lowercase();
            let Some(source) = sources.get_mut(&name) else {
                return Err(Error::Startup(format!(
                    "--webhook-unsigned {name}: no such webhook source (omise, komoju, stripe, or \
                     one declared with --webhook-source)"
                )));
            };
            if !source.secrets.is_empty() {
                return Err(Error::Startup(format!(
                    "--webhook-unsigned {name}: the source has a webhook secret, so it takes \
                     signed deliveries only; drop one of the two"
                )));
            }
            source.unsigned = true;
        }

        for (name, source) in &sources {
            if !source.secrets.is_empty() {
                tracing::info!(source = %name, secrets = source.secrets.len(), "webhook route is signed");
            } else if source.unsigned {
                tracing::warn!(
                    source = %name,
                    "/webhooks/{name} accepts UNSIGNED deliveries (--webhook-unsigned): anyone who \
                     reaches the HTTP listener can store events through it"
                );
            } else {
                tracing::info!(source = %name, "no webhook secret: /webhooks/{name} refuses every delivery (401)");
            }
        }
        Ok(WebhookConfig {
            sources,
            tolerance: config.webhook_tolerance,
            komoju_livemode: config.komoju_livemode,
        })
    }
}
