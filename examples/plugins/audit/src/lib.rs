//! An audit trail: every event as one JSON line on stdout, which the server writes to its log
//! (tagged with the plugin's name) for a log collector to export. Allows everything.

use qpq_plugin_api::{Config, Event, EventData, EventKind, Plugin, Verdict, export_plugin};

struct Audit;

/// `text` as a JSON string.
fn json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|i| json(i)).collect();
    format!("[{}]", items.join(","))
}

impl Plugin for Audit {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Audit)
    }

    fn subscriptions(&self) -> Vec<EventKind> {
        vec![
            EventKind::Registration,
            EventKind::Login,
            EventKind::Enqueue,
            EventKind::ChannelCreated,
            EventKind::Membership,
            EventKind::BlobUpload,
            EventKind::FederationPeer,
        ]
    }

    fn on_event(&mut self, event: Event) -> Verdict {
        let fields = match &event.data {
            EventData::Registration(r) => format!(
                "\"event\":\"registration\",\"user\":{},\"invited\":{},\"address\":{}",
                json(&r.user),
                r.invite.is_some(),
                json(&r.remote_address)
            ),
            EventData::Login(l) => format!(
                "\"event\":\"login\",\"user\":{},\"address\":{}",
                json(&l.user),
                json(&l.remote_address)
            ),
            EventData::Enqueue(m) => format!(
                "\"event\":\"enqueue\",\"sender\":{},\"recipient\":{},\"first_contact\":{},\"size\":{}",
                m.sender.as_deref().map_or("null".to_owned(), json),
                json(&m.recipient),
                m.first_contact,
                m.size
            ),
            EventData::ChannelCreated(c) => format!(
                "\"event\":\"channel_created\",\"creator\":{},\"channel\":{},\"members\":{}",
                json(&c.creator),
                json(&c.channel),
                list(&c.members)
            ),
            EventData::Membership(m) => format!(
                "\"event\":\"membership\",\"actor\":{},\"channel\":{},\"added\":{},\"removed\":{}",
                json(&m.actor),
                json(&m.channel),
                list(&m.added),
                list(&m.removed)
            ),
            EventData::BlobUpload(b) => format!(
                "\"event\":\"blob_upload\",\"user\":{},\"size\":{}",
                json(&b.user),
                b.size
            ),
            EventData::FederationPeer(p) => {
                format!(
                    "\"event\":\"federation_peer\",\"domain\":{}",
                    json(&p.domain)
                )
            }
        };
        println!("{{\"time_ms\":{},{fields}}}", event.time_ms);
        Verdict::Allow
    }
}

export_plugin!(Audit);
