//! Webhook sources: which `/webhooks/{source}` routes exist, which provider's rules each
//! follows, and its secrets. Built once at start from the command line, the environment and
//! the secrets file; a bad secret stops the server with a message that names the source but
//! never repeats the secret.

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
    /// Signing secrets; several during a rotation. Empty: unsigned deliveries.
    pub secrets: Vec<String>,
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
    /// Whether routes without a secret accept unsigned deliveries (loopback only).
    pub accept_unsigned: bool,
}

impl WebhookConfig {
    /// Builds the routes from the configuration. `loopback` says whether the HTTP listener
    /// is on a loopback address, the only case where unsigned deliveries are accepted.
    pub fn from_config(config: &ServeConfig, loopback: bool) -> Result<Self, Error> {
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
            sources.insert(name.to_string(), Source { provider, secrets: Vec::new() });
        }
        for name in &config.webhook_sources {
            validate_source_name(name).map_err(Error::Startup)?;
            sources
                .entry(name.clone())
                .or_insert(Source { provider: Provider::StandardWebhooks, secrets: Vec::new() });
        }
        for WebhookSecret { source, secret } in secrets {
            let entry = sources
                .entry(source.clone())
                .or_insert(Source { provider: Provider::StandardWebhooks, secrets: Vec::new() });
            signature::validate_secret(entry.provider, &secret)
                .map_err(|e| Error::Startup(format!("webhook secret for {source}: {e}")))?;
            entry.secrets.push(secret);
        }

        for (name, source) in &sources {
            if !source.secrets.is_empty() {
                tracing::info!(source = %name, secrets = source.secrets.len(), "webhook route is signed");
            } else if loopback {
                tracing::warn!(
                    source = %name,
                    "no webhook secret: /webhooks/{name} accepts UNSIGNED deliveries because the \
                     HTTP listener is on loopback; set --webhook-secret {name}=… before exposing it"
                );
            } else {
                tracing::warn!(source = %name, "no webhook secret: /webhooks/{name} refuses every delivery (401)");
            }
        }
        Ok(WebhookConfig {
            sources,
            tolerance: config.webhook_tolerance,
            komoju_livemode: config.komoju_livemode,
            accept_unsigned: loopback,
        })
    }
}
