//! The configuration file (TOML) and its profiles.
//!
//! ```toml
//! server = "127.0.0.1:7443"      # default; a loopback address gets a local server on demand
//! # pin = "ab:cd:..."            # required for a remote server: the SHA-256 qpq-server prints
//! default_profile = "alice"
//!
//! [profiles.alice]
//! user = "alice"
//! device = "laptop"
//! # data_dir = "/home/alice/.local/share/quicproquo/alice"
//! passphrase_command = "pass show qpq/alice"
//!
//! [keys]                         # TUI key bindings (see `qpq tui`, F1)
//! next_conversation = "ctrl-n"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default server address: a local server, launched on demand.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7443";

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Server address (default 127.0.0.1:7443).
    pub server: Option<String>,
    /// SHA-256 of the server's certificate (64 hex digits, colons allowed). Required for a
    /// server that is not on this machine.
    pub pin: Option<String>,
    /// The profile used when none is named (default `default`).
    pub default_profile: Option<String>,
    /// Where the auto-launched local server keeps its data (default: the platform's data
    /// directory for `quicproquo-server`).
    pub local_server_dir: Option<PathBuf>,
    /// Accounts, by profile name.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    /// TUI key bindings: action name to key (e.g. `"ctrl-n"`, `"alt-up"`, `"f1"`).
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
}

/// One account on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The user name (used by `/login` when none is given).
    pub user: Option<String>,
    /// This device's name (default `cli`).
    pub device: Option<String>,
    /// The encrypted store's directory (default: `<data dir>/profiles/<name>`).
    pub data_dir: Option<PathBuf>,
    /// Environment variable holding the store passphrase (default `QPQ_PASSPHRASE`).
    pub passphrase_env: Option<String>,
    /// A command whose standard output (first line) is the store passphrase, run with
    /// `sh -c` (e.g. `pass show qpq`).
    pub passphrase_command: Option<String>,
    /// Server address for this profile (overrides the top-level one).
    pub server: Option<String>,
    /// Certificate pin for this profile (overrides the top-level one).
    pub pin: Option<String>,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid configuration.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (line and column included).
        message: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path`; a missing file is the empty configuration.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|message| ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parses configuration text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The profile named `name` (or the default one), with its name. A profile that is not
    /// in the file is an empty one: everything defaults.
    pub fn profile(&self, name: Option<&str>) -> (String, Profile) {
        let name = name
            .map(str::to_owned)
            .or_else(|| self.default_profile.clone())
            .unwrap_or_else(|| "default".to_owned());
        let profile = self.profiles.get(&name).cloned().unwrap_or_default();
        (name, profile)
    }

    /// The server address and pin for `profile`, after command-line overrides.
    pub fn server_for(
        &self,
        profile: &Profile,
        server: Option<&str>,
        pin: Option<&str>,
    ) -> Result<(SocketAddr, Option<[u8; 32]>), ConfigError> {
        let addr = server
            .map(str::to_owned)
            .or_else(|| profile.server.clone())
            .or_else(|| self.server.clone())
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
        let addr: SocketAddr = addr.parse().map_err(|_| {
            ConfigError::Invalid(format!(
                "server address {addr:?}: expected IP:port, e.g. 127.0.0.1:7443"
            ))
        })?;
        let pin = pin
            .map(str::to_owned)
            .or_else(|| profile.pin.clone())
            .or_else(|| self.pin.clone());
        let pin = pin
            .map(|p| {
                qrpc::tls::parse_fingerprint(&p).map_err(|_| {
                    ConfigError::Invalid(format!(
                        "pin {p:?}: expected the server certificate's SHA-256 as 64 hex digits"
                    ))
                })
            })
            .transpose()?;
        Ok((addr, pin))
    }
}

/// The platform's directories for qpq (config file, profile stores).
pub fn project_dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "quicproquo")
}

/// The default configuration file: `<config dir>/config.toml`.
pub fn default_config_path() -> PathBuf {
    project_dirs().map_or_else(
        || PathBuf::from("qpq-config.toml"),
        |d| d.config_dir().join("config.toml"),
    )
}

/// A profile's store directory.
pub fn profile_dir(name: &str, profile: &Profile) -> PathBuf {
    profile.data_dir.clone().unwrap_or_else(|| {
        project_dirs()
            .map_or_else(|| PathBuf::from("qpq-data"), |d| d.data_dir().to_path_buf())
            .join("profiles")
            .join(name)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn profiles_and_overrides_resolve_in_order() {
        let c = Config::parse(
            r#"
server = "127.0.0.1:9000"
default_profile = "work"
[profiles.work]
user = "alice"
device = "laptop"
passphrase_command = "echo secret"
[profiles.remote]
server = "192.0.2.1:7443"
pin = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
[keys]
quit = "ctrl-q"
"#,
        )
        .unwrap();
        let (name, work) = c.profile(None);
        assert_eq!(
            (name.as_str(), work.user.as_deref()),
            ("work", Some("alice"))
        );
        assert_eq!(c.server_for(&work, None, None).unwrap().0.port(), 9000);
        assert_eq!(
            c.server_for(&work, Some("127.0.0.1:1"), None)
                .unwrap()
                .0
                .port(),
            1,
            "the flag wins"
        );
        let (_, remote) = c.profile(Some("remote"));
        let (addr, pin) = c.server_for(&remote, None, None).unwrap();
        assert_eq!(addr.port(), 7443);
        assert_eq!(pin.unwrap()[1], 0x11);
        let (name, unknown) = c.profile(Some("nobody"));
        assert_eq!((name.as_str(), unknown), ("nobody", Profile::default()));
        assert_eq!(c.keys["quit"], "ctrl-q");
    }

    #[test]
    fn bad_configuration_is_a_clear_error() {
        let err = Config::parse("serv = 1").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        let c = Config::parse("server = \"nowhere\"").unwrap();
        let err = c.server_for(&Profile::default(), None, None).unwrap_err();
        assert!(err.to_string().contains("expected IP:port"), "{err}");
        let err = c
            .server_for(&Profile::default(), Some("127.0.0.1:1"), Some("abc"))
            .unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
        let missing = Config::load(Path::new("/nonexistent/qpq.toml")).unwrap();
        assert_eq!(missing, Config::default());
    }
}
