//! A plugin that misbehaves on purpose, for the server's tests: on a login it loops forever,
//! grows its memory without end, panics, or sleeps in a host call, as `mode` says; it allows everything else and
//! reports its configuration in the denial of a login when `mode = "echo"`.

use qpq_plugin_api::{Code, Config, Event, EventData, EventKind, Plugin, Verdict, export_plugin};

struct Misbehave {
    mode: String,
    config: Vec<(String, String)>,
    hoard: Vec<Vec<u8>>,
}

impl Plugin for Misbehave {
    fn init(config: Config) -> Result<Self, String> {
        Ok(Self {
            mode: config.get("mode").unwrap_or("echo").to_owned(),
            config: config.pairs().to_vec(),
            hoard: Vec::new(),
        })
    }

    fn subscriptions(&self) -> Vec<EventKind> {
        vec![EventKind::Login]
    }

    fn on_event(&mut self, event: Event) -> Verdict {
        let EventData::Login(login) = event.data else {
            return Verdict::Allow;
        };
        if login.user == "innocent" {
            return Verdict::Allow;
        }
        match self.mode.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "grow" => loop {
                self.hoard.push(vec![1u8; 1 << 20]);
            },
            "panic" => panic!("misbehaving on purpose"),
            // Waits in a host call (a WASI clock), where no guest code runs.
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Verdict::Allow
            }
            _ => {
                let mut pairs = self.config.clone();
                pairs.sort();
                let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                Verdict::deny(Code::FailedPrecondition, text.join(";"))
            }
        }
    }
}

export_plugin!(Misbehave);
