//! `qpq play file.yaml`: a playbook of actions and expectations for several users on one
//! throwaway server. The first unmet expectation stops it with a message naming the step.
//!
//! ```yaml
//! users: [alice, bob, carol]
//! steps:
//!   - dm: { from: alice, with: bob }
//!   - send: { from: alice, to: bob, text: "hello", as: hello }
//!   - expect_message: { user: bob, from: alice, text: "hello" }
//!   - expect_state: { user: alice, message: hello, state: sent }
//!   - group: { from: alice, name: team, members: [bob, carol] }
//!   - offline: carol
//!   - send: { from: bob, to: team, text: "while carol is away" }
//!   - online: carol
//!   - expect_message: { user: carol, from: bob, text: "while carol is away", within: 20s }
//!   - wait: 200ms
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use qpq_sdk::{ClientEvent, Conversation, ConversationKind, MessageId, QpqClient, SendState};
use serde::Deserialize;
use tokio::sync::broadcast;

/// A playbook file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    /// Users to register (each logs in on its own device with its own store).
    pub users: Vec<String>,
    /// What happens, in order. Each step is a one-key map: `- send: { ... }`.
    #[serde(with = "serde_norway::with::singleton_map_recursive")]
    pub steps: Vec<Step>,
}

/// One step.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Start a direct conversation.
    Dm {
        /// Who starts it.
        from: String,
        /// With whom.
        with: String,
    },
    /// Create a group.
    Group {
        /// Who creates it.
        from: String,
        /// Its name (later steps refer to it by this name).
        name: String,
        /// The other members.
        members: Vec<String>,
    },
    /// Send a text.
    Send {
        /// The sender.
        from: String,
        /// A user (their direct conversation with the sender) or a group name.
        to: String,
        /// The text.
        text: String,
        /// A name for the message, for `expect_state`.
        #[serde(rename = "as")]
        alias: Option<String>,
    },
    /// A user must have received a text.
    ExpectMessage {
        /// The receiver.
        user: String,
        /// The sender (user name).
        from: String,
        /// The exact text.
        text: String,
        /// How long to wait (default 10s).
        within: Option<String>,
    },
    /// A sent message must reach a delivery state.
    ExpectState {
        /// The sender.
        user: String,
        /// The message's `as` name.
        message: String,
        /// `queued`, `sending`, `sent` or `failed`.
        state: String,
        /// How long to wait (default 10s).
        within: Option<String>,
    },
    /// A user's client stops (its store stays).
    Offline(String),
    /// A user's client starts again from its store and catches up.
    Online(String),
    /// Pause.
    Wait(String),
}

/// Parses `500ms`, `10s`, `2m`.
pub fn duration(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, ""), |i| t.split_at(i));
    let n: u64 = number
        .parse()
        .with_context(|| format!("duration {text:?}: expected e.g. 500ms, 10s or 2m"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => bail!("duration {text:?}: the unit must be ms, s or m"),
    })
}

/// Parses a playbook.
pub fn parse(text: &str) -> anyhow::Result<Playbook> {
    let book: Playbook = serde_norway::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    if book.users.is_empty() {
        bail!("users: list at least one user");
    }
    for (i, step) in book.steps.iter().enumerate() {
        for user in step_users(step) {
            if !book.users.contains(user) {
                bail!("step {}: {user:?} is not in users", i + 1);
            }
        }
        match step {
            Step::ExpectMessage {
                within: Some(w), ..
            }
            | Step::ExpectState {
                within: Some(w), ..
            }
            | Step::Wait(w) => {
                duration(w).with_context(|| format!("step {}", i + 1))?;
            }
            _ => {}
        }
        if let Step::ExpectState { state, .. } = step
            && !["queued", "sending", "sent", "failed"].contains(&state.as_str())
        {
            bail!(
                "step {}: state {state:?}: expected queued, sending, sent or failed",
                i + 1
            );
        }
    }
    Ok(book)
}

fn step_users(step: &Step) -> Vec<&String> {
    match step {
        Step::Dm { from, with } => vec![from, with],
        Step::Group { from, members, .. } => std::iter::once(from).chain(members).collect(),
        Step::Send { from, .. } => vec![from],
        Step::ExpectMessage { user, from, .. } => vec![user, from],
        Step::ExpectState { user, .. } => vec![user],
        Step::Offline(u) | Step::Online(u) => vec![u],
        Step::Wait(_) => Vec::new(),
    }
}

fn describe(step: &Step) -> String {
    match step {
        Step::Dm { from, with } => format!("dm {from} ↔ {with}"),
        Step::Group {
            from,
            name,
            members,
        } => format!("group {name} by {from} with {}", members.join(", ")),
        Step::Send { from, to, text, .. } => format!("send {from} → {to}: {text:?}"),
        Step::ExpectMessage {
            user, from, text, ..
        } => format!("expect_message {user} ← {from}: {text:?}"),
        Step::ExpectState {
            user,
            message,
            state,
            ..
        } => format!("expect_state {user}'s {message} is {state}"),
        Step::Offline(u) => format!("offline {u}"),
        Step::Online(u) => format!("online {u}"),
        Step::Wait(d) => format!("wait {d}"),
    }
}

struct Player {
    client: Option<QpqClient>,
    events: Option<broadcast::Receiver<ClientEvent>>,
    dir: tempfile::TempDir,
    key: [u8; 32],
}

struct Run {
    server: crate::embedded::Embedded,
    players: HashMap<String, Player>,
    messages: HashMap<String, (String, MessageId)>,
}

fn state_name(s: &SendState) -> &'static str {
    match s {
        SendState::Queued => "queued",
        SendState::Sending => "sending",
        SendState::Sent => "sent",
        SendState::Failed { .. } => "failed",
        _ => "received",
    }
}

impl Run {
    fn client(&self, user: &str) -> anyhow::Result<&QpqClient> {
        self.players
            .get(user)
            .and_then(|p| p.client.as_ref())
            .with_context(|| format!("{user} is offline"))
    }

    fn open(&self, dir: &std::path::Path, key: [u8; 32]) -> anyhow::Result<QpqClient> {
        // Scripted users accept every invitation: a playbook says what they do.
        self.server
            .client(dir, key, qpq_sdk::InvitationPolicy::FromAnyone)
    }

    /// The conversation `to` names from `from`'s side: a group by name, or the DM with a user.
    fn conversation(&self, from: &str, to: &str) -> anyhow::Result<Conversation> {
        let all = self.client(from)?.conversations()?;
        all.iter()
            .find(|c| c.kind == ConversationKind::Group && c.name == to)
            .or_else(|| {
                all.iter().find(|c| {
                    c.kind == ConversationKind::Direct && c.members.iter().any(|m| m == to)
                })
            })
            .cloned()
            .with_context(|| format!("{from} has no conversation {to:?} (is the invitation still on its way? add an expectation first)"))
    }

    /// Waits until `check` holds, re-checking on every event of `user` and at the deadline.
    async fn until(
        &mut self,
        user: &str,
        within: Duration,
        mut check: impl FnMut(&QpqClient) -> anyhow::Result<bool>,
    ) -> anyhow::Result<bool> {
        let deadline = tokio::time::Instant::now() + within;
        let player = self
            .players
            .get_mut(user)
            .with_context(|| format!("no user {user}"))?;
        let (Some(client), Some(events)) = (player.client.as_ref(), player.events.as_mut()) else {
            bail!("{user} is offline");
        };
        loop {
            if check(client)? {
                return Ok(true);
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => return check(client),
                Ok(Err(broadcast::error::RecvError::Closed)) => return check(client),
                Ok(_) => {}
            }
        }
    }

    async fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        match step {
            Step::Dm { from, with } => {
                self.client(from)?.create_dm(with).await?;
            }
            Step::Group {
                from,
                name,
                members,
            } => {
                let refs: Vec<&str> = members.iter().map(String::as_str).collect();
                self.client(from)?.create_group(name, &refs).await?;
            }
            Step::Send {
                from,
                to,
                text,
                alias,
            } => {
                let c = self.conversation(from, to)?;
                let id = self
                    .client(from)?
                    .conversation(&c.id)?
                    .send_text(text, None)?
                    .id();
                if let Some(alias) = alias {
                    self.messages.insert(alias.clone(), (from.clone(), id));
                }
            }
            Step::ExpectMessage {
                user,
                from,
                text,
                within,
            } => {
                let within = within
                    .as_deref()
                    .map_or(Ok(Duration::from_secs(10)), duration)?;
                let prefix = format!("{from}/");
                let found = self
                    .until(user, within, |client| {
                        for c in client.conversations()? {
                            if client.conversation(&c.id)?.messages(1000)?.iter().any(|m| {
                                !m.outgoing && m.sender.starts_with(&prefix) && m.body == *text
                            }) {
                                return Ok(true);
                            }
                        }
                        Ok(false)
                    })
                    .await?;
                if !found {
                    bail!("not received within {within:?}");
                }
            }
            Step::ExpectState {
                user,
                message,
                state,
                within,
            } => {
                let within = within
                    .as_deref()
                    .map_or(Ok(Duration::from_secs(10)), duration)?;
                let (sender, id) = self.messages.get(message).cloned().with_context(|| {
                    format!("no message named {message:?} (name it with `as:` in a send step)")
                })?;
                if sender != *user {
                    bail!("{message:?} was sent by {sender}, not {user}");
                }
                let mut last = String::from("unknown");
                let reached = self
                    .until(user, within, |client| {
                        let now = client
                            .message(&id)?
                            .map_or("gone", |m| state_name(&m.state));
                        last = now.to_owned();
                        Ok(now == state)
                    })
                    .await?;
                if !reached {
                    bail!("still {last} after {within:?}");
                }
            }
            Step::Offline(user) => {
                let p = self
                    .players
                    .get_mut(user)
                    .with_context(|| format!("no user {user}"))?;
                if p.client.take().is_none() {
                    bail!("{user} is already offline");
                }
                p.events = None;
            }
            Step::Online(user) => {
                let (dir, key) = {
                    let p = self
                        .players
                        .get(user)
                        .with_context(|| format!("no user {user}"))?;
                    if p.client.is_some() {
                        bail!("{user} is already online");
                    }
                    (p.dir.path().to_path_buf(), p.key)
                };
                let client = self.open(&dir, key)?;
                let events = client.subscribe();
                client.connect().await?;
                let p = self
                    .players
                    .get_mut(user)
                    .with_context(|| format!("no user {user}"))?;
                p.events = Some(events);
                p.client = Some(client);
            }
            Step::Wait(d) => tokio::time::sleep(duration(d)?).await,
        }
        Ok(())
    }
}

/// Runs a playbook on a throwaway embedded server, reporting each step to `out`. The error
/// names the first step that failed and why.
pub async fn run(book: &Playbook, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let server = crate::embedded::Embedded::start().await?;
    let mut run = Run {
        server,
        players: HashMap::new(),
        messages: HashMap::new(),
    };
    let result = play(&mut run, book, out).await;
    let Run {
        server, players, ..
    } = run;
    drop(players);
    server.shutdown().await;
    result
}

async fn play(run: &mut Run, book: &Playbook, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    for name in &book.users {
        let dir = tempfile::tempdir()?;
        let key: [u8; 32] = rand::random();
        let client = run.open(dir.path(), key)?;
        let events = client.subscribe();
        client
            .register(name, "playbook password")
            .await
            .with_context(|| format!("registering {name}"))?;
        client.login(name, "play", "playbook password").await?;
        run.players.insert(
            name.clone(),
            Player {
                client: Some(client),
                events: Some(events),
                dir,
                key,
            },
        );
        writeln!(out, "user {name} registered")?;
    }
    for (i, step) in book.steps.iter().enumerate() {
        let what = describe(step);
        run.step(step)
            .await
            .with_context(|| format!("step {} ({what})", i + 1))?;
        writeln!(out, "ok {:>3}  {what}", i + 1)?;
    }
    writeln!(out, "playbook passed: {} steps", book.steps.len())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durations_and_bad_playbooks_are_checked_before_anything_runs() {
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert!(duration("soon").is_err());
        assert!(duration("5h").is_err());
        let err = parse("users: [alice]\nsteps:\n  - send: { from: bob, to: alice, text: hi }\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("step 1: \"bob\" is not in users"),
            "{err}"
        );
        let err = parse("users: [alice]\nsteps:\n  - fly: alice\n").unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
        let err =
            parse("users: [a]\nsteps:\n  - expect_state: { user: a, message: m, state: lost }\n")
                .unwrap_err();
        assert!(err.to_string().contains("state \"lost\""), "{err}");
        let err = parse("users: []\nsteps: []\n").unwrap_err();
        assert!(err.to_string().contains("at least one user"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_playbook_or_an_error(text in ".{0,300}") {
            let _ = parse(&text);
        }
    }
}
