//! Where the app keeps its files, and the account settings remembered between runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CommandError;

/// The account this window signs in to, remembered (without any secret) between runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    /// The server's addresses (`host:port`), the first tried first.
    pub servers: Vec<String>,
    /// The SHA-256 of the server's certificate key, in hex (colons allowed).
    pub pin: String,
    /// The user name.
    pub user: String,
    /// This device's name.
    pub device: String,
}

impl Settings {
    /// Checks the fields and returns them cleaned up (trimmed, no empty server lines).
    pub fn checked(mut self) -> Result<Self, CommandError> {
        self.servers = self
            .servers
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if self.servers.is_empty() {
            return Err(CommandError::invalid(
                "give the server's address (host:port)",
            ));
        }
        self.pin = self.pin.trim().to_owned();
        pin_bytes(&self.pin)?;
        self.user = self.user.trim().to_owned();
        if self.user.is_empty() {
            return Err(CommandError::invalid("give a user name"));
        }
        self.device = self.device.trim().to_owned();
        if self.device.is_empty() {
            self.device = "desktop".into();
        }
        Ok(self)
    }

    /// The pin as bytes.
    pub fn pin(&self) -> Result<[u8; 32], CommandError> {
        pin_bytes(&self.pin)
    }

    /// The server addresses, resolved (host names through the system's resolver), in order.
    pub async fn addresses(&self) -> Result<Vec<SocketAddr>, CommandError> {
        let mut addrs = Vec::new();
        for server in &self.servers {
            let found = tokio::net::lookup_host(server.as_str())
                .await
                .map_err(|e| CommandError::invalid(format!("server address {server}: {e}")))?;
            addrs.extend(found.take(1));
        }
        Ok(addrs)
    }
}

fn pin_bytes(pin: &str) -> Result<[u8; 32], CommandError> {
    qrpc::tls::parse_fingerprint(pin).map_err(|_| {
        CommandError::invalid(
            "the pin is the 64 hex digits qpq-server prints at start (SHA-256 of its key)",
        )
    })
}

/// The app's folders: `settings.json` in `config`, one encrypted store per account under
/// `data/accounts/`. Both are created 0700.
#[derive(Debug, Clone)]
pub struct Home {
    config: PathBuf,
    data: PathBuf,
}

impl Home {
    /// The platform's folders for the app, or `$QPQ_DESKTOP_DIR/{config,data}` when that is
    /// set (tests, and several accounts side by side).
    pub fn new(config: PathBuf, data: PathBuf) -> Self {
        match std::env::var_os("QPQ_DESKTOP_DIR") {
            Some(root) => {
                let root = PathBuf::from(root);
                Self {
                    config: root.join("config"),
                    data: root.join("data"),
                }
            }
            None => Self { config, data },
        }
    }

    /// The remembered settings, if any.
    pub fn load(&self) -> Result<Option<Settings>, CommandError> {
        let path = self.config.join("settings.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                CommandError::failed(format!("{} is not readable: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CommandError::failed(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Remembers `settings` (replacing the file atomically; 0600 in a 0700 folder).
    pub fn save(&self, settings: &Settings) -> Result<(), CommandError> {
        private_dir(&self.config)?;
        let path = self.config.join("settings.json");
        let tmp = self.config.join("settings.json.new");
        let json = serde_json::to_vec_pretty(settings)
            .map_err(|e| CommandError::failed(format!("settings: {e}")))?;
        qpq_core::files::write_private(&tmp, &json)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| CommandError::failed(format!("cannot write {}: {e}", path.display())))
    }

    /// The data directory of `user`'s store for the server with `pin` (created 0700). One
    /// store per server and user: the same name on another server is another account (and a
    /// server whose key changes is another server: its users start a new store).
    pub fn account_dir(&self, user: &str, pin: &[u8; 32]) -> Result<PathBuf, CommandError> {
        // A user name is part of a path here: the characters of `name` and `name@domain`
        // only, so that nothing can leave the folder or mean something to the file system.
        let allowed = |c: char| c.is_ascii_alphanumeric() || "_.-@".contains(c);
        if user.is_empty()
            || user.len() > 255
            || user.starts_with('.')
            || user.ends_with('.')
            || !user.chars().all(allowed)
        {
            return Err(CommandError::invalid(format!(
                "not a user name: {:?} (letters, digits and _ . - @ only)",
                user.chars().take(40).collect::<String>()
            )));
        }
        let server = hex::encode(&pin[..16]);
        let dir = self.data.join("accounts").join(format!("{server}-{user}"));
        private_dir(&dir)?;
        Ok(dir)
    }
}

/// Creates `dir` and the folders above it that are missing, 0700; an existing `dir` is made
/// 0700 too.
pub fn private_dir(dir: &Path) -> Result<(), CommandError> {
    qpq_core::files::private_dir(dir)
        .map_err(|e| CommandError::failed(format!("cannot create {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pin: &str) -> Settings {
        Settings {
            servers: vec![" 127.0.0.1:7443 ".into(), String::new()],
            pin: pin.into(),
            user: " bob ".into(),
            device: String::new(),
        }
    }

    #[test]
    fn settings_are_checked_and_cleaned() {
        let pin = "ab".repeat(32);
        let ok = settings(&pin).checked().ok();
        assert_eq!(
            ok,
            Some(Settings {
                servers: vec!["127.0.0.1:7443".into()],
                pin: pin.clone(),
                user: "bob".into(),
                device: "desktop".into(),
            })
        );
        let colons = vec!["ab"; 32].join(":");
        assert!(settings(&colons).checked().is_ok());
        let short = settings("abcd").checked().err().map(|e| e.to_string());
        assert!(short.is_some_and(|m| m.contains("64 hex digits")));
    }

    #[test]
    fn settings_are_remembered_and_accounts_stay_inside_their_folder() {
        let root = std::env::temp_dir().join(format!("qpq-desktop-test-{}", std::process::id()));
        let home = Home {
            config: root.join("config"),
            data: root.join("data"),
        };
        assert!(matches!(home.load(), Ok(None)));
        let s = settings(&"00".repeat(32)).checked().ok();
        let s = s.as_ref().map(|s| home.save(s).map(|()| s.clone()));
        assert!(matches!(s, Some(Ok(_))));
        assert_eq!(home.load().ok().flatten(), s.and_then(Result::ok));
        let pin = [7u8; 32];
        for hostile in [
            "../x",
            "a/b",
            "..",
            "C:x",
            "a\\b",
            "",
            "bob\u{202e}",
            "bob.",
            ".hidden",
        ] {
            assert!(home.account_dir(hostile, &pin).is_err(), "{hostile:?}");
        }
        assert!(home.account_dir("bob@b.example", &pin).is_ok());
        // The same name on another server is another store.
        assert_ne!(
            home.account_dir("bob", &pin).ok(),
            home.account_dir("bob", &[8u8; 32]).ok()
        );
        std::fs::create_dir_all(root.join("data/accounts/07070707070707070707070707070707-carol"))
            .ok();
        let dir = home.account_dir("carol", &pin).ok();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: PathBuf| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| m.permissions().mode() & 0o777)
            };
            assert_eq!(mode(root.join("config/settings.json")), Some(0o600));
            assert_eq!(
                dir.and_then(mode),
                Some(0o700),
                "an existing folder is tightened"
            );
        }
        let _ = std::fs::remove_dir_all(root);
    }
}
