//! `qpq` / `qpq repl`: a line editor with history and completion; events are printed above
//! the line being typed without breaking it.

use std::sync::{Arc, Mutex};

use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::{Context, ExternalPrinter as _};
use tokio::sync::{mpsc, oneshot};

use qpq_sdk::ClientEvent;

use crate::session::Session;

/// What completion offers after the command: user and conversation names.
#[derive(Default, Clone)]
pub struct Names(Arc<Mutex<Vec<String>>>);

impl Names {
    /// Replaces the names from the session's conversations.
    pub fn refresh(&self, session: &Session) {
        let me = session.me();
        let mut names: Vec<String> = Vec::new();
        if let Ok(all) = session.client().conversations() {
            for c in &all {
                names.extend(
                    c.members
                        .iter()
                        .filter(|m| Some(*m) != me.as_ref())
                        .cloned(),
                );
                names.push(crate::format::conversation_name(c, me.as_deref()));
            }
        }
        names.sort();
        names.dedup();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = names;
    }

    fn get(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Completes the word before `pos`: a command name at the start of the line, otherwise a
/// user or conversation name. Returns where the word starts and the candidates.
pub fn complete(line: &str, pos: usize, names: &[String]) -> (usize, Vec<String>) {
    let pos = pos.min(line.len());
    let Some(before) = line.get(..pos) else {
        return (pos, Vec::new());
    };
    // After the last whitespace character (which may be several bytes long).
    let start = before
        .char_indices()
        .rfind(|(_, c)| c.is_whitespace())
        .map_or(0, |(i, c)| i + c.len_utf8());
    let word = &before[start..];
    if start == 0 && word.starts_with('/') {
        let mut out: Vec<String> = crate::commands::names()
            .map(|n| n.split(' ').next().unwrap_or(n).to_owned())
            .filter(|n| n.starts_with(word))
            .collect();
        out.dedup();
        return (0, out);
    }
    if before.starts_with("/group ") && start == "/group ".len() {
        return (
            start,
            ["create"]
                .iter()
                .filter(|c| c.starts_with(word))
                .map(|c| (*c).to_owned())
                .collect(),
        );
    }
    (
        start,
        names
            .iter()
            .filter(|n| n.starts_with(word) && !n.contains(char::is_whitespace))
            .cloned()
            .collect(),
    )
}

struct Helper {
    names: Names,
}

impl Completer for Helper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(complete(line, pos, &self.names.get()))
    }
}

impl rustyline::hint::Hinter for Helper {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for Helper {}
impl rustyline::validate::Validator for Helper {}
impl rustyline::Helper for Helper {}

/// A line typed, and where to say that it was handled (with the next prompt).
type Typed = (Result<String, ReadlineError>, oneshot::Sender<String>);

/// Runs the REPL until `/quit` or end of input. When standard input is not a terminal
/// (a script, a pipe) it reads plain lines and prints events as they come.
pub async fn run(session: Session, history: std::path::PathBuf) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    if std::io::stdin().is_terminal() {
        interactive(session, history).await
    } else {
        plain(session).await
    }
}

/// Prints every event `client` reports, with conversation names, through `print`.
fn spawn_event_printer(
    client: qpq_sdk::QpqClient,
    mut print: impl FnMut(String) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let mut events = client.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(e) => {
                    let convs = client.conversations().unwrap_or_default();
                    let me = client
                        .whoami()
                        .map(|w| crate::format::user_of(&w).to_owned());
                    let name = |id: &qpq_sdk::ConversationId| {
                        convs.iter().find(|c| c.id == *id).map_or_else(
                            || id.to_string(),
                            |c| crate::format::conversation_name(c, me.as_deref()),
                        )
                    };
                    // This user's own receipts and reactions need no announcement.
                    let own = match &e {
                        ClientEvent::ReceiptChanged { user, .. }
                        | ClientEvent::ReactionChanged { user, .. } => me.as_ref() == Some(user),
                        _ => false,
                    };
                    if !own && let Some(line) = crate::format::event(&e, name) {
                        print(line);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    print(format!("({n} events skipped; /history shows the state)"));
                }
                Err(_) => return,
            }
        }
    })
}

/// Lines from a pipe: no editing, no prompt.
async fn plain(mut session: Session) -> anyhow::Result<()> {
    let printer = spawn_event_printer(session.client().clone(), |line| {
        println!("{}", crate::format::printable(&line));
    });
    loop {
        // Standard input is shared with password prompts, which read the next line too.
        let mut line = String::new();
        if tokio::task::block_in_place(|| std::io::stdin().read_line(&mut line))? == 0 {
            break;
        }
        let mut ask = |label: &str| crate::passphrase::prompt_hidden(label);
        let mut progress = |_: qpq_sdk::Progress| {};
        match session.run_line(&line, &mut ask, &mut progress).await {
            Ok(out) => {
                for l in &out.lines {
                    println!("{}", crate::format::printable(l));
                }
                if out.quit {
                    break;
                }
            }
            Err(e) => println!("error: {}", crate::format::printable(&e.to_string())),
        }
    }
    printer.abort();
    Ok(())
}

/// What the history file keeps of a typed line: commands only. Message text, captions,
/// edits and searches never reach it (it sits beside the encrypted store, in plain text):
/// of a command that carries text only the command's name is kept, and plain text (a
/// message) is not kept at all.
fn history_entry(line: &str) -> Option<String> {
    let line = line.trim();
    // `//text` sends "/text" as a message.
    if line.starts_with("//") {
        return None;
    }
    let rest = line.strip_prefix('/')?;
    let name = rest.split_whitespace().next().unwrap_or_default();
    const CARRY_TEXT: &[&str] = &[
        "send", "s", "reply", "r", "edit", "attach", "search", "rename", "group",
    ];
    if CARRY_TEXT.contains(&name) {
        Some(format!("/{name} "))
    } else {
        Some(line.to_owned())
    }
}

async fn interactive(mut session: Session, history: std::path::PathBuf) -> anyhow::Result<()> {
    let names = Names::default();
    names.refresh(&session);
    let mut editor: rustyline::Editor<Helper, rustyline::history::FileHistory> =
        rustyline::Editor::new()?;
    editor.set_helper(Some(Helper {
        names: names.clone(),
    }));
    let _ = editor.load_history(&history);
    let mut printer = editor.create_external_printer()?;

    // Events are printed by rustyline above the line being edited.
    let printer_task = spawn_event_printer(session.client().clone(), move |line| {
        let _ = printer.print(format!("{}\n", crate::format::printable(&line)));
    });

    // The editor blocks: it lives on its own thread and hands lines over one at a time.
    let (lines_tx, mut lines_rx) = mpsc::channel::<Typed>(1);
    let first_prompt = prompt(&session);
    let editor_thread = std::thread::spawn(move || {
        let mut prompt_text = first_prompt;
        loop {
            let line = editor.readline(&prompt_text);
            if let Ok(l) = &line
                && let Some(entry) = history_entry(l)
            {
                let _ = editor.add_history_entry(entry);
            }
            let stop = line.is_err();
            let (done_tx, done_rx) = oneshot::channel();
            if lines_tx.blocking_send((line, done_tx)).is_err() {
                break;
            }
            match done_rx.blocking_recv() {
                Ok(next) if !stop => prompt_text = next,
                _ => break,
            }
        }
        let _ = editor.save_history(&history);
    });

    println!("qpq — /help lists the commands, Tab completes, /quit leaves.");
    while let Some((line, done)) = lines_rx.recv().await {
        let line = match line {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                let _ = done.send(prompt(&session));
                continue;
            }
            Err(_) => {
                let _ = done.send(String::new());
                break;
            }
        };
        let mut ask = |label: &str| crate::passphrase::prompt_hidden(label);
        let mut bar = crate::progress::Bar::new();
        let mut progress = |p: qpq_sdk::Progress| bar.update(p);
        match session.run_line(&line, &mut ask, &mut progress).await {
            Ok(out) => {
                for l in &out.lines {
                    println!("{}", crate::format::printable(l));
                }
                if out.quit {
                    let _ = done.send(String::new());
                    break;
                }
            }
            Err(e) => println!("error: {}", crate::format::printable(&e.to_string())),
        }
        names.refresh(&session);
        let _ = done.send(prompt(&session));
    }
    drop(lines_rx);
    printer_task.abort();
    let _ = editor_thread.join();
    Ok(())
}

fn prompt(session: &Session) -> String {
    match session.current() {
        Some(id) => format!("#{}> ", session.name_of(&id)),
        None => "> ".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn history_keeps_commands_and_never_message_text() {
        assert_eq!(history_entry("meet me at the docks"), None);
        assert_eq!(history_entry("  "), None);
        assert_eq!(
            history_entry("/reply 0a1b secret plan"),
            Some("/reply ".into())
        );
        assert_eq!(
            history_entry("/send the code is 1234"),
            Some("/send ".into())
        );
        assert_eq!(
            history_entry("/search lunch docks"),
            Some("/search ".into())
        );
        assert_eq!(history_entry("/dm bob"), Some("/dm bob".into()));
        assert_eq!(history_entry("/open 2"), Some("/open 2".into()));
        assert_eq!(history_entry("//secret text"), None);
    }

    #[test]
    fn commands_then_names_complete() {
        let names = vec![
            "alice".to_string(),
            "albert".to_string(),
            "team".to_string(),
        ];
        assert_eq!(
            complete("/re", 3, &names),
            (
                0,
                [
                    "/requests",
                    "/reply",
                    "/react",
                    "/read",
                    "/remove",
                    "/rename",
                    "/revoke",
                    "/register"
                ]
                .map(String::from)
                .to_vec()
            )
        );
        assert_eq!(
            complete("/dm al", 6, &names),
            (4, vec!["alice".into(), "albert".into()])
        );
        assert_eq!(complete("/group cr", 9, &names), (7, vec!["create".into()]));
        assert_eq!(
            complete("/group create t", 15, &names),
            (14, vec!["team".into()])
        );
        assert_eq!(
            complete("", 0, &names).1,
            names,
            "an empty line offers names"
        );
        assert_eq!(
            complete("/dm al", 99, &names).0,
            4,
            "a cursor past the end is clamped"
        );
    }

    proptest::proptest! {
        #[test]
        fn completion_never_panics(line in ".{0,40}", pos in 0usize..60) {
            let _ = complete(&line, pos, &["x".to_string()]);
        }
    }
}
