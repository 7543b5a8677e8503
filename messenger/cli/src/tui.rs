//! `qpq tui`: conversations on the left, messages on the right, the REPL's commands on the
//! input line, a status bar with the connection state; key-transparency alarms in red across
//! the top. Rendering is a pure function of [`View`], so the screen is tested with ratatui's
//! test backend.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use futures::StreamExt as _;
use qpq_sdk::{ClientEvent, ConversationId, Message, Progress, SendState};
use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph, Wrap};
use zeroize::Zeroizing;

use crate::commands::{self, Command};
use crate::keys::{Action, KeyMap};
use crate::session::Session;

/// Everything the screen shows.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// `user/device`, or "not logged in".
    pub me: String,
    /// Connection state in words.
    pub connection: String,
    /// Items waiting in the outbox.
    pub outbox: u64,
    /// A key-transparency alarm, shown until dismissed with Esc.
    pub alarm: Option<String>,
    /// Conversations: id, name, unread count.
    pub conversations: Vec<(ConversationId, String, usize)>,
    /// Message requests waiting for an answer (`/requests`, `/accept`, `/decline`).
    pub requests: usize,
    /// The selected conversation's index.
    pub selected: usize,
    /// The selected conversation's members.
    pub members: Vec<String>,
    /// Its newest messages, oldest first.
    pub messages: Vec<Message>,
    /// Who is typing there.
    pub typing: Vec<String>,
    /// A transfer in progress.
    pub transfer: Option<Progress>,
    /// Commands still running in the background.
    pub running: usize,
    /// The input line.
    pub input: String,
    /// The cursor position in the input line, in characters.
    pub cursor: usize,
    /// What to ask instead of the input (a password), masked.
    pub secret_prompt: Option<String>,
    /// Recent command output and notices, newest last.
    pub log: Vec<String>,
    /// The help overlay is open.
    pub show_help: bool,
    /// Key bindings, for the help overlay.
    pub keys: Vec<(String, &'static str)>,
    /// Messages scrolled back from the newest.
    pub scroll: usize,
}

const LOG_LINES: usize = 3;

fn state_style(m: &Message, retry_key: &str) -> (String, Style) {
    match &m.state {
        SendState::Queued => ("queued".into(), Style::default().fg(Color::DarkGray)),
        SendState::Sending => ("sending".into(), Style::default().fg(Color::DarkGray)),
        SendState::Sent if m.read_by.is_empty() => {
            ("sent ✓".into(), Style::default().fg(Color::Green))
        }
        SendState::Sent => (
            format!("read ✓✓ {}", m.read_by.join(",")),
            Style::default().fg(Color::Green),
        ),
        SendState::Failed {
            recoverable: true,
            reason,
        } => (
            format!("retrying: {reason}"),
            Style::default().fg(Color::Yellow),
        ),
        SendState::Failed { reason, .. } => (
            format!("FAILED: {reason} — {retry_key} sends it again"),
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
        _ => (String::new(), Style::default()),
    }
}

fn message_lines(
    m: &Message,
    by_id: &HashMap<[u8; 16], &Message>,
    retry_key: &str,
) -> Line<'static> {
    let mut spans = vec![
        Span::styled(
            format!("{} ", crate::format::clock(m.sent_at_ms)),
            Style::default().fg(Color::DarkGray),
        ),
        Span::styled(
            format!("{} ", m.id.short()),
            Style::default().fg(Color::DarkGray),
        ),
        Span::styled(
            format!("{}: ", crate::format::user_of(&m.sender)),
            Style::default().add_modifier(Modifier::BOLD),
        ),
    ];
    if let Some(r) = &m.reply_to {
        let quoted = by_id
            .get(&r.0)
            .map(|q| q.body.chars().take(24).collect::<String>())
            .unwrap_or_default();
        spans.push(Span::styled(
            format!("↪ {} \"{quoted}\" ", r.short()),
            Style::default().fg(Color::Cyan),
        ));
    }
    if m.deleted {
        spans.push(Span::styled(
            "(deleted)",
            Style::default().fg(Color::DarkGray),
        ));
    } else {
        spans.push(Span::raw(m.body.clone()));
        if let Some(a) = &m.attachment {
            spans.push(Span::styled(
                format!(" 📎 {} ({} bytes)", a.name, a.size),
                Style::default().fg(Color::Magenta),
            ));
        }
        if m.edited {
            spans.push(Span::styled(
                " (edited)",
                Style::default().fg(Color::DarkGray),
            ));
        }
    }
    if !m.reactions.is_empty() {
        let r: Vec<String> = m.reactions.iter().map(|(u, e)| format!("{e}{u}")).collect();
        spans.push(Span::raw(format!("  [{}]", r.join(" "))));
    }
    if m.outgoing {
        let (text, style) = state_style(m, retry_key);
        spans.push(Span::styled(format!("  · {text}"), style));
    }
    Line::from(spans)
}

/// Draws the whole screen. Safe at any size (tiny terminals get less, never a panic).
pub fn draw(f: &mut Frame<'_>, v: &View) {
    let area = f.area();
    let alarm_height = u16::from(v.alarm.is_some()) * 2;
    let log_height = u16::try_from(v.log.len().min(LOG_LINES)).unwrap_or(0);
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Length(alarm_height),
            Constraint::Min(3),
            Constraint::Length(log_height),
            Constraint::Length(3),
        ])
        .split(area);

    // Status bar.
    let connection_style = match v.connection.as_str() {
        "Connected" => Style::default().fg(Color::Green),
        "CatchingUp" => Style::default().fg(Color::Yellow),
        _ => Style::default().fg(Color::Red),
    };
    let mut status = vec![
        Span::styled(" qpq ", Style::default().add_modifier(Modifier::REVERSED)),
        Span::raw(format!(" {} · ", v.me)),
        Span::styled(v.connection.clone(), connection_style),
        Span::raw(format!(" · outbox {}", v.outbox)),
    ];
    // "1 thing", "2 things".
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    if v.requests > 0 {
        status.push(Span::styled(
            format!(" · {} (/requests)", count(v.requests, "message request")),
            Style::default()
                .fg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        ));
    }
    if v.running > 0 {
        status.push(Span::styled(
            format!(" · {} running", count(v.running, "command")),
            Style::default().fg(Color::Cyan),
        ));
    }
    if let Some(p) = v.transfer {
        status.push(Span::styled(
            format!(" · transfer {}", crate::progress::render(p, 10)),
            Style::default().fg(Color::Cyan),
        ));
    }
    let help_key = v
        .keys
        .iter()
        .find(|(_, about)| about.contains("help"))
        .map_or("f1", |(k, _)| k.as_str());
    status.push(Span::styled(
        format!(" · {help_key}: help"),
        Style::default().fg(Color::DarkGray),
    ));
    f.render_widget(Paragraph::new(Line::from(status)), rows[0]);

    if let Some(alarm) = &v.alarm {
        f.render_widget(
            Paragraph::new(format!(
                "KEY TRANSPARENCY ALARM: {alarm} — the key was NOT used; compare safety numbers (/safety). Esc hides this."
            ))
            .style(
                Style::default()
                    .fg(Color::White)
                    .bg(Color::Red)
                    .add_modifier(Modifier::BOLD),
            )
            .wrap(Wrap { trim: true }),
            rows[1],
        );
    }

    // Conversations and messages.
    let list_width = (rows[2].width / 3).clamp(12, 30);
    let body = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Length(list_width), Constraint::Min(1)])
        .split(rows[2]);
    let items: Vec<ListItem<'_>> = v
        .conversations
        .iter()
        .map(|(_, name, unread)| {
            let mut spans = vec![Span::raw(name.clone())];
            if *unread > 0 {
                spans.push(Span::styled(
                    format!(" ({unread})"),
                    Style::default()
                        .fg(Color::Yellow)
                        .add_modifier(Modifier::BOLD),
                ));
            }
            ListItem::new(Line::from(spans))
        })
        .collect();
    let mut state = ListState::default();
    if !v.conversations.is_empty() {
        state.select(Some(v.selected.min(v.conversations.len() - 1)));
    }
    f.render_stateful_widget(
        List::new(items)
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title("Conversations"),
            )
            .highlight_style(Style::default().add_modifier(Modifier::REVERSED)),
        body[0],
        &mut state,
    );

    let title = v.conversations.get(v.selected).map_or_else(
        || "no conversation — /dm <user>".to_owned(),
        |(_, name, _)| format!("{name} — {}", v.members.join(", ")),
    );
    let pane = Block::default().borders(Borders::ALL).title(title);
    let inner = pane.inner(body[1]);
    f.render_widget(pane, body[1]);
    let by_id: HashMap<[u8; 16], &Message> = v.messages.iter().map(|m| (m.id.0, m)).collect();
    let typing_height = u16::from(!v.typing.is_empty());
    let height = usize::from(inner.height.saturating_sub(typing_height));
    let width = usize::from(inner.width.max(1));
    // From the newest (minus the scroll) back, as many messages as fit.
    let retry_key = v
        .keys
        .iter()
        .find(|(_, about)| about.contains("failed"))
        .map_or("the retry key", |(k, _)| k.as_str());
    let mut shown: Vec<Line<'static>> = Vec::new();
    let mut used = 0usize;
    for m in v.messages.iter().rev().skip(v.scroll) {
        let line = message_lines(m, &by_id, retry_key);
        let rows_needed = line.width().div_ceil(width).max(1);
        if used + rows_needed > height && !shown.is_empty() {
            break;
        }
        used += rows_needed;
        shown.push(line);
    }
    shown.reverse();
    f.render_widget(
        Paragraph::new(shown).wrap(Wrap { trim: false }),
        Rect {
            height: inner.height.saturating_sub(typing_height),
            ..inner
        },
    );
    if !v.typing.is_empty() && inner.height > 0 {
        f.render_widget(
            Paragraph::new(format!("{} typing…", v.typing.join(", "))).style(
                Style::default()
                    .fg(Color::DarkGray)
                    .add_modifier(Modifier::ITALIC),
            ),
            Rect {
                y: inner.y + inner.height - 1,
                height: 1,
                ..inner
            },
        );
    }

    // Command output.
    let start = v.log.len().saturating_sub(LOG_LINES);
    f.render_widget(
        Paragraph::new(v.log[start..].join("\n")).style(Style::default().fg(Color::Gray)),
        rows[3],
    );

    // Input line.
    let (label, text) = match &v.secret_prompt {
        Some(label) => (label.clone(), "•".repeat(v.input.chars().count())),
        None => ("message or /command".to_owned(), v.input.clone()),
    };
    f.render_widget(
        Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(label)),
        rows[4],
    );
    if rows[4].width > 2 && rows[4].height > 2 {
        let x = rows[4].x
            + 1
            + u16::try_from(v.cursor)
                .unwrap_or(u16::MAX)
                .min(rows[4].width - 3);
        f.set_cursor_position((x, rows[4].y + 1));
    }

    if v.show_help {
        draw_help(f, v, area);
    }
}

fn draw_help(f: &mut Frame<'_>, v: &View, area: Rect) {
    let mut lines: Vec<Line<'_>> = vec![Line::styled(
        "Keys",
        Style::default().add_modifier(Modifier::BOLD),
    )];
    for (key, about) in &v.keys {
        lines.push(Line::raw(format!("  {key:<12} {about}")));
    }
    lines.push(Line::raw(
        "  enter        send the line (text, or a /command)",
    ));
    lines.push(Line::raw(""));
    for l in commands::help(None).lines() {
        lines.push(Line::raw(l.to_owned()));
    }
    let w = area.width.saturating_sub(4).min(90);
    let h = area
        .height
        .saturating_sub(2)
        .min(u16::try_from(lines.len() + 2).unwrap_or(u16::MAX));
    let popup = Rect {
        x: area.x + (area.width.saturating_sub(w)) / 2,
        y: area.y + (area.height.saturating_sub(h)) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(lines)
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title("help (any key closes)"),
            )
            .wrap(Wrap { trim: false }),
        popup,
    );
}

/// What a key press asks of the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Nothing beyond redrawing.
    Redraw,
    /// Leave.
    Quit,
    /// Run this line.
    Submit(String),
    /// Submit a secret for the pending command.
    Secret(Zeroizing<String>),
    /// Select another conversation.
    Select(usize),
    /// Send the newest failed message again.
    Retry,
    /// The user typed text (a typing notification may go out).
    Typed,
}

/// Applies a key press to the view; returns what the application must do.
pub fn handle_key(v: &mut View, keys: &KeyMap, e: KeyEvent) -> Intent {
    if e.kind == KeyEventKind::Release {
        return Intent::Redraw;
    }
    if v.show_help {
        v.show_help = false;
        return Intent::Redraw;
    }
    if let Some(action) = keys.action(&e) {
        return match action {
            Action::Quit => Intent::Quit,
            Action::Help => {
                v.show_help = true;
                Intent::Redraw
            }
            Action::NextConversation if !v.conversations.is_empty() => {
                Intent::Select((v.selected + 1) % v.conversations.len())
            }
            Action::PrevConversation if !v.conversations.is_empty() => {
                Intent::Select((v.selected + v.conversations.len() - 1) % v.conversations.len())
            }
            Action::ScrollUp => {
                v.scroll = (v.scroll + 5).min(v.messages.len().saturating_sub(1));
                Intent::Redraw
            }
            Action::ScrollDown => {
                v.scroll = v.scroll.saturating_sub(5);
                Intent::Redraw
            }
            Action::Retry => Intent::Retry,
            _ => Intent::Redraw,
        };
    }
    let byte_at = |s: &str, chars: usize| s.char_indices().nth(chars).map_or(s.len(), |(i, _)| i);
    match e.code {
        KeyCode::Esc => {
            v.alarm = None;
            if v.secret_prompt.take().is_some() {
                v.input.clear();
                v.cursor = 0;
                v.log.push("cancelled".into());
            }
            Intent::Redraw
        }
        KeyCode::Enter => {
            let line = std::mem::take(&mut v.input);
            v.cursor = 0;
            if v.secret_prompt.take().is_some() {
                return Intent::Secret(Zeroizing::new(line));
            }
            if line.trim().is_empty() {
                Intent::Redraw
            } else {
                v.scroll = 0;
                Intent::Submit(line)
            }
        }
        KeyCode::Char(c)
            if !e
                .modifiers
                .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT) =>
        {
            let at = byte_at(&v.input, v.cursor);
            v.input.insert(at, c);
            v.cursor += 1;
            if v.secret_prompt.is_none() && !v.input.starts_with('/') {
                Intent::Typed
            } else {
                Intent::Redraw
            }
        }
        KeyCode::Backspace if v.cursor > 0 => {
            let at = byte_at(&v.input, v.cursor - 1);
            v.input.remove(at);
            v.cursor -= 1;
            Intent::Redraw
        }
        KeyCode::Delete if v.cursor < v.input.chars().count() => {
            let at = byte_at(&v.input, v.cursor);
            v.input.remove(at);
            Intent::Redraw
        }
        KeyCode::Left => {
            v.cursor = v.cursor.saturating_sub(1);
            Intent::Redraw
        }
        KeyCode::Right => {
            v.cursor = (v.cursor + 1).min(v.input.chars().count());
            Intent::Redraw
        }
        KeyCode::Home => {
            v.cursor = 0;
            Intent::Redraw
        }
        KeyCode::End => {
            v.cursor = v.input.chars().count();
            Intent::Redraw
        }
        _ => Intent::Redraw,
    }
}

/// The running TUI: the view, and what it knows beyond it.
struct App {
    view: View,
    keys: KeyMap,
    typing: HashMap<ConversationId, HashMap<String, Instant>>,
    last_typing_sent: Option<Instant>,
    /// A command waiting for a secret: the line, already parsed.
    pending: Option<String>,
}

impl App {
    /// Rebuilds the view's data from the session.
    fn refresh(&mut self, session: &Session) {
        let c = session.client();
        self.view.me = c.whoami().unwrap_or_else(|| "not logged in".into());
        self.view.outbox = c.outbox_len().unwrap_or(0);
        self.view.requests = c
            .request_count()
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let me = session.me();
        let all = c.conversations().unwrap_or_default();
        self.view.conversations = all
            .iter()
            .map(|conv| {
                (
                    conv.id,
                    crate::format::conversation_name(conv, me.as_deref()),
                    if Some(conv.id) == session.current() {
                        0
                    } else {
                        session.unread(&conv.id)
                    },
                )
            })
            .collect();
        if let Some(cur) = session.current()
            && let Some(i) = all.iter().position(|conv| conv.id == cur)
        {
            self.view.selected = i;
        }
        let current = all.get(self.view.selected);
        self.view.members = current.map(|conv| conv.members.clone()).unwrap_or_default();
        self.view.messages = current
            .and_then(|conv| c.conversation(&conv.id).ok()?.messages(300).ok())
            .unwrap_or_default();
        self.refresh_typing();
    }

    /// Recomputes who is typing in the selected conversation (indicators expire after 6 s).
    fn refresh_typing(&mut self) {
        let now = Instant::now();
        let current = self
            .view
            .conversations
            .get(self.view.selected)
            .map(|(id, _, _)| *id);
        self.view.typing = current
            .and_then(|id| self.typing.get(&id))
            .map(|users| {
                users
                    .iter()
                    .filter(|(_, at)| now.duration_since(**at) < Duration::from_secs(6))
                    .map(|(u, _)| u.clone())
                    .collect()
            })
            .unwrap_or_default();
        self.view.typing.sort();
    }

    fn log(&mut self, line: impl Into<String>) {
        self.view.log.push(line.into());
        let excess = self.view.log.len().saturating_sub(200);
        self.view.log.drain(..excess);
    }

    /// Applies an SDK event.
    fn on_event(&mut self, session: &Session, e: &ClientEvent) {
        match e {
            ClientEvent::ConnectionStateChanged(s) => {
                self.view.connection = crate::format::connection(s)
            }
            ClientEvent::KeyTransparencyAlarm { device, reason } => {
                self.view.alarm = Some(format!("{device}: {reason}"));
            }
            ClientEvent::Typing { conversation, user } => {
                self.typing
                    .entry(*conversation)
                    .or_default()
                    .insert(user.clone(), Instant::now());
            }
            ClientEvent::MessageReceived(m) if !m.outgoing => {
                if let Some(users) = self.typing.get_mut(&m.conversation) {
                    users.remove(crate::format::user_of(&m.sender));
                }
                if session.current() == Some(m.conversation)
                    && let Ok(conversation) = session.client().conversation(&m.conversation)
                {
                    let _ = conversation.mark_read(&[m.id]);
                }
            }
            ClientEvent::SafetyNumberChanged { .. }
            | ClientEvent::UndecryptableMessage { .. }
            | ClientEvent::MessageRequest { .. } => {
                if let Some(line) = crate::format::event(e, |id| session.name_of(id)) {
                    self.log(line);
                }
            }
            _ => {}
        }
    }
}

/// Puts the terminal back however the TUI ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs the TUI until the quit key.
pub async fn run(mut session: Session, keys: KeyMap) -> anyhow::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    let mut app = App {
        view: View {
            connection: crate::format::connection(&session.client().connection_state()),
            keys: keys.describe(),
            ..View::default()
        },
        keys,
        typing: HashMap::new(),
        last_typing_sent: None,
        pending: None,
    };
    if session.current().is_none()
        && let Some(first) = session
            .client()
            .conversations()
            .ok()
            .and_then(|all| all.first().map(|c| c.id))
    {
        session.set_current(Some(first));
        let _ = session.mark_read(&first);
    }
    app.refresh(&session);
    let help_key = app
        .view
        .keys
        .iter()
        .find(|(_, a)| a.contains("help"))
        .map_or_else(|| "f1".to_owned(), |(k, _)| k.clone());
    if session.client().whoami().is_some() {
        app.log(format!(
            "{help_key}: help · /dm <user> starts a conversation"
        ));
    } else {
        app.log(format!(
            "{help_key}: help · /register <user> or /login <user> to start"
        ));
    }
    let mut input = EventStream::new();
    let mut events = session.client().subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Commands run beside this loop: keys and events go on while one waits.
    let mut background = crate::background::Background::default();
    loop {
        app.view.running = background.running();
        terminal.draw(|f| draw(f, &app.view))?;
        let intent = tokio::select! {
            key = input.next() => match key {
                Some(Ok(Event::Key(k))) => handle_key(&mut app.view, &app.keys, k),
                Some(Ok(_)) => Intent::Redraw, // resize and the rest: redraw
                Some(Err(e)) => return Err(e.into()),
                None => Intent::Quit,
            },
            event = events.recv() => {
                if let Ok(e) = event {
                    app.on_event(&session, &e);
                }
                app.refresh(&session);
                Intent::Redraw
            }
            report = background.next() => {
                match report {
                    crate::background::Report::Progress(p) => app.view.transfer = Some(p),
                    crate::background::Report::Finished(done) => {
                        app.view.transfer = None;
                        done.apply_to(&mut session);
                        match done.outcome {
                            Ok(out) => {
                                for l in out.lines {
                                    app.log(l);
                                }
                            }
                            Err(e) => app.log(format!("error: {e}")),
                        }
                        app.refresh(&session);
                    }
                }
                Intent::Redraw
            }
            // Only typing indicators change with time alone; everything else changes by events.
            _ = tick.tick() => {
                app.refresh_typing();
                Intent::Redraw
            }
        };
        match intent {
            Intent::Quit => return Ok(()),
            Intent::Redraw => {}
            Intent::Select(i) => {
                if let Some((id, _, _)) = app.view.conversations.get(i).cloned() {
                    session.set_current(Some(id));
                    app.view.selected = i;
                    app.view.scroll = 0;
                    let _ = session.mark_read(&id);
                }
                app.refresh(&session);
            }
            Intent::Typed => {
                let due = app
                    .last_typing_sent
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(4));
                if due && let Some(id) = session.current() {
                    app.last_typing_sent = Some(Instant::now());
                    let client = session.client().clone();
                    tokio::spawn(async move {
                        if let Ok(conversation) = client.conversation(&id) {
                            let _ = conversation.typing().await;
                        }
                    });
                }
            }
            Intent::Retry => {
                let failed = app.view.messages.iter().rev().find(|m| {
                    m.outgoing
                        && matches!(
                            m.state,
                            SendState::Failed {
                                recoverable: false,
                                ..
                            }
                        )
                });
                match (failed, session.current()) {
                    (Some(m), Some(id)) => {
                        let body = m.body.clone();
                        let again = session
                            .client()
                            .conversation(&id)
                            .and_then(|c| c.send_text(&body, m.reply_to));
                        match again {
                            Ok(new) => app.log(format!("sent again as {}", new.id().short())),
                            Err(e) => app.log(format!("error: {e}")),
                        }
                    }
                    _ => app.log("no failed message here"),
                }
                app.refresh(&session);
            }
            Intent::Submit(line) => {
                match commands::parse(&line) {
                    Ok(Some(Command::Quit)) => return Ok(()),
                    Ok(Some(Command::Register(_) | Command::Login(..))) => {
                        app.view.secret_prompt = Some("password (Esc cancels)".into());
                        app.pending = Some(line);
                        continue;
                    }
                    _ => {}
                }
                background.start(&session, line, None);
            }
            Intent::Secret(secret) => {
                if let Some(line) = app.pending.take() {
                    background.start(&session, line, Some(secret));
                }
            }
        }
    }
}
