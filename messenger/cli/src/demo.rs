//! `qpq demo`: a throwaway server and three users on this machine, a short scripted
//! conversation, and a readable transcript with each message's delivery state.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use qpq_sdk::{ClientEvent, ConversationId, MessageId, QpqClient, SendState};
use sha2::Digest as _;
use tokio::sync::broadcast;

/// How long the demo waits for any one thing before it gives up.
const PATIENCE: Duration = Duration::from_secs(30);

/// What the demo did, for the caller (and its test).
#[derive(Debug, Default)]
pub struct Summary {
    /// Messages sent.
    pub sent: usize,
    /// Messages received, over all users.
    pub received: usize,
    /// Messages the offline user received when it came back, in order.
    pub caught_up: Vec<String>,
    /// Whether the attachment arrived intact.
    pub attachment_verified: bool,
}

struct User {
    name: &'static str,
    device: &'static str,
    client: QpqClient,
    events: broadcast::Receiver<ClientEvent>,
    dir: tempfile::TempDir,
    key: [u8; 32],
}

struct Demo<'a> {
    out: &'a mut (dyn Write + Send),
    server: crate::embedded::Embedded,
    summary: Summary,
}

/// Waits for the first event `pick` accepts.
async fn wait<T>(
    events: &mut broadcast::Receiver<ClientEvent>,
    what: &str,
    mut pick: impl FnMut(ClientEvent) -> Option<T>,
) -> anyhow::Result<T> {
    let found = async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(e) {
                        return Ok(t);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => return Err(anyhow::anyhow!("event stream ended: {e}")),
            }
        }
    };
    tokio::time::timeout(PATIENCE, found)
        .await
        .with_context(|| format!("waited {PATIENCE:?} for {what}"))?
}

/// Waits until message `id` leaves the outbox (or fails), returning the states it went through.
async fn delivered(user: &mut User, id: MessageId) -> anyhow::Result<Vec<String>> {
    let mut states: Vec<String> = Vec::new();
    loop {
        let state = wait(&mut user.events, "the message to be sent", |e| match e {
            ClientEvent::SendStateChanged { id: i, state, .. } if i == id => Some(state),
            _ => None,
        })
        .await?;
        let name = crate::format::state(&state);
        if states.last() != Some(&name) {
            states.push(name);
        }
        match state {
            SendState::Sent => return Ok(states),
            SendState::Failed {
                recoverable: false,
                reason,
            } => bail!("delivery failed: {reason}"),
            _ => {}
        }
    }
}

/// Waits for an incoming text on `user`'s side.
async fn receives(user: &mut User) -> anyhow::Result<qpq_sdk::Message> {
    wait(&mut user.events, "a message", |e| match e {
        ClientEvent::MessageReceived(m) if !m.outgoing => Some(*m),
        _ => None,
    })
    .await
}

async fn joins(user: &mut User) -> anyhow::Result<ConversationId> {
    wait(&mut user.events, "an invitation", |e| match e {
        ClientEvent::ConversationCreated(c) => Some(c.id),
        _ => None,
    })
    .await
}

/// Waits for a message request to `user` and returns the conversation and the inviter.
async fn requested(user: &mut User) -> anyhow::Result<(ConversationId, String)> {
    wait(&mut user.events, "a message request", |e| match e {
        ClientEvent::MessageRequest {
            conversation,
            inviter,
        } => Some((conversation.id, inviter)),
        _ => None,
    })
    .await
}

impl Demo<'_> {
    fn say(&mut self, line: impl AsRef<str>) -> anyhow::Result<()> {
        writeln!(self.out, "{}", line.as_ref())?;
        self.out.flush()?;
        Ok(())
    }

    async fn user(&mut self, name: &'static str, device: &'static str) -> anyhow::Result<User> {
        let dir = tempfile::tempdir()?;
        let key: [u8; 32] = rand::random();
        let client = self
            .server
            .client(dir.path(), key, qpq_sdk::InvitationPolicy::default())?;
        let events = client.subscribe();
        let password = format!("{name}'s password");
        client.register(name, &password).await?;
        client.login(name, device, &password).await?;
        Ok(User {
            name,
            device,
            client,
            events,
            dir,
            key,
        })
    }

    /// Sends `text` from `from` and reports its delivery states and who received it.
    async fn send(
        &mut self,
        from: &mut User,
        to: &mut [&mut User],
        conversation: &ConversationId,
        label: &str,
        text: &str,
        reply_to: Option<MessageId>,
    ) -> anyhow::Result<MessageId> {
        let id = from
            .client
            .conversation(conversation)?
            .send_text(text, reply_to)?
            .id();
        let states = delivered(from, id).await?;
        self.summary.sent += 1;
        let reply = reply_to
            .map(|r| format!(" (reply to {})", r.short()))
            .unwrap_or_default();
        self.say(format!(
            "  {} {} → {label}: \"{text}\"{reply}   [{}]",
            id.short(),
            from.name,
            states.join(" → ")
        ))?;
        for user in to.iter_mut() {
            let m = receives(user).await?;
            self.summary.received += 1;
            self.say(format!("      {} has it from {} ✓", user.name, m.sender))?;
        }
        Ok(id)
    }
}

/// Runs the demo, writing its transcript to `out`.
pub async fn run(out: &mut (dyn Write + Send)) -> anyhow::Result<Summary> {
    let server = crate::embedded::Embedded::start().await?;
    let mut demo = Demo {
        out,
        server,
        summary: Summary::default(),
    };
    let result = script(&mut demo).await;
    let Demo {
        server, summary, ..
    } = demo;
    server.shutdown().await;
    result.map(|()| summary)
}

async fn script(d: &mut Demo<'_>) -> anyhow::Result<()> {
    d.say("qpq demo — three users on a throwaway qpq-server (loopback only, nothing kept)")?;
    d.say(format!(
        "server {} · certificate sha256 {}",
        d.server.server.addr,
        qrpc::tls::format_fingerprint(&d.server.server.fingerprint)
    ))?;

    d.say("\n1. Accounts (OPAQUE registration: the server never sees a password)")?;
    let mut alice = d.user("alice", "laptop").await?;
    let mut bob = d.user("bob", "phone").await?;
    let mut carol = d.user("carol", "tablet").await?;
    for u in [&alice, &bob, &carol] {
        d.say(format!(
            "  {}/{} registered, keys published to the key-transparency log",
            u.name, u.device
        ))?;
    }

    d.say("\n2. A direct conversation (an MLS group, X-Wing post-quantum ciphersuite)")?;
    let dm = alice.client.create_dm("bob").await?.id;
    // Bob has never talked to Alice: her invitation waits for his consent.
    let (request, inviter) = requested(&mut bob).await?;
    d.say(format!(
        "  bob gets a message request from {inviter} (someone he has not talked to yet) and accepts it"
    ))?;
    bob.client.conversation(&request)?.accept().await?;
    let hi = d
        .send(
            &mut alice,
            &mut [&mut bob],
            &dm,
            "bob",
            "Hi Bob! Lunch today?",
            None,
        )
        .await?;
    let sure = d
        .send(
            &mut bob,
            &mut [&mut alice],
            &dm,
            "alice",
            "Sure, 12:30 at the usual place.",
            Some(hi),
        )
        .await?;
    alice.client.conversation(&dm)?.mark_read(&[sure])?;
    let reader = wait(&mut bob.events, "a read receipt", |e| match e {
        ClientEvent::ReceiptChanged { user, .. } => Some(user),
        _ => None,
    })
    .await?;
    d.say(format!("      {} read by {reader} ✓✓", sure.short()))?;

    d.say("\n3. A group of three")?;
    let team = alice
        .client
        .create_group("demo team", &["bob", "carol"])
        .await?
        .id;
    // Bob knows Alice now and joins at once; Carol is asked first.
    joins(&mut bob).await?;
    let (request, _) = requested(&mut carol).await?;
    carol.client.conversation(&request)?.accept().await?;
    d.say("  alice created #demo team with bob and carol (carol accepted her request)")?;
    let typo = d
        .send(
            &mut carol,
            &mut [&mut alice, &mut bob],
            &team,
            "#demo team",
            "Helo team!",
            None,
        )
        .await?;

    d.say("\n4. An edit and a reaction")?;
    carol.client.edit(&typo, "Hello team!")?;
    for u in [&mut alice, &mut bob] {
        let body = wait(&mut u.events, "the edit", |e| match e {
            ClientEvent::MessageEdited { body, .. } => Some(body),
            _ => None,
        })
        .await?;
        d.say(format!(
            "  {} sees {} edited to \"{body}\"",
            u.name,
            typo.short()
        ))?;
    }
    bob.client.react(&typo, "👍", false)?;
    for u in [&mut alice, &mut carol] {
        let (who, emoji) = wait(&mut u.events, "the reaction", |e| match e {
            ClientEvent::ReactionChanged { user, emoji, .. } => Some((user, emoji)),
            _ => None,
        })
        .await?;
        d.say(format!(
            "  {} sees {who} reacted {emoji} to {}",
            u.name,
            typo.short()
        ))?;
    }

    d.say("\n5. An attachment (encrypted on the device, uploaded in chunks)")?;
    let file: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut shown = 0u64;
    let mut progress_lines = Vec::new();
    let att = alice
        .client
        .conversation(&team)?
        .send_attachment(
            "notes.bin",
            "application/octet-stream",
            "the notes",
            &file,
            |p| {
                let pct = p.done * 100 / p.total.max(1);
                if pct >= shown + 20 || p.done == p.total {
                    shown = pct;
                    progress_lines
                        .push(format!("  upload {pct:>3}% ({}/{} bytes)", p.done, p.total));
                }
            },
        )
        .await?
        .id();
    for line in progress_lines {
        d.say(line)?;
    }
    let states = delivered(&mut alice, att).await?;
    d.summary.sent += 1;
    d.say(format!(
        "  {} alice → #demo team: notes.bin (3 MiB)   [{}]",
        att.short(),
        states.join(" → ")
    ))?;
    let arrived = receives(&mut bob).await?;
    let bytes = bob.client.download_attachment(&arrived.id, |_| {}).await?;
    let ok = sha2::Sha256::digest(&*bytes) == sha2::Sha256::digest(&file);
    d.summary.attachment_verified = ok;
    d.say(format!(
        "  bob downloaded {} bytes: {}",
        bytes.len(),
        if ok {
            "identical to what alice sent ✓"
        } else {
            "DIFFERENT"
        }
    ))?;
    receives(&mut carol).await?;

    d.say("\n6. Carol goes offline; the others keep talking")?;
    let (carol_dir, carol_key) = (carol.dir, carol.key);
    carol.client.close().await;
    d.say("  carol's client is closed")?;
    let mut away = Vec::new();
    for (from, text) in [
        ("alice", "Carol, the notes are up."),
        ("bob", "See you all at 12:30!"),
    ] {
        let (sender, other) = if from == "alice" {
            (&mut alice, &mut bob)
        } else {
            (&mut bob, &mut alice)
        };
        let id = d
            .send(sender, &mut [other], &team, "#demo team", text, None)
            .await?;
        away.push(id);
    }
    let carol_client = d.server.client(
        carol_dir.path(),
        carol_key,
        qpq_sdk::InvitationPolicy::default(),
    )?;
    let mut carol = User {
        name: "carol",
        device: "tablet",
        events: carol_client.subscribe(),
        client: carol_client,
        dir: carol_dir,
        key: carol_key,
    };
    carol.client.connect().await?;
    d.say("  carol is back: her client resumes its session and catches up")?;
    for _ in 0..away.len() {
        let m = receives(&mut carol).await?;
        d.summary.received += 1;
        d.say(format!(
            "      carol has {} from {}: \"{}\" ✓",
            m.id.short(),
            m.sender,
            m.body
        ))?;
        d.summary.caught_up.push(m.body);
    }

    d.say("\nWhat carol's store holds for #demo team:")?;
    for m in carol.client.conversation(&team)?.messages(20)? {
        d.say(format!("  {}", crate::format::message(&m)))?;
    }
    d.say(format!(
        "\nDone: {} messages sent, {} received, every one end-to-end encrypted. Try it yourself: `qpq` (REPL) or `qpq tui`.",
        d.summary.sent, d.summary.received
    ))?;
    let _ = (&alice.dir, &bob.dir, alice.device);
    Ok(())
}

/// What the federated demo did.
#[derive(Debug, Default)]
pub struct FederatedSummary {
    /// The texts bob (on the second server) received, in order.
    pub bob_received: Vec<String>,
    /// The texts alice (on the first server) received, in order.
    pub alice_received: Vec<String>,
}

/// `qpq demo --federated`: two servers that federate, a user on each, a direct conversation
/// across them; the transcript goes to `out`.
pub async fn run_federated(out: &mut (dyn Write + Send)) -> anyhow::Result<FederatedSummary> {
    let (a, b) = crate::embedded::Embedded::start_federated_pair().await?;
    let result = federated_script(out, &a, &b).await;
    a.shutdown().await;
    b.shutdown().await;
    result
}

async fn federated_script(
    out: &mut (dyn Write + Send),
    a: &crate::embedded::Embedded,
    b: &crate::embedded::Embedded,
) -> anyhow::Result<FederatedSummary> {
    let mut say = |line: String| -> anyhow::Result<()> {
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    };
    say(
        "qpq demo --federated — two servers of different operators (loopback only, nothing kept)"
            .into(),
    )?;
    for (name, e) in [("a.demo.test", a), ("b.demo.test", b)] {
        say(format!(
            "  {name} at {} · federation key pin {}…",
            e.server.addr,
            qpq_server::util::hex(&e.server.key_pin[..8])
        ))?;
    }
    say("  each lists the other by its key pin; they talk over QUIC with ALPN qpq-fed/1 and mutual TLS".into())?;

    let account =
        |e: &crate::embedded::Embedded| -> anyhow::Result<(tempfile::TempDir, QpqClient)> {
            let dir = tempfile::tempdir()?;
            let client = e.client(
                dir.path(),
                rand::random(),
                qpq_sdk::InvitationPolicy::FromAnyone,
            )?;
            Ok((dir, client))
        };
    let (_alice_dir, alice) = account(a)?;
    let (_bob_dir, bob) = account(b)?;
    let mut alice_events = alice.subscribe();
    let mut bob_events = bob.subscribe();
    alice.register("alice", "alice's password").await?;
    alice.login("alice", "laptop", "alice's password").await?;
    bob.register("bob", "bob's password").await?;
    bob.login("bob", "phone", "bob's password").await?;
    say("\n1. alice registers on a.demo.test, bob on b.demo.test".into())?;

    say("\n2. alice opens a direct conversation with bob@b.demo.test".into())?;
    let dm = alice.create_dm("bob@b.demo.test").await?;
    say("  bob's keys came from b.demo.test's key-transparency log, witnessed and cosigned by a.demo.test".into())?;
    wait(
        &mut bob_events,
        "the invitation to reach bob",
        |e| match e {
            ClientEvent::ConversationCreated(c) if c.id == dm.id => Some(()),
            _ => None,
        },
    )
    .await?;
    say("  the invitation was relayed a.demo.test → b.demo.test; bob joined".into())?;

    say("\n3. Messages across servers".into())?;
    let mut summary = FederatedSummary::default();
    for (from, to_events, text, received, to_name) in [
        (
            &alice,
            &mut bob_events,
            "Hello bob, from another server!",
            &mut summary.bob_received,
            "bob",
        ),
        (
            &bob,
            &mut alice_events,
            "Hi alice! Federation works.",
            &mut summary.alice_received,
            "alice",
        ),
    ] {
        from.conversation(&dm.id)?.send_text(text, None)?;
        let m = wait(to_events, "a message across servers", |e| match e {
            ClientEvent::MessageReceived(m) if !m.outgoing => Some(*m),
            _ => None,
        })
        .await?;
        say(format!(
            "  {to_name} has \"{}\" from {} ✓",
            m.body, m.sender
        ))?;
        received.push(m.body);
    }
    say("\nEach server only relayed sealed envelopes; see docs/federation.md.".into())?;
    alice.close().await;
    bob.close().await;
    Ok(summary)
}
