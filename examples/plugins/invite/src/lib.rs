//! Registration by invitation: a registration passes only with one of the configured codes.
//!
//! ```toml
//! [[plugins]]
//! name = "invite"
//! path = "qpq_plugin_invite.wasm"
//! config = { codes = "spring-2027,early-friends" }
//! ```

use qpq_plugin_api::{Code, Config, Event, EventData, EventKind, Plugin, Verdict, export_plugin};

struct Invite {
    codes: Vec<String>,
}

impl Plugin for Invite {
    fn init(config: Config) -> Result<Self, String> {
        let codes: Vec<String> = config
            .get("codes")
            .unwrap_or_default()
            .split(',')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect();
        if codes.is_empty() {
            return Err("configuration `codes` lists no invite code".into());
        }
        Ok(Self { codes })
    }

    fn subscriptions(&self) -> Vec<EventKind> {
        vec![EventKind::Registration]
    }

    fn on_event(&mut self, event: Event) -> Verdict {
        let EventData::Registration(registration) = event.data else {
            return Verdict::Allow;
        };
        match registration.invite {
            Some(code) if self.codes.contains(&code) => Verdict::Allow,
            Some(_) => Verdict::deny(Code::PermissionDenied, "that invite code is not valid"),
            None => Verdict::deny(
                Code::PermissionDenied,
                "this server registers by invitation: register with an invite code",
            ),
        }
    }
}

export_plugin!(Invite);
