//! How conversations, messages and events read in a terminal.

use qpq_sdk::{ClientEvent, ConnectionState, Conversation, ConversationKind, Message, SendState};

/// `text` safe to print on a terminal: control characters (escape sequences, carriage
/// returns, line breaks, C1 codes) and the invisible marks that reorder text (bidirectional
/// overrides and isolates) become U+FFFD, so another user's message, file name or group
/// name can neither drive the terminal nor disguise what it says.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if text.chars().any(unsafe_char) {
        text.chars()
            .map(|c| if unsafe_char(c) { '\u{fffd}' } else { c })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

/// The user part of a `user/device` name.
pub fn user_of(name: &str) -> &str {
    name.split('/').next().unwrap_or_default()
}

/// `hh:mm:ss` (UTC) of a time in milliseconds since the Unix epoch.
pub fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// A conversation's name as people read it: the group's name, or the other user of a DM.
pub fn conversation_name(c: &Conversation, me: Option<&str>) -> String {
    match c.kind {
        ConversationKind::Group => c.name.clone(),
        _ => {
            let others: Vec<&str> = c
                .members
                .iter()
                .map(String::as_str)
                .filter(|u| Some(*u) != me)
                .collect();
            if others.is_empty() {
                "(just you)".to_owned()
            } else {
                others.join(", ")
            }
        }
    }
}

/// A delivery state in words (empty for incoming messages).
pub fn state(s: &SendState) -> String {
    match s {
        SendState::Queued => "queued".into(),
        SendState::Sending => "sending".into(),
        SendState::Sent => "sent".into(),
        SendState::Failed {
            recoverable: true,
            reason,
        } => format!("retrying ({reason})"),
        SendState::Failed { reason, .. } => format!("FAILED ({reason})"),
        _ => String::new(),
    }
}

/// One message on one line: time, short id, sender, text, and what happened to it.
pub fn message(m: &Message) -> String {
    let mut line = format!("[{}] {} {}: ", clock(m.sent_at_ms), m.id.short(), m.sender);
    if let Some(r) = &m.reply_to {
        line.push_str(&format!("↪{} ", r.short()));
    }
    if m.deleted {
        line.push_str("(deleted)");
    } else {
        line.push_str(&m.body);
        if let Some(a) = &m.attachment {
            line.push_str(&format!(" 📎 {} ({} bytes)", a.name, a.size));
        }
        if m.edited {
            line.push_str(" (edited)");
        }
    }
    if !m.reactions.is_empty() {
        let r: Vec<String> = m
            .reactions
            .iter()
            .map(|(u, e)| format!("{e} {u}"))
            .collect();
        line.push_str(&format!("  [{}]", r.join(", ")));
    }
    if m.outgoing {
        line.push_str(&format!("  · {}", state(&m.state)));
        if !m.read_by.is_empty() {
            line.push_str(&format!(", read by {}", m.read_by.join(", ")));
        }
    }
    line
}

/// A connection state in words.
pub fn connection(s: &ConnectionState) -> String {
    match s {
        ConnectionState::Connected => "Connected".into(),
        ConnectionState::CatchingUp => "CatchingUp".into(),
        ConnectionState::Offline { reason } => format!("Offline ({reason})"),
        ConnectionState::SessionEnded { reason } => format!("Session ended ({reason})"),
        _ => "Unknown".into(),
    }
}

/// An event as a line for the REPL, with the conversation's name; `None` for events the
/// REPL does not print (its own local echo, connection chatter while connected).
pub fn event(
    e: &ClientEvent,
    conversation: impl Fn(&qpq_sdk::ConversationId) -> String,
) -> Option<String> {
    Some(match e {
        ClientEvent::MessageReceived(m) if !m.outgoing || m.state == SendState::Sent => {
            format!("#{} {}", conversation(&m.conversation), message(m))
        }
        ClientEvent::MessageReceived(_) => return None,
        ClientEvent::MessageEdited {
            id,
            conversation: c,
            body,
        } => {
            format!("#{} {} edited: {body}", conversation(c), id.short())
        }
        ClientEvent::MessageDeleted {
            id,
            conversation: c,
        } => {
            format!("#{} {} was deleted", conversation(c), id.short())
        }
        ClientEvent::ReactionChanged {
            id,
            conversation: c,
            user,
            emoji,
            added,
        } => format!(
            "#{} {user} {} {emoji} {} {}",
            conversation(c),
            if *added { "reacted" } else { "took back" },
            if *added { "to" } else { "on" },
            id.short()
        ),
        ClientEvent::ReceiptChanged {
            ids,
            conversation: c,
            user,
        } => {
            let ids: Vec<String> = ids.iter().map(qpq_sdk::MessageId::short).collect();
            format!("#{} {user} read {}", conversation(c), ids.join(" "))
        }
        ClientEvent::SendStateChanged {
            id,
            conversation: c,
            state: s,
        } => match s {
            // What happens to a message after it was shown queued: handed over, or failed
            // (read receipts come as their own events).
            SendState::Sent | SendState::Failed { .. } => {
                format!("#{} {} {}", conversation(c), id.short(), state(s))
            }
            _ => return None,
        },
        ClientEvent::Typing {
            conversation: c,
            user,
        } => {
            format!("#{} {user} is typing…", conversation(c))
        }
        ClientEvent::ConversationCreated(c) => {
            format!("joined #{} ({})", conversation(&c.id), c.members.join(", "))
        }
        ClientEvent::MessageRequest {
            conversation: c,
            inviter,
        } => format!(
            "? message request: {inviter} invites you ({}); see /requests, then /accept or /decline",
            c.members.join(", ")
        ),
        ClientEvent::ConversationUpdated(c) => format!(
            "#{} now: {} ({})",
            conversation(&c.id),
            c.name,
            c.members.join(", ")
        ),
        ClientEvent::MemberJoined {
            conversation: c,
            user,
        } => {
            format!("#{} {user} joined", conversation(c))
        }
        ClientEvent::MemberLeft {
            conversation: c,
            user,
        } => {
            format!("#{} {user} left", conversation(c))
        }
        ClientEvent::ConnectionStateChanged(s) => format!("-- {}", connection(s)),
        ClientEvent::KeyTransparencyAlarm { device, reason } => format!(
            "!!! KEY TRANSPARENCY ALARM for {device}: {reason}. Its key was NOT used. \
             Compare safety numbers out of band (/safety)."
        ),
        ClientEvent::SafetyNumberChanged { user, device } => format!(
            "! safety number with {user} changed (device {device}); compare again with /safety {user}"
        ),
        ClientEvent::UndecryptableMessage { seq, reason } => {
            format!("! could not decrypt queue entry {seq}: {reason}")
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn escape_sequences_and_reordering_marks_never_reach_the_terminal() {
        let hostile = "hi\x1b]52;c;ZXZpbA==\x07\x1b[2J\r\nfake line\u{9b}31m \u{202e}gpj.exe";
        let shown = printable(hostile);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert!(!shown.contains('\u{202e}'));
        assert_eq!(
            shown,
            "hi\u{fffd}]52;c;ZXZpbA==\u{fffd}\u{fffd}[2J\u{fffd}\u{fffd}fake line\u{fffd}31m \u{fffd}gpj.exe"
        );
        assert!(matches!(
            printable("plain text ✓"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_sent_message_s_later_states_are_printed_and_the_chatter_is_not() {
        let id = qpq_sdk::MessageId([0xab; 16]);
        let c = qpq_sdk::ConversationId([1; 16]);
        let line = |s: SendState| {
            event(
                &ClientEvent::SendStateChanged {
                    id,
                    conversation: c,
                    state: s,
                },
                |_| "team".to_owned(),
            )
        };
        let short = id.short();
        assert_eq!(line(SendState::Sent), Some(format!("#team {short} sent")));
        assert_eq!(
            line(SendState::Failed {
                recoverable: false,
                reason: "no such device".into()
            }),
            Some(format!("#team {short} FAILED (no such device)"))
        );
        assert_eq!(line(SendState::Sending), None);
    }

    #[test]
    fn clock_reads_utc_time_of_day() {
        // 2026-11-30T13:05:09Z
        assert_eq!(clock(1_796_043_909_000), "13:05:09");
        assert_eq!(clock(0), "00:00:00");
    }
}
