//! A signed-in terminal session: runs [`Command`]s against one [`QpqClient`] and remembers the
//! open conversation. Shared by the REPL and the TUI; it has no messaging logic of its own.

use std::path::PathBuf;

use qpq_sdk::{Conversation, ConversationId, Message, Progress, QpqClient, SdkError};
use zeroize::Zeroizing;

use crate::commands::{self, Command};
use crate::format;

/// What a command produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Lines to show.
    pub lines: Vec<String>,
    /// The user asked to quit.
    pub quit: bool,
}

impl Output {
    fn line(line: impl Into<String>) -> Self {
        Self {
            lines: vec![line.into()],
            quit: false,
        }
    }

    fn lines(lines: Vec<String>) -> Self {
        Self { lines, quit: false }
    }
}

/// Why a command failed (shown to the user; the session goes on).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The line did not parse.
    #[error("{0}")]
    Parse(#[from] commands::ParseError),
    /// The SDK refused.
    #[error("{0}")]
    Sdk(#[from] SdkError),
    /// Something else, in words.
    #[error("{0}")]
    Other(String),
}

/// Asks the user for a secret (the account password): the REPL and the TUI prompt in their
/// own way, tests answer directly.
pub type Ask<'a> = &'a mut (dyn FnMut(&str) -> std::io::Result<Zeroizing<String>> + Send);

/// One account's terminal session. Cheap to clone (the client is shared): the TUI runs
/// each command on a copy.
#[derive(Debug, Clone)]
pub struct Session {
    client: QpqClient,
    device: String,
    current: Option<ConversationId>,
}

impl Session {
    /// A session over `client`; `device` is the device name `/login` uses by default.
    pub fn new(client: QpqClient, device: impl Into<String>) -> Self {
        Self {
            client,
            device: device.into(),
            current: None,
        }
    }

    /// The device name `/login` and `/register` use by default.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Sets the device name `/login` and `/register` use by default.
    pub fn set_device(&mut self, device: String) {
        self.device = device;
    }

    /// The client.
    pub fn client(&self) -> &QpqClient {
        &self.client
    }

    /// The open conversation.
    pub fn current(&self) -> Option<ConversationId> {
        self.current
    }

    /// Opens a conversation.
    pub fn set_current(&mut self, id: Option<ConversationId>) {
        self.current = id;
    }

    /// This user's name, once logged in.
    pub fn me(&self) -> Option<String> {
        self.client.whoami().map(|w| format::user_of(&w).to_owned())
    }

    /// A conversation's display name.
    pub fn name_of(&self, id: &ConversationId) -> String {
        match self.client.conversations() {
            Ok(all) => all.iter().find(|c| c.id == *id).map_or_else(
                || id.to_string(),
                |c| format::conversation_name(c, self.me().as_deref()),
            ),
            Err(_) => id.to_string(),
        }
    }

    /// Incoming messages of a conversation this user has not read.
    pub fn unread(&self, id: &ConversationId) -> usize {
        self.client
            .conversation(id)
            .and_then(|c| c.unread())
            .map_or(0, |unread| unread.len())
    }

    /// Marks what is unread in a conversation as read (receipts go to the senders).
    pub fn mark_read(&self, id: &ConversationId) -> Result<(), SdkError> {
        self.client.conversation(id)?.mark_all_read().map(|_| ())
    }

    /// The open conversation's handle.
    fn here(&self) -> Result<qpq_sdk::ConversationHandle, CommandError> {
        Ok(self.client.conversation(&self.open()?)?)
    }

    fn open(&self) -> Result<ConversationId, CommandError> {
        self.current.ok_or_else(|| {
            CommandError::Other("no conversation open: /dm <user>, /open <name> or /list".into())
        })
    }

    /// A message request, with its inviter, by the id `shown_by` lists (never by position:
    /// a request that arrives meanwhile must not shift which one is answered).
    pub fn find_request(
        &self,
        query: &str,
        shown_by: &str,
    ) -> Result<(Conversation, String), CommandError> {
        let query = query.trim().to_ascii_lowercase();
        // The whole id as shown: a short or numeric prefix could name whichever request an
        // inviter chose an id for.
        if query.len() < 8 || !query.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CommandError::Other(format!(
                "{query:?} is no request id: give the 8-character id {shown_by} shows"
            )));
        }
        let mut matching: Vec<(Conversation, String)> = self
            .client
            .requests()?
            .into_iter()
            .filter(|(c, _)| c.id.to_string().starts_with(&query))
            .collect();
        match matching.len() {
            1 => Ok(matching.remove(0)),
            0 => Err(CommandError::Other(format!(
                "no message request {query}: see {shown_by}"
            ))),
            _ => Err(CommandError::Other(format!(
                "{query} names several requests: give more of the id"
            ))),
        }
    }

    /// Finds a conversation by number (as `/list` shows), name or id.
    pub fn find_conversation(&self, query: &str) -> Result<Conversation, CommandError> {
        let all = self.client.conversations()?;
        if let Ok(n) = query.trim_start_matches('#').parse::<usize>()
            && (1..=all.len()).contains(&n)
        {
            return Ok(all[n - 1].clone());
        }
        let me = self.me();
        let matches: Vec<&Conversation> = all
            .iter()
            .filter(|c| {
                format::conversation_name(c, me.as_deref()) == query
                    || c.name == query
                    || c.id.to_string() == query
            })
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(CommandError::Other(format!(
                "no conversation {query:?}; /list shows them"
            ))),
            _ => Err(CommandError::Other(format!(
                "{query:?} names several conversations; use its number from /list"
            ))),
        }
    }

    /// Finds a message by its short id: in the open conversation first, then anywhere.
    pub fn find_message(&self, short: &str) -> Result<Message, CommandError> {
        let short = short.to_ascii_lowercase();
        let mut scopes: Vec<ConversationId> = self.current.into_iter().collect();
        scopes.extend(
            self.client
                .conversations()?
                .into_iter()
                .map(|c| c.id)
                .filter(|id| Some(*id) != self.current),
        );
        for scope in scopes {
            let found: Vec<Message> = self
                .client
                .conversation(&scope)?
                .messages(2000)?
                .into_iter()
                .filter(|m| m.id.short() == short)
                .collect();
            match found.len() {
                0 => {}
                1 => {
                    if let Some(m) = found.into_iter().next() {
                        return Ok(m);
                    }
                }
                _ => {
                    return Err(CommandError::Other(format!(
                        "{short} matches several messages in one conversation"
                    )));
                }
            }
        }
        Err(CommandError::Other(format!("no message {short}")))
    }

    fn history(&self, id: &ConversationId, n: u32) -> Result<Vec<String>, CommandError> {
        let mut lines = vec![format!("── #{} ──", self.name_of(id))];
        lines.extend(
            self.client
                .conversation(id)?
                .messages(n)?
                .iter()
                .map(format::message),
        );
        Ok(lines)
    }

    /// Runs one input line. `ask` prompts for passwords; `progress` sees attachment
    /// transfers.
    pub async fn run_line(
        &mut self,
        line: &str,
        ask: Ask<'_>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Output, CommandError> {
        match commands::parse(line)? {
            None => Ok(Output::default()),
            Some(cmd) => self.run(cmd, ask, progress).await,
        }
    }

    /// Runs one command.
    pub async fn run(
        &mut self,
        cmd: Command,
        ask: Ask<'_>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Output, CommandError> {
        let c = &self.client;
        Ok(match cmd {
            Command::Say(text) => {
                let id = self.here()?.send_text(&text, None)?.id();
                Output::line(format!("{} queued", id.short()))
            }
            Command::Dm(user) => {
                let me = self.me();
                let existing = c.conversations()?.into_iter().find(|conv| {
                    conv.kind == qpq_sdk::ConversationKind::Direct
                        && conv.members.contains(&user)
                        && me.as_ref().is_some_and(|m| conv.members.contains(m))
                });
                let conv = match existing {
                    Some(conv) => conv,
                    None => c.create_dm(&user).await.map_err(|e| {
                        CommandError::Other(format!("cannot start a conversation with {user}: {e}"))
                    })?,
                };
                self.current = Some(conv.id);
                let lines = self.history(&conv.id, 20)?;
                self.mark_read(&conv.id)?;
                Output::lines(lines)
            }
            Command::Open(query) => {
                let conv = self.find_conversation(&query)?;
                self.current = Some(conv.id);
                let lines = self.history(&conv.id, 20)?;
                self.mark_read(&conv.id)?;
                Output::lines(lines)
            }
            Command::List => {
                let me = self.me();
                let all = c.conversations()?;
                if all.is_empty() {
                    Output::line(
                        "no conversations yet: /dm <user> or /group create <name> <members...>",
                    )
                } else {
                    Output::lines(
                        all.iter()
                            .enumerate()
                            .map(|(i, conv)| {
                                let unread = self.unread(&conv.id);
                                format!(
                                    "{}{:>2}. {} ({}){}",
                                    if Some(conv.id) == self.current {
                                        "*"
                                    } else {
                                        " "
                                    },
                                    i + 1,
                                    format::conversation_name(conv, me.as_deref()),
                                    conv.members.join(", "),
                                    if unread > 0 {
                                        format!(" — {unread} unread")
                                    } else {
                                        String::new()
                                    }
                                )
                            })
                            .collect(),
                    )
                }
            }
            Command::Requests => {
                let requests = c.requests()?;
                if requests.is_empty() {
                    Output::line("no message requests")
                } else {
                    Output::lines(
                        requests
                            .iter()
                            .map(|(conv, inviter)| {
                                let kind = match conv.kind {
                                    qpq_sdk::ConversationKind::Group => {
                                        format!("group \"{}\"", conv.name)
                                    }
                                    _ => "a direct conversation".to_owned(),
                                };
                                let id = request_id(&conv.id);
                                format!(
                                    "{id} {inviter} invites you to {kind} ({}) — /accept {id} or /decline {id}",
                                    conv.members.join(", "),
                                )
                            })
                            .collect(),
                    )
                }
            }
            Command::Accept(which) => {
                let (conv, _) = self.find_request(&which, "/requests")?;
                let conv = c.conversation(&conv.id)?.accept().await?;
                self.current = Some(conv.id);
                let mut lines = vec![format!(
                    "accepted: #{} is open",
                    format::conversation_name(&conv, self.me().as_deref())
                )];
                lines.extend(self.history(&conv.id, 20)?);
                self.mark_read(&conv.id)?;
                Output::lines(lines)
            }
            Command::Decline(which) => {
                let (conv, _) = self.find_request(&which, "/requests")?;
                c.conversation(&conv.id)?.decline().await?;
                Output::line("declined; the invitation and what came with it are deleted")
            }
            Command::History(n) => {
                let id = self.open()?;
                let lines = self.history(&id, n)?;
                self.mark_read(&id)?;
                Output::lines(lines)
            }
            Command::Reply(short, text) => {
                let target = self.find_message(&short)?;
                let id = c
                    .conversation(&target.conversation)?
                    .send_text(&text, Some(target.id))?
                    .id();
                Output::line(format!("{} queued (reply to {short})", id.short()))
            }
            Command::Edit(short, text) => {
                let target = self.find_message(&short)?;
                c.edit(&target.id, &text)?;
                Output::line(format!("{short} edited"))
            }
            Command::Delete(short) => {
                let target = self.find_message(&short)?;
                c.delete(&target.id)?;
                Output::line(format!("{short} deleted"))
            }
            Command::Cancel(short) => {
                let target = self.find_message(&short)?;
                c.cancel(&target.id)?;
                Output::line(format!("{short} cancelled"))
            }
            Command::React(short, emoji) => {
                let target = self.find_message(&short)?;
                c.react(&target.id, &emoji, false)?;
                Output::line(format!("reacted {emoji} to {short}"))
            }
            Command::Unreact(short, emoji) => {
                let target = self.find_message(&short)?;
                c.react(&target.id, &emoji, true)?;
                Output::line(format!("took back {emoji} on {short}"))
            }
            Command::Read => {
                let id = self.open()?;
                self.mark_read(&id)?;
                Output::line("marked read")
            }
            Command::Typing => {
                self.here()?.typing().await?;
                Output::default()
            }
            Command::Attach(path, caption) => {
                let data = std::fs::read(&path)
                    .map_err(|e| CommandError::Other(format!("cannot read {path}: {e}")))?;
                let id = self.open()?;
                let name = PathBuf::from(&path)
                    .file_name()
                    .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
                let mid = c
                    .conversation(&id)?
                    .send_attachment(&name, "", &caption, &data, &mut *progress)
                    .await?
                    .id();
                Output::line(format!(
                    "{} {name} uploaded ({} bytes), message queued",
                    mid.short(),
                    data.len()
                ))
            }
            Command::Download(short, path) => {
                let target = self.find_message(&short)?;
                let info = target
                    .attachment
                    .clone()
                    .ok_or_else(|| CommandError::Other(format!("{short} has no attachment")))?;
                let bytes = c.download_attachment(&target.id, &mut *progress).await?;
                let path = path.unwrap_or_else(|| qpq_sdk::attachment_file_name(&info.name));
                // Created exclusively: an existing file, or a link planted where it would go,
                // is never written through.
                qpq_core::files::create_new_private(std::path::Path::new(&path), &bytes).map_err(
                    |e| match e.kind() {
                        std::io::ErrorKind::AlreadyExists => CommandError::Other(format!(
                            "{path} exists; give another path: /download {short} <path>"
                        )),
                        _ => CommandError::Other(format!("cannot write {path}: {e}")),
                    },
                )?;
                Output::line(format!("saved {path} ({} bytes, verified)", bytes.len()))
            }
            Command::Search(words) => {
                let found = c.search(&words)?;
                if found.is_empty() {
                    Output::line(format!("nothing matches {words:?}"))
                } else {
                    Output::lines(
                        found
                            .iter()
                            .map(|m| {
                                format!("#{} {}", self.name_of(&m.conversation), format::message(m))
                            })
                            .collect(),
                    )
                }
            }
            Command::GroupCreate(name, members) => {
                let refs: Vec<&str> = members.iter().map(String::as_str).collect();
                let conv = c.create_group(&name, &refs).await?;
                self.current = Some(conv.id);
                Output::line(format!(
                    "created #{} with {}",
                    conv.name,
                    conv.members.join(", ")
                ))
            }
            Command::Invite(user) => {
                self.here()?.invite(&user).await?;
                Output::line(format!("invited {user}"))
            }
            Command::Remove(user) => {
                self.here()?.remove(&user).await?;
                Output::line(format!("removed {user}"))
            }
            Command::Leave => {
                let id = self.open()?;
                let name = self.name_of(&id);
                c.conversation(&id)?.leave().await?;
                self.current = None;
                Output::line(format!("left #{name}"))
            }
            Command::Rename(name) => {
                self.here()?.rename(&name)?;
                Output::line(format!("renamed to #{name}"))
            }
            Command::Members => {
                let id = self.open()?;
                let conv = c
                    .conversations()?
                    .into_iter()
                    .find(|conv| conv.id == id)
                    .ok_or_else(|| CommandError::Other("the conversation is gone".into()))?;
                Output::line(conv.members.join(", "))
            }
            Command::Safety(user) => {
                let numbers = c.safety_numbers(&user).await?;
                if numbers.is_empty() {
                    Output::line(format!("{user} has no device with published keys"))
                } else {
                    let mut lines = vec![format!(
                        "safety numbers with {user} (compare them with {user} in person or by call):"
                    )];
                    lines.extend(numbers.iter().map(|(d, n)| format!("  {d}: {n}")));
                    Output::lines(lines)
                }
            }
            Command::Devices => Output::lines(
                c.devices()
                    .await?
                    .iter()
                    .map(|d| {
                        format!(
                            "{} {}{}{}",
                            d.id,
                            d.label,
                            if d.this_device { " (this device)" } else { "" },
                            if d.has_keys {
                                ""
                            } else {
                                " (not logged in yet)"
                            }
                        )
                    })
                    .collect(),
            ),
            Command::Link(device, label) => {
                c.link_device(&device, &label).await?;
                Output::line(format!(
                    "registered {device}: log it in with `/login {} {device}` on that device, then run /adopt here",
                    self.me().unwrap_or_default()
                ))
            }
            Command::Adopt => {
                let n = c.adopt_devices().await?;
                Output::line(format!("added your new devices to {n} conversation(s)"))
            }
            Command::Revoke(device) => {
                c.revoke_device(&device).await?;
                Output::line(format!("revoked {device}"))
            }
            Command::Whoami => Output::line(
                c.whoami()
                    .unwrap_or_else(|| "not logged in: /register <user> or /login <user>".into()),
            ),
            Command::Register(user) => {
                let password = crate::passphrase::new_password(&user, ask)
                    .map_err(|e| CommandError::Other(e.to_string()))?;
                c.register(&user, &password).await?;
                c.login(&user, &self.device, &password).await?;
                Output::line(format!(
                    "registered and logged in as {user}/{}",
                    self.device
                ))
            }
            Command::Login(user, device) => {
                let device = device.unwrap_or_else(|| self.device.clone());
                let password = ask(&format!("password for {user}: "))
                    .map_err(|e| CommandError::Other(e.to_string()))?;
                c.login(&user, &device, &password).await?;
                self.device = device;
                Output::line(format!("logged in as {user}/{}", self.device))
            }
            Command::Logout => {
                c.logout().await?;
                Output::line("logged out")
            }
            Command::Status => Output::line(format!(
                "{} · outbox: {} waiting",
                c.whoami().unwrap_or_else(|| "not logged in".into()),
                c.outbox_len()?
            )),
            Command::Help(topic) => Output::lines(
                commands::help(topic.as_deref())
                    .lines()
                    .map(str::to_owned)
                    .collect(),
            ),
            Command::Quit => Output {
                lines: Vec::new(),
                quit: true,
            },
        })
    }
}

/// How `/requests` and `qpq read` name a message request: the first 8 hex digits of its
/// conversation id.
pub fn request_id(id: &qpq_sdk::ConversationId) -> String {
    id.to_string().chars().take(8).collect()
}
