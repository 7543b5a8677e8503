//! # qpq-plugin-api — plugins for qpq-server in a few lines of Rust
//!
//! A plugin allows or denies events by their metadata (registrations, logins, queued messages,
//! channels, blobs, federation peers). Implement [`Plugin`], export it with
//! [`export_plugin!`], and build for `wasm32-wasip2`:
//!
//! ```ignore
//! use qpq_plugin_api::{Config, Event, EventData, EventKind, Plugin, Verdict, export_plugin};
//!
//! struct OnlyAda;
//!
//! impl Plugin for OnlyAda {
//!     fn init(_config: Config) -> Result<Self, String> { Ok(OnlyAda) }
//!     fn subscriptions(&self) -> Vec<EventKind> { vec![EventKind::Registration] }
//!     fn on_event(&mut self, event: Event) -> Verdict {
//!         match event.data {
//!             EventData::Registration(r) if r.user != "ada" => Verdict::deny_permission("ada only"),
//!             _ => Verdict::Allow,
//!         }
//!     }
//! }
//!
//! export_plugin!(OnlyAda);
//! ```
//!
//! `cargo build --release --target wasm32-wasip2` writes the component
//! (`target/wasm32-wasip2/release/<name>.wasm`) that the server's configuration names. What a
//! plugin prints goes to the server's log. The API is the WIT package `qpq:plugin@1.0.0`
//! (`wit/plugin.wit`); this crate's major version follows it.

#![allow(unsafe_code, missing_docs)]

wit_bindgen::generate!({
    path: "wit",
    world: "plugin",
    pub_export_macro: true,
    export_macro_name: "export_bindings",
    default_bindings_module: "qpq_plugin_api",
});

pub use exports::qpq::plugin::hooks::Guest as Hooks;
pub use qpq::plugin::types::{
    BlobUpload, ChannelCreated, Code, Denial, Enqueue, Event, EventData, EventKind, FederationPeer,
    Login, Membership, Registration, Verdict,
};

/// A plugin's configuration: the operator's table, flattened to `key = value` pairs.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

impl Config {
    /// A configuration of `pairs`, as the server passes them to `init`.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// The value of `key` (`a.b` for a nested table), if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` parsed as `T`, or `default` when unset; an unparsable value is an
    /// error naming the key.
    pub fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.get(key) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| format!("configuration `{key}`: cannot read {text:?}")),
        }
    }

    /// Every pair, in the order given.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

impl Verdict {
    /// Deny with `PermissionDenied` and `reason`.
    pub fn deny_permission(reason: impl Into<String>) -> Self {
        Self::deny(Code::PermissionDenied, reason)
    }

    /// Deny with `code` and `reason` (the client sees both; at most 200 bytes of reason).
    pub fn deny(code: Code, reason: impl Into<String>) -> Self {
        Self::Deny(Denial {
            code,
            reason: reason.into(),
        })
    }
}

/// A qpq-server plugin. The server makes one instance, calls [`init`](Plugin::init) with its
/// configuration, then [`on_event`](Plugin::on_event) for each event of the kinds
/// [`subscriptions`](Plugin::subscriptions) names, one at a time. A panic fails the call (the
/// server then answers as the operator configured: deny, or allow) and starts a fresh
/// instance.
pub trait Plugin: Sized + 'static {
    /// Reads the configuration; an error refuses the plugin at load.
    fn init(config: Config) -> Result<Self, String>;
    /// The event kinds to be called for.
    fn subscriptions(&self) -> Vec<EventKind>;
    /// Decides on one event.
    fn on_event(&mut self, event: Event) -> Verdict;
}

/// Exports `$plugin` (a type implementing [`Plugin`]) as the component's `qpq:plugin/hooks`:
/// its one instance lives in the component from `init` on.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        ::std::thread_local! {
            static __QPQ_PLUGIN: ::std::cell::RefCell<::std::option::Option<$plugin>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        fn __qpq_plugin<R>(f: impl FnOnce(&mut $plugin) -> R) -> R {
            __QPQ_PLUGIN.with(|slot| match slot.borrow_mut().as_mut() {
                ::std::option::Option::Some(plugin) => f(plugin),
                ::std::option::Option::None => ::std::panic!("the plugin was called before init"),
            })
        }

        struct __QpqPluginExport;

        impl $crate::Hooks for __QpqPluginExport {
            fn init(
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::std::result::Result<(), ::std::string::String> {
                let plugin = <$plugin as $crate::Plugin>::init($crate::Config::from_pairs(config))?;
                __QPQ_PLUGIN.with(|slot| *slot.borrow_mut() = ::std::option::Option::Some(plugin));
                ::std::result::Result::Ok(())
            }
            fn subscriptions() -> ::std::vec::Vec<$crate::EventKind> {
                __qpq_plugin(|p| <$plugin as $crate::Plugin>::subscriptions(p))
            }
            fn on_event(event: $crate::Event) -> $crate::Verdict {
                __qpq_plugin(|p| <$plugin as $crate::Plugin>::on_event(p, event))
            }
        }

        $crate::export_bindings!(__QpqPluginExport with_types_in $crate);
    };
}
