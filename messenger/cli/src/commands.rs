//! The commands of the REPL and of the TUI's input line: parsing (pure, never panics) and
//! the help text.

/// One command, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    // Chat
    /// Plain text: send it to the open conversation.
    Say(String),
    /// `/dm <user>`: open (or create) the direct conversation with a user.
    Dm(String),
    /// `/open <name|number>`: switch to a conversation.
    Open(String),
    /// `/list`: the conversations.
    List,
    /// `/history [n]`: the last messages of the open conversation.
    History(u32),
    /// `/reply <id> <text>`.
    Reply(String, String),
    /// `/edit <id> <text>`.
    Edit(String, String),
    /// `/delete <id>`.
    Delete(String),
    /// `/cancel <id>`: take back a message still queued.
    Cancel(String),
    /// `/react <id> <emoji>`.
    React(String, String),
    /// `/unreact <id> <emoji>`.
    Unreact(String, String),
    /// `/read`: mark the open conversation read.
    Read,
    /// `/typing`: tell the others you are typing.
    Typing,
    /// `/attach <path> [caption]`.
    Attach(String, String),
    /// `/download <id> [path]`.
    Download(String, Option<String>),
    /// `/search <words>`.
    Search(String),
    /// `/requests`: invitations from people you have no conversation with.
    Requests,
    /// `/accept <id>`: accept a message request (its id as `/requests` shows it).
    Accept(String),
    /// `/decline <id>`: decline a message request.
    Decline(String),
    // Groups
    /// `/group create <name> <members...>`.
    GroupCreate(String, Vec<String>),
    /// `/invite <user>`.
    Invite(String),
    /// `/remove <user>`.
    Remove(String),
    /// `/leave`.
    Leave,
    /// `/rename <name>`.
    Rename(String),
    /// `/members`.
    Members,
    // Security
    /// `/safety <user>`.
    Safety(String),
    /// `/devices`.
    Devices,
    /// `/link <device> [label]`: register a new device of yours.
    Link(String, String),
    /// `/adopt`: bring your newly linked devices into your conversations.
    Adopt,
    /// `/revoke <device>`.
    Revoke(String),
    /// `/whoami`.
    Whoami,
    // System
    /// `/register <user>`: create an account (the password is prompted).
    Register(String),
    /// `/login <user> [device]` (the password is prompted).
    Login(String, Option<String>),
    /// `/logout`.
    Logout,
    /// `/status`: connection, outbox.
    Status,
    /// `/help [command]`.
    Help(Option<String>),
    /// `/quit`.
    Quit,
}

/// One entry of the help, grouped.
pub struct HelpEntry {
    /// The group: Chat, Groups, Security or System.
    pub group: &'static str,
    /// The command as typed.
    pub name: &'static str,
    /// Its arguments.
    pub args: &'static str,
    /// What it does.
    pub about: &'static str,
}

/// Every command, in help order.
pub const HELP: &[HelpEntry] = &[
    HelpEntry {
        group: "Chat",
        name: "/dm",
        args: "<user>",
        about: "open or start a direct conversation",
    },
    HelpEntry {
        group: "Chat",
        name: "/open",
        args: "<name|#>",
        about: "switch to a conversation",
    },
    HelpEntry {
        group: "Chat",
        name: "/list",
        args: "",
        about: "list conversations with unread counts",
    },
    HelpEntry {
        group: "Chat",
        name: "/requests",
        args: "",
        about: "list message requests (invitations from people you have not talked to)",
    },
    HelpEntry {
        group: "Chat",
        name: "/accept",
        args: "<id>",
        about: "accept a message request: it joins your conversations",
    },
    HelpEntry {
        group: "Chat",
        name: "/decline",
        args: "<id>",
        about: "decline a message request: it is deleted",
    },
    HelpEntry {
        group: "Chat",
        name: "/history",
        args: "[n]",
        about: "show the last n messages (default 20)",
    },
    HelpEntry {
        group: "Chat",
        name: "/send",
        args: "<text>",
        about: "send text (plain text without / does the same)",
    },
    HelpEntry {
        group: "Chat",
        name: "/reply",
        args: "<id> <text>",
        about: "reply to a message",
    },
    HelpEntry {
        group: "Chat",
        name: "/edit",
        args: "<id> <text>",
        about: "change one of your messages",
    },
    HelpEntry {
        group: "Chat",
        name: "/delete",
        args: "<id>",
        about: "withdraw one of your messages",
    },
    HelpEntry {
        group: "Chat",
        name: "/cancel",
        args: "<id>",
        about: "take back a message still queued",
    },
    HelpEntry {
        group: "Chat",
        name: "/react",
        args: "<id> <emoji>",
        about: "react to a message",
    },
    HelpEntry {
        group: "Chat",
        name: "/unreact",
        args: "<id> <emoji>",
        about: "take a reaction back",
    },
    HelpEntry {
        group: "Chat",
        name: "/read",
        args: "",
        about: "mark the conversation read",
    },
    HelpEntry {
        group: "Chat",
        name: "/typing",
        args: "",
        about: "show the others you are typing",
    },
    HelpEntry {
        group: "Chat",
        name: "/attach",
        args: "<path> [caption]",
        about: "send a file (encrypted, with progress)",
    },
    HelpEntry {
        group: "Chat",
        name: "/download",
        args: "<id> [path]",
        about: "save an attachment",
    },
    HelpEntry {
        group: "Chat",
        name: "/search",
        args: "<words>",
        about: "search your messages (on this device)",
    },
    HelpEntry {
        group: "Groups",
        name: "/group create",
        args: "<name> <members...>",
        about: "create a group",
    },
    HelpEntry {
        group: "Groups",
        name: "/invite",
        args: "<user>",
        about: "add a user to the group",
    },
    HelpEntry {
        group: "Groups",
        name: "/remove",
        args: "<user>",
        about: "remove a user from the group",
    },
    HelpEntry {
        group: "Groups",
        name: "/leave",
        args: "",
        about: "leave the conversation",
    },
    HelpEntry {
        group: "Groups",
        name: "/rename",
        args: "<name>",
        about: "rename the group",
    },
    HelpEntry {
        group: "Groups",
        name: "/members",
        args: "",
        about: "list the members",
    },
    HelpEntry {
        group: "Security",
        name: "/safety",
        args: "<user>",
        about: "safety numbers to compare out of band",
    },
    HelpEntry {
        group: "Security",
        name: "/devices",
        args: "",
        about: "your devices",
    },
    HelpEntry {
        group: "Security",
        name: "/link",
        args: "<device> [label]",
        about: "register a new device of yours",
    },
    HelpEntry {
        group: "Security",
        name: "/adopt",
        args: "",
        about: "add your linked devices to your conversations",
    },
    HelpEntry {
        group: "Security",
        name: "/revoke",
        args: "<device>",
        about: "revoke one of your devices",
    },
    HelpEntry {
        group: "Security",
        name: "/whoami",
        args: "",
        about: "this account and device",
    },
    HelpEntry {
        group: "System",
        name: "/register",
        args: "<user>",
        about: "create an account (password prompted)",
    },
    HelpEntry {
        group: "System",
        name: "/login",
        args: "<user> [device]",
        about: "log this device in (password prompted)",
    },
    HelpEntry {
        group: "System",
        name: "/logout",
        args: "",
        about: "end the session",
    },
    HelpEntry {
        group: "System",
        name: "/status",
        args: "",
        about: "connection state and outbox",
    },
    HelpEntry {
        group: "System",
        name: "/help",
        args: "[command]",
        about: "this help",
    },
    HelpEntry {
        group: "System",
        name: "/quit",
        args: "",
        about: "leave qpq",
    },
];

/// The command names, for completion.
pub fn names() -> impl Iterator<Item = &'static str> {
    HELP.iter().map(|h| h.name)
}

/// The help, grouped by Chat, Groups, Security, System (or one command's line).
pub fn help(topic: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(topic) = topic {
        let wanted = format!("/{}", topic.trim_start_matches('/'));
        for h in HELP
            .iter()
            .filter(|h| h.name == wanted || h.name.starts_with(&format!("{wanted} ")))
        {
            out.push_str(&format!("{} {} — {}\n", h.name, h.args, h.about));
        }
        if out.is_empty() {
            out.push_str(&format!("no command {wanted}; /help lists them all\n"));
        }
        return out;
    }
    for group in ["Chat", "Groups", "Security", "System"] {
        out.push_str(group);
        out.push('\n');
        for h in HELP.iter().filter(|h| h.group == group) {
            let usage = format!("{} {}", h.name, h.args);
            out.push_str(&format!("  {usage:<28} {}\n", h.about));
        }
    }
    out.push_str("Messages are referred to by the 6-character id shown beside them.\n");
    out
}

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn usage(name: &str) -> ParseError {
    let h = HELP.iter().find(|h| h.name == name);
    ParseError(match h {
        Some(h) => format!("usage: {} {}", h.name, h.args),
        None => format!("usage: {name}"),
    })
}

/// Splits off the first word.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// Parses one input line. Empty input is `Ok(None)`.
pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(Some(Command::Say(line.to_owned())));
    };
    // `//text` sends text that starts with a slash.
    if rest.starts_with('/') {
        return Ok(Some(Command::Say(rest.to_owned())));
    }
    let (name, args) = word(rest);
    let one = |cmd: &str| -> Result<String, ParseError> {
        let (a, more) = word(args);
        if a.is_empty() || !more.is_empty() {
            return Err(usage(cmd));
        }
        Ok(a.to_owned())
    };
    let none = |cmd: &str, c: Command| -> Result<Command, ParseError> {
        if args.is_empty() {
            Ok(c)
        } else {
            Err(usage(cmd))
        }
    };
    let id_and_text = |cmd: &str| -> Result<(String, String), ParseError> {
        let (id, text) = word(args);
        if id.is_empty() || text.is_empty() {
            return Err(usage(cmd));
        }
        Ok((id.to_owned(), text.to_owned()))
    };
    let cmd = match name {
        "send" | "s" => {
            if args.is_empty() {
                return Err(usage("/send"));
            }
            Command::Say(args.to_owned())
        }
        "dm" => Command::Dm(one("/dm")?),
        "open" | "o" => {
            if args.is_empty() {
                return Err(usage("/open"));
            }
            Command::Open(args.to_owned())
        }
        "list" | "ls" => none("/list", Command::List)?,
        "requests" => none("/requests", Command::Requests)?,
        "accept" => Command::Accept(one("/accept")?),
        "decline" => Command::Decline(one("/decline")?),
        "history" => {
            let n = if args.is_empty() {
                20
            } else {
                args.parse::<u32>()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| ParseError("usage: /history [n], n from 1 to 10000".into()))?
            };
            Command::History(n)
        }
        "reply" | "r" => {
            let (id, text) = id_and_text("/reply")?;
            Command::Reply(id, text)
        }
        "edit" => {
            let (id, text) = id_and_text("/edit")?;
            Command::Edit(id, text)
        }
        "delete" | "del" => Command::Delete(one("/delete")?),
        "cancel" => Command::Cancel(one("/cancel")?),
        "react" | "unreact" => {
            let cmd = if name == "react" {
                "/react"
            } else {
                "/unreact"
            };
            let (id, emoji) = id_and_text(cmd)?;
            if emoji.split_whitespace().count() != 1 {
                return Err(usage(cmd));
            }
            if name == "react" {
                Command::React(id, emoji)
            } else {
                Command::Unreact(id, emoji)
            }
        }
        "read" => none("/read", Command::Read)?,
        "typing" => none("/typing", Command::Typing)?,
        "attach" => {
            let (path, caption) = word(args);
            if path.is_empty() {
                return Err(usage("/attach"));
            }
            Command::Attach(path.to_owned(), caption.to_owned())
        }
        "download" => {
            let (id, path) = word(args);
            if id.is_empty() || !word(path).1.is_empty() {
                return Err(usage("/download"));
            }
            Command::Download(id.to_owned(), (!path.is_empty()).then(|| path.to_owned()))
        }
        "search" => {
            if args.is_empty() {
                return Err(usage("/search"));
            }
            Command::Search(args.to_owned())
        }
        "group" => {
            let (sub, rest) = word(args);
            let (group, members) = word(rest);
            if sub != "create" || group.is_empty() {
                return Err(usage("/group create"));
            }
            Command::GroupCreate(
                group.to_owned(),
                members.split_whitespace().map(str::to_owned).collect(),
            )
        }
        "invite" => Command::Invite(one("/invite")?),
        "remove" => Command::Remove(one("/remove")?),
        "leave" => none("/leave", Command::Leave)?,
        "rename" => {
            if args.is_empty() {
                return Err(usage("/rename"));
            }
            Command::Rename(args.to_owned())
        }
        "members" => none("/members", Command::Members)?,
        "safety" => Command::Safety(one("/safety")?),
        "devices" => none("/devices", Command::Devices)?,
        "link" => {
            let (device, label) = word(args);
            if device.is_empty() {
                return Err(usage("/link"));
            }
            Command::Link(device.to_owned(), label.to_owned())
        }
        "adopt" => none("/adopt", Command::Adopt)?,
        "revoke" => Command::Revoke(one("/revoke")?),
        "whoami" => none("/whoami", Command::Whoami)?,
        "register" => Command::Register(one("/register")?),
        "login" => {
            let (user, rest) = word(args);
            let (device, more) = word(rest);
            if user.is_empty() || !more.is_empty() {
                return Err(usage("/login"));
            }
            Command::Login(
                user.to_owned(),
                (!device.is_empty()).then(|| device.to_owned()),
            )
        }
        "logout" => none("/logout", Command::Logout)?,
        "status" => none("/status", Command::Status)?,
        "help" | "h" | "?" => Command::Help((!args.is_empty()).then(|| args.to_owned())),
        "quit" | "q" | "exit" => none("/quit", Command::Quit)?,
        other => {
            return Err(ParseError(format!(
                "unknown command /{other}; /help lists them"
            )));
        }
    };
    Ok(Some(cmd))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn commands_parse_with_their_arguments() {
        let p = |s: &str| parse(s).unwrap().unwrap();
        assert_eq!(p("hello there"), Command::Say("hello there".into()));
        assert_eq!(p("//not a command"), Command::Say("/not a command".into()));
        assert_eq!(p("/dm bob"), Command::Dm("bob".into()));
        // Users of other servers are named with their server's domain.
        assert_eq!(p("/dm bob@b.example"), Command::Dm("bob@b.example".into()));
        assert_eq!(
            p("/group create team alice bob"),
            Command::GroupCreate("team".into(), vec!["alice".into(), "bob".into()])
        );
        assert_eq!(
            p("/group create team bob@b.example carol"),
            Command::GroupCreate("team".into(), vec!["bob@b.example".into(), "carol".into()])
        );
        assert_eq!(
            p("/reply a1b2c3 sure, why not"),
            Command::Reply("a1b2c3".into(), "sure, why not".into())
        );
        assert_eq!(
            p("/react a1b2c3 👍"),
            Command::React("a1b2c3".into(), "👍".into())
        );
        assert_eq!(
            p("/attach /tmp/x.png the view"),
            Command::Attach("/tmp/x.png".into(), "the view".into())
        );
        assert_eq!(
            p("/download a1b2c3"),
            Command::Download("a1b2c3".into(), None)
        );
        assert_eq!(p("/login alice"), Command::Login("alice".into(), None));
        assert_eq!(
            p("/login alice phone"),
            Command::Login("alice".into(), Some("phone".into()))
        );
        assert_eq!(p("/history"), Command::History(20));
        assert_eq!(p("/history 5"), Command::History(5));
        assert_eq!(p("/help dm"), Command::Help(Some("dm".into())));
        assert_eq!(parse("   ").unwrap(), None);
    }

    #[test]
    fn wrong_arguments_say_the_usage() {
        for (line, want) in [
            ("/dm", "usage: /dm <user>"),
            ("/dm a b", "usage: /dm <user>"),
            ("/reply abc", "usage: /reply <id> <text>"),
            ("/react abc two words", "usage: /react <id> <emoji>"),
            ("/group make x", "usage: /group create <name> <members...>"),
            ("/history 0", "n from 1 to 10000"),
            ("/quit now", "usage: /quit"),
            ("/frobnicate", "unknown command /frobnicate"),
        ] {
            let err = parse(line).unwrap_err().0;
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn help_is_grouped_and_covers_every_command() {
        let h = help(None);
        let groups: Vec<usize> = ["Chat\n", "Groups\n", "Security\n", "System\n"]
            .iter()
            .map(|g| h.find(g).unwrap())
            .collect();
        assert!(groups.windows(2).all(|w| w[0] < w[1]));
        for entry in HELP {
            assert!(h.contains(entry.name));
            // Every listed command parses (with placeholder arguments where it needs some).
            let args = entry
                .args
                .split_whitespace()
                .filter(|a| a.starts_with('<'))
                .map(|_| "x")
                .collect::<Vec<_>>()
                .join(" ");
            let line = format!("{} {args}", entry.name);
            assert!(parse(&line).is_ok(), "{line}");
        }
        assert!(help(Some("react")).contains("/react <id> <emoji>"));
        assert!(help(Some("nope")).contains("no command /nope"));
    }

    proptest::proptest! {
        #[test]
        fn any_input_parses_or_is_an_error_never_a_panic(line in ".{0,200}") {
            let _ = parse(&line);
        }

        #[test]
        fn plain_text_is_sent_as_typed(text in "[^/\\s][^\\n]{0,100}") {
            let parsed = parse(&text).unwrap();
            proptest::prop_assert_eq!(parsed, Some(Command::Say(text.trim().to_owned())));
        }
    }
}
