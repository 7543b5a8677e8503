//! Where the store passphrase comes from, in order: the `--passphrase` flag, an environment
//! variable, a command's output, a prompt.

use std::io::Write as _;

use zeroize::Zeroizing;

use crate::config::Profile;

/// The default environment variable holding the store passphrase.
pub const DEFAULT_ENV: &str = "QPQ_PASSPHRASE";

/// Which source gave the passphrase (shown to the user, never the passphrase itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The command-line flag.
    Flag,
    /// An environment variable.
    Env(String),
    /// A command's output.
    Command(String),
    /// Typed at a prompt.
    Prompt,
}

/// Why no passphrase could be had.
#[derive(Debug, thiserror::Error)]
pub enum PassphraseError {
    /// The passphrase command failed.
    #[error("passphrase command `{command}` failed: {reason}")]
    Command {
        /// The command.
        command: String,
        /// What went wrong (its exit status and standard error).
        reason: String,
    },
    /// The prompt could not be shown or read.
    #[error("cannot prompt for the passphrase: {0}")]
    Prompt(std::io::Error),
    /// Every source gave an empty passphrase.
    #[error("the store passphrase is empty")]
    Empty,
}

/// Resolves the passphrase. `env` reads an environment variable and `prompt` asks the user;
/// both are parameters so the order can be tested without a terminal.
pub fn resolve(
    flag: Option<&str>,
    profile: &Profile,
    env: impl Fn(&str) -> Option<String>,
    prompt: impl FnOnce(&str) -> std::io::Result<Zeroizing<String>>,
) -> Result<(Zeroizing<String>, Source), PassphraseError> {
    if let Some(p) = flag {
        return non_empty(Zeroizing::new(p.to_owned()), Source::Flag);
    }
    let var = profile.passphrase_env.as_deref().unwrap_or(DEFAULT_ENV);
    if let Some(p) = env(var) {
        return non_empty(Zeroizing::new(p), Source::Env(var.to_owned()));
    }
    if let Some(command) = &profile.passphrase_command {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| PassphraseError::Command {
                command: command.clone(),
                reason: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(PassphraseError::Command {
                command: command.clone(),
                reason: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        let stdout = Zeroizing::new(out.stdout);
        let text = String::from_utf8_lossy(&stdout);
        let first = Zeroizing::new(text.lines().next().unwrap_or_default().to_owned());
        return non_empty(first, Source::Command(command.clone()));
    }
    let typed = prompt("store passphrase: ").map_err(PassphraseError::Prompt)?;
    non_empty(typed, Source::Prompt)
}

fn non_empty(
    p: Zeroizing<String>,
    source: Source,
) -> Result<(Zeroizing<String>, Source), PassphraseError> {
    if p.is_empty() {
        Err(PassphraseError::Empty)
    } else {
        Ok((p, source))
    }
}

/// The longest secret the prompt takes, in bytes; typing beyond it is ignored.
const MAX_SECRET_BYTES: usize = 1024;

/// Reads a line from the terminal without echoing it (from standard input as it is when
/// that is not a terminal, so scripts can pipe secrets in).
pub fn prompt_hidden(label: &str) -> std::io::Result<Zeroizing<String>> {
    use std::io::IsTerminal as _;

    use crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers, read};
    let mut out = std::io::stderr();
    write!(out, "{label}")?;
    out.flush()?;
    if !std::io::stdin().is_terminal() {
        let mut line = Zeroizing::new(String::with_capacity(MAX_SECRET_BYTES));
        std::io::stdin().read_line(&mut line)?;
        let trimmed = Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned());
        writeln!(out)?;
        return Ok(trimmed);
    }
    crossterm::terminal::enable_raw_mode()?;
    // Allocated once, never grown: a growing buffer would leave copies of the secret behind
    // in memory that zeroizing the final one cannot reach.
    let mut line = Zeroizing::new(String::with_capacity(MAX_SECRET_BYTES));
    let result = loop {
        match read() {
            Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => match k.code {
                KeyCode::Enter => break Ok(()),
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                    break Err(std::io::Error::new(
                        std::io::ErrorKind::Interrupted,
                        "cancelled",
                    ));
                }
                KeyCode::Char(c) if line.len() + c.len_utf8() <= MAX_SECRET_BYTES => line.push(c),
                KeyCode::Char(_) => {}
                KeyCode::Backspace => {
                    line.pop();
                }
                _ => {}
            },
            Ok(_) => {}
            Err(e) => break Err(e),
        }
    };
    crossterm::terminal::disable_raw_mode()?;
    writeln!(out)?;
    result.map(|()| line)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn no_prompt(_: &str) -> std::io::Result<Zeroizing<String>> {
        panic!("prompted although another source was configured")
    }

    #[test]
    fn sources_are_tried_in_order() {
        let mut profile = Profile {
            passphrase_command: Some("printf 'from command\\nsecond line'".into()),
            ..Profile::default()
        };
        let env = |v: &str| (v == DEFAULT_ENV).then(|| "from env".to_owned());
        let (p, s) = resolve(Some("from flag"), &profile, env, no_prompt).unwrap();
        assert_eq!((p.as_str(), s), ("from flag", Source::Flag));
        let (p, s) = resolve(None, &profile, env, no_prompt).unwrap();
        assert_eq!(
            (p.as_str(), s),
            ("from env", Source::Env(DEFAULT_ENV.into()))
        );
        let (p, s) = resolve(None, &profile, |_| None, no_prompt).unwrap();
        assert_eq!(p.as_str(), "from command");
        assert!(matches!(s, Source::Command(_)));
        profile.passphrase_command = None;
        let (p, s) = resolve(
            None,
            &profile,
            |_| None,
            |_| Ok(Zeroizing::new("typed".to_owned())),
        )
        .unwrap();
        assert_eq!((p.as_str(), s), ("typed", Source::Prompt));
        // A profile may name its own variable.
        profile.passphrase_env = Some("WORK_PASS".into());
        let (p, _) = resolve(
            None,
            &profile,
            |v| (v == "WORK_PASS").then(|| "work".to_owned()),
            no_prompt,
        )
        .unwrap();
        assert_eq!(p.as_str(), "work");
    }

    #[test]
    fn a_failing_command_or_an_empty_passphrase_is_an_error() {
        let profile = Profile {
            passphrase_command: Some("echo nope >&2; exit 3".into()),
            ..Profile::default()
        };
        let err = resolve(None, &profile, |_| None, no_prompt).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let err = resolve(Some(""), &Profile::default(), |_| None, no_prompt).unwrap_err();
        assert!(matches!(err, PassphraseError::Empty));
    }
}

/// A new account password, asked twice through `ask` (the hidden prompt, or the REPL's and
/// TUI's own): refused when empty or when the two answers differ, so a typo is not what the
/// account is registered with.
pub fn new_password(
    user: &str,
    ask: &mut dyn FnMut(&str) -> std::io::Result<Zeroizing<String>>,
) -> std::io::Result<Zeroizing<String>> {
    let first = ask(&format!("new password for {user}: "))?;
    if first.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the password is empty; nothing was registered",
        ));
    }
    let again = ask("the same password again: ")?;
    if *first != *again {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the two passwords differ; nothing was registered",
        ));
    }
    Ok(first)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod confirm_tests {
    use zeroize::Zeroizing;

    fn answers(list: &[&str]) -> impl FnMut(&str) -> std::io::Result<Zeroizing<String>> {
        let mut list: Vec<String> = list.iter().rev().map(|s| (*s).to_owned()).collect();
        move |_| Ok(Zeroizing::new(list.pop().unwrap_or_default()))
    }

    #[test]
    fn a_new_password_is_asked_twice_and_must_match() {
        let ok = super::new_password("alice", &mut answers(&["pw", "pw"])).unwrap();
        assert_eq!(ok.as_str(), "pw");
        let differ = super::new_password("alice", &mut answers(&["pw", "wp"])).unwrap_err();
        assert!(differ.to_string().contains("differ"), "{differ}");
        let empty = super::new_password("alice", &mut answers(&["", ""])).unwrap_err();
        assert!(empty.to_string().contains("empty"), "{empty}");
    }
}
