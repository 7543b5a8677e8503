//! Operators' plugins: WebAssembly components that allow or deny events (registration, login,
//! enqueue, channels, blobs, federation peers) by their metadata. See docs/plugins.md.
//!
//! The host (feature `plugins`, wasmtime) lives in `host`; without the feature, [`Plugins`]
//! allows everything and a configuration that lists plugins is refused at start.

#[cfg(feature = "plugins")]
mod host;

use std::sync::Arc;

use qrpc::Status;

/// The plugin API versions this server loads: `qpq:plugin` 1.x.
pub const API_MAJOR: u64 = 1;

/// The newest API version this server knows.
pub const API_VERSION: &str = "1.0.0";

/// The kinds of events plugins may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A user registers.
    Registration,
    /// A user logs in.
    Login,
    /// A message is queued.
    Enqueue,
    /// A channel is created.
    ChannelCreated,
    /// Channel membership changes.
    Membership,
    /// A blob is uploaded.
    BlobUpload,
    /// A federation peer connects.
    FederationPeer,
}

/// What happened (metadata only: no message content ever reaches a plugin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A user registers.
    Registration {
        /// The user name.
        user: String,
        /// The invite code the client sent.
        invite: Option<String>,
        /// The client's IP address.
        remote_address: String,
    },
    /// A user logs in.
    Login {
        /// The user name.
        user: String,
        /// The client's IP address.
        remote_address: String,
    },
    /// A message is queued.
    Enqueue {
        /// The sending user; `None` for a sealed send.
        sender: Option<String>,
        /// `user` or `user@domain`.
        recipient: String,
        /// The recipient has neither written to the sender nor shares a channel with them.
        first_contact: bool,
        /// The sealed message's size.
        size: u64,
    },
    /// A channel is created.
    ChannelCreated {
        /// Who created it.
        creator: String,
        /// Its id, hex.
        channel: String,
        /// Its members.
        members: Vec<String>,
    },
    /// Members are added to or removed from a channel.
    Membership {
        /// Who changed it.
        actor: String,
        /// Its id, hex.
        channel: String,
        /// Added.
        added: Vec<String>,
        /// Removed.
        removed: Vec<String>,
    },
    /// A blob is uploaded.
    BlobUpload {
        /// The uploader.
        user: String,
        /// Its size.
        size: u64,
    },
    /// A federation peer connects.
    FederationPeer {
        /// Its domain.
        domain: String,
    },
}

impl Event {
    /// Its kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Registration { .. } => EventKind::Registration,
            Self::Login { .. } => EventKind::Login,
            Self::Enqueue { .. } => EventKind::Enqueue,
            Self::ChannelCreated { .. } => EventKind::ChannelCreated,
            Self::Membership { .. } => EventKind::Membership,
            Self::BlobUpload { .. } => EventKind::BlobUpload,
            Self::FederationPeer { .. } => EventKind::FederationPeer,
        }
    }
}

/// Why plugins could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The server was built without the `plugins` feature.
    #[error(
        "plugins are configured but this server was built without them: build qpq-server with `--features plugins`"
    )]
    NotBuiltIn,
    /// A plugin could not be read, compiled, checked or initialised.
    #[error("plugin {name}: {reason}")]
    Load {
        /// The plugin's configured name.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

/// The plugins of a server, in their configured order; cheap to clone. Without plugins every
/// event is allowed at no cost.
#[derive(Clone, Default)]
pub struct Plugins {
    #[cfg(feature = "plugins")]
    host: Option<Arc<host::Host>>,
    #[cfg(not(feature = "plugins"))]
    _none: Option<Arc<()>>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins")
            .field("loaded", &self.names())
            .finish()
    }
}

impl Plugins {
    /// No plugins.
    pub fn none() -> Self {
        Self::default()
    }

    /// Loads the configured plugins (none configured: none loaded, feature or not).
    pub async fn load(configs: &[crate::config::PluginConfig]) -> Result<Self, PluginError> {
        if configs.is_empty() {
            return Ok(Self::none());
        }
        #[cfg(feature = "plugins")]
        {
            let host = host::Host::load(configs.to_vec()).await?;
            Ok(Self {
                host: Some(Arc::new(host)),
            })
        }
        #[cfg(not(feature = "plugins"))]
        {
            Err(PluginError::NotBuiltIn)
        }
    }

    /// The loaded plugins' names, in order.
    pub fn names(&self) -> Vec<String> {
        #[cfg(feature = "plugins")]
        if let Some(host) = &self.host {
            return host.names();
        }
        Vec::new()
    }

    /// Reads every plugin's file again and swaps the new instances in; calls in flight finish
    /// on the old ones. On any error nothing changes.
    pub async fn reload(&self) -> Result<(), PluginError> {
        #[cfg(feature = "plugins")]
        if let Some(host) = &self.host {
            return host.reload().await;
        }
        Ok(())
    }

    /// Asks the plugins subscribed to `event`'s kind, in order: the first denial is the
    /// answer (later plugins are not asked); a plugin that fails (traps, runs out of time or
    /// memory) denies with `Unavailable` unless it is configured to fail open.
    pub async fn check(&self, event: impl FnOnce() -> Event) -> Result<(), Status> {
        #[cfg(feature = "plugins")]
        if let Some(host) = &self.host {
            return host.check(event).await;
        }
        let _ = event;
        Ok(())
    }
}

/// A plugin's configuration table as `key = value` pairs: nested tables as `a.b`, strings
/// unquoted, other values as TOML writes them.
pub fn flatten_config(table: &toml::Table) -> Vec<(String, String)> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
        for (key, value) in table {
            let key = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => walk(&key, inner, out),
                toml::Value::String(text) => out.push((key, text.clone())),
                other => out.push((key, other.to_string())),
            }
        }
    }
    let mut out = Vec::new();
    walk("", table, &mut out);
    out
}

/// The text of a denial as the client sees it: at most 200 bytes, control characters out.
#[cfg_attr(not(feature = "plugins"), allow(dead_code))]
pub(crate) fn bounded_reason(reason: &str) -> String {
    let mut out = String::new();
    for c in reason.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > 200 {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn configuration_tables_flatten_to_pairs() {
        let table: toml::Table =
            toml::from_str("codes = \"a,b\"\nlimit = 20\n[window]\nhours = 24\nstrict = true\n")
                .unwrap();
        let mut pairs = flatten_config(&table);
        pairs.sort();
        assert_eq!(
            pairs,
            vec![
                ("codes".into(), "a,b".into()),
                ("limit".into(), "20".into()),
                ("window.hours".into(), "24".into()),
                ("window.strict".into(), "true".into()),
            ]
        );
    }

    #[test]
    fn a_denial_s_reason_is_bounded_and_printable() {
        assert_eq!(bounded_reason("no\ninvite"), "noinvite");
        assert_eq!(bounded_reason(&"é".repeat(300)).len(), 200);
    }

    #[cfg(not(feature = "plugins"))]
    #[tokio::test]
    async fn a_server_built_without_plugins_refuses_a_configuration_that_lists_some() {
        let listed = [crate::config::PluginConfig::new("invite", "invite.wasm")];
        let err = Plugins::load(&listed).await.unwrap_err().to_string();
        assert!(err.contains("--features plugins"), "{err}");
    }

    #[tokio::test]
    async fn without_plugins_everything_is_allowed() {
        let plugins = Plugins::load(&[]).await.unwrap();
        assert!(plugins.names().is_empty());
        plugins
            .check(|| Event::Login {
                user: "ada".into(),
                remote_address: "127.0.0.1".into(),
            })
            .await
            .unwrap();
    }
}
