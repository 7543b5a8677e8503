//! Non-interactive subcommands for scripts and bots: `qpq send`, `qpq read [--follow]`,
//! `qpq conversations`, `qpq register`, `qpq login`. With `--json`, each result is one JSON
//! object per line.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use qpq_sdk::{ClientEvent, ConnectionState, Message, SendState};
use serde_json::json;

use crate::session::Session;

/// How long `send` waits for the server to take the message, and `read` to catch up.
const PATIENCE: Duration = Duration::from_secs(30);

/// A message as one JSON object.
pub fn message_json(session: &Session, m: &Message) -> serde_json::Value {
    json!({
        "conversation": session.name_of(&m.conversation),
        "conversation_id": m.conversation.to_string(),
        "id": m.id.to_string(),
        "short": m.id.short(),
        "sender": m.sender,
        "body": if m.deleted { "" } else { m.body.as_str() },
        "sent_at_ms": m.sent_at_ms,
        "reply_to": m.reply_to.map(|r| r.to_string()),
        "edited": m.edited,
        "deleted": m.deleted,
        "attachment": m.attachment.as_ref().map(|a| json!({"name": a.name, "size": a.size, "mime": a.mime})),
        "state": crate::format::state(&m.state),
    })
}

fn print_message(
    out: &mut dyn Write,
    session: &Session,
    m: &Message,
    as_json: bool,
) -> anyhow::Result<()> {
    if as_json {
        writeln!(out, "{}", message_json(session, m))?;
    } else {
        let line = format!(
            "#{} {}",
            session.name_of(&m.conversation),
            crate::format::message(m)
        );
        writeln!(out, "{}", crate::format::printable(&line))?;
    }
    out.flush()?;
    Ok(())
}

fn logged_in(session: &Session) -> anyhow::Result<()> {
    if session.client().whoami().is_none() {
        bail!(
            "this profile is not logged in: run `qpq login <user>` (or /login in the REPL) first"
        );
    }
    Ok(())
}

/// `qpq conversations`: every conversation with its unread count.
pub fn conversations(session: &Session, out: &mut dyn Write, as_json: bool) -> anyhow::Result<()> {
    logged_in(session)?;
    let me = session.me();
    for (i, c) in session.client().conversations()?.iter().enumerate() {
        let name = crate::format::conversation_name(c, me.as_deref());
        let unread = session.unread(&c.id);
        if as_json {
            writeln!(
                out,
                "{}",
                json!({
                    "number": i + 1,
                    "id": c.id.to_string(),
                    "name": name,
                    "kind": if c.kind == qpq_sdk::ConversationKind::Group { "group" } else { "direct" },
                    "members": c.members,
                    "unread": unread,
                })
            )?;
        } else {
            let line = format!(
                "{:>2}. {name} ({}) — {unread} unread",
                i + 1,
                c.members.join(", ")
            );
            writeln!(out, "{}", crate::format::printable(&line))?;
        }
    }
    Ok(())
}

/// `qpq send <conversation> <text>`: sends and waits until the server took it. A message the
/// server cannot take in time stays in the outbox for the next run (exit status 1, said so).
pub async fn send(
    session: &Session,
    conversation: &str,
    text: &str,
    out: &mut dyn Write,
    as_json: bool,
) -> anyhow::Result<()> {
    logged_in(session)?;
    let c = match session.find_conversation(conversation) {
        Ok(c) => c,
        // A user with no conversation yet: start the direct one.
        Err(_) if !conversation.contains(char::is_whitespace) && !conversation.starts_with('#') => {
            session.client().create_dm(conversation).await.with_context(|| {
                format!("no conversation {conversation:?}, and no user of that name to start one with")
            })?
        }
        Err(e) => return Err(e.into()),
    };
    let mut events = session.client().subscribe();
    let id = session
        .client()
        .conversation(&c.id)?
        .send_text(text, None)?
        .id();
    let outcome = tokio::time::timeout(PATIENCE, async {
        loop {
            match events.recv().await {
                Ok(ClientEvent::SendStateChanged { id: i, state, .. }) if i == id => match state {
                    SendState::Sent => return Ok(()),
                    SendState::Failed {
                        recoverable: false,
                        reason,
                    } => return Err(reason),
                    _ => {}
                },
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    let state = match &outcome {
        Ok(Ok(())) => "sent".to_owned(),
        Ok(Err(reason)) => format!("failed: {reason}"),
        Err(_) => "queued".to_owned(),
    };
    if as_json {
        writeln!(
            out,
            "{}",
            json!({"id": id.to_string(), "short": id.short(), "conversation": session.name_of(&c.id), "state": state})
        )?;
    } else {
        writeln!(out, "{} {state}", id.short())?;
    }
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => bail!("{} was not delivered: {reason}", id.short()),
        Err(_) => bail!(
            "{} is still queued after {PATIENCE:?}; it stays in the outbox and goes out the next time qpq runs",
            id.short()
        ),
    }
}

/// Waits until the receiver has caught up with the server.
/// Message requests waiting for an answer, one line each, with how to answer.
fn print_requests(session: &Session, out: &mut dyn Write, as_json: bool) -> anyhow::Result<()> {
    for (c, inviter) in session.client().requests()? {
        let id = crate::session::request_id(&c.id);
        if as_json {
            writeln!(
                out,
                "{}",
                json!({"request": id, "inviter": inviter, "members": c.members, "name": c.name})
            )?;
        } else {
            let line = format!(
                "? message request {id} from {inviter} ({}): `qpq accept {id}` or `qpq decline {id}`",
                c.members.join(", "),
            );
            writeln!(out, "{}", crate::format::printable(&line))?;
        }
    }
    Ok(())
}

/// `qpq accept <n>` / `qpq decline <n>`: answers message request `n` (as `qpq read` numbers
/// them) once this device has caught up.
pub async fn answer(
    session: &Session,
    mut events: tokio::sync::broadcast::Receiver<ClientEvent>,
    which: &str,
    accept: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    logged_in(session)?;
    caught_up(&mut events).await?;
    let (c, inviter) = session
        .find_request(which, "`qpq read`")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if accept {
        session.client().conversation(&c.id)?.accept().await?;
        writeln!(out, "accepted {inviter}'s invitation")?;
    } else {
        session.client().conversation(&c.id)?.decline().await?;
        writeln!(out, "declined {inviter}'s invitation")?;
    }
    Ok(())
}

async fn caught_up(
    events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
) -> anyhow::Result<()> {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match events.recv().await {
                Ok(ClientEvent::ConnectionStateChanged(ConnectionState::Connected)) => {
                    return Ok(());
                }
                Ok(ClientEvent::ConnectionStateChanged(ConnectionState::SessionEnded {
                    reason,
                })) => {
                    bail!("the server ended this session ({reason}): log in again")
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => bail!("{e}"),
            }
        }
    })
    .await
    .context("the server did not answer in time")?
}

/// `qpq read [--follow]`: prints the unread incoming messages (marking them read), then with
/// `follow` every new one as it arrives, until interrupted.
pub async fn read(
    session: &Session,
    mut events: tokio::sync::broadcast::Receiver<ClientEvent>,
    follow: bool,
    out: &mut dyn Write,
    as_json: bool,
) -> anyhow::Result<()> {
    logged_in(session)?;
    caught_up(&mut events).await?;
    for c in session.client().conversations()? {
        let unread = session.client().conversation(&c.id)?.unread()?;
        for m in &unread {
            print_message(out, session, m, as_json)?;
        }
        let ids: Vec<_> = unread.iter().map(|m| m.id).collect();
        session.client().conversation(&c.id)?.mark_read(&ids)?;
    }
    print_requests(session, out, as_json)?;
    if !follow {
        return Ok(());
    }
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(ClientEvent::MessageReceived(m)) if !m.outgoing => {
                    print_message(out, session, &m, as_json)?;
                    session.client().conversation(&m.conversation)?.mark_read(&[m.id])?;
                }
                Ok(ClientEvent::ConnectionStateChanged(ConnectionState::SessionEnded { reason })) => {
                    bail!("the server ended this session ({reason}): log in again");
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
