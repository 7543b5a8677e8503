//! New contacts per sender: a sender may write to at most `limit` (default 20) people who do
//! not know them within `window_secs` (default one day); the next one is refused.

use std::collections::{HashMap, HashSet};

use qpq_plugin_api::{Code, Config, Event, EventData, EventKind, Plugin, Verdict, export_plugin};

/// Senders remembered before the ones whose window is over are forgotten.
const MAX_SENDERS: usize = 100_000;

struct Throttle {
    limit: usize,
    window_ms: u64,
    /// sender -> (window start, recipients first contacted in it)
    seen: HashMap<String, (u64, HashSet<String>)>,
}

impl Plugin for Throttle {
    fn init(config: Config) -> Result<Self, String> {
        Ok(Self {
            limit: config.parse_or("limit", 20)?,
            window_ms: config.parse_or::<u64>("window_secs", 86_400)? * 1000,
            seen: HashMap::new(),
        })
    }

    fn subscriptions(&self) -> Vec<EventKind> {
        vec![EventKind::Enqueue]
    }

    fn on_event(&mut self, event: Event) -> Verdict {
        let EventData::Enqueue(message) = event.data else {
            return Verdict::Allow;
        };
        let (Some(sender), true) = (message.sender, message.first_contact) else {
            return Verdict::Allow;
        };
        // Forget senders whose window is over, before the map grows large.
        if self.seen.len() >= MAX_SENDERS {
            let (now, window) = (event.time_ms, self.window_ms);
            self.seen
                .retain(|_, (start, _)| now.saturating_sub(*start) < window);
        }
        let (start, contacts) = self
            .seen
            .entry(sender)
            .or_insert_with(|| (event.time_ms, HashSet::new()));
        if event.time_ms.saturating_sub(*start) >= self.window_ms {
            *start = event.time_ms;
            contacts.clear();
        }
        if contacts.contains(&message.recipient) {
            return Verdict::Allow;
        }
        if contacts.len() >= self.limit {
            return Verdict::deny(
                Code::ResourceExhausted,
                format!("at most {} new contacts a day; try again later", self.limit),
            );
        }
        contacts.insert(message.recipient);
        Verdict::Allow
    }
}

export_plugin!(Throttle);
