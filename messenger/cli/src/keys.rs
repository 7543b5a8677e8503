//! TUI key bindings: named actions, default keys, and remapping from the config's `[keys]`.

use std::collections::BTreeMap;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// What a key can do in the TUI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Leave qpq.
    Quit,
    /// Show or hide the help overlay.
    Help,
    /// Next conversation in the list.
    NextConversation,
    /// Previous conversation in the list.
    PrevConversation,
    /// Scroll the messages back.
    ScrollUp,
    /// Scroll the messages forward.
    ScrollDown,
    /// Send the newest failed message of the conversation again.
    Retry,
}

impl Action {
    /// Every action, with its config name and what it does.
    pub const ALL: [(Action, &'static str, &'static str); 7] = [
        (Action::Quit, "quit", "leave qpq"),
        (Action::Help, "help", "show or hide this help"),
        (
            Action::NextConversation,
            "next_conversation",
            "next conversation",
        ),
        (
            Action::PrevConversation,
            "prev_conversation",
            "previous conversation",
        ),
        (Action::ScrollUp, "scroll_up", "scroll messages back"),
        (Action::ScrollDown, "scroll_down", "scroll messages forward"),
        (Action::Retry, "retry", "send the last failed message again"),
    ];

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(a, _, _)| *a)
    }
}

/// A key with modifiers, as written in the config (`ctrl-n`, `alt-up`, `f1`, `pageup`, `x`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    code: KeyCode,
    modifiers: KeyModifiers,
}

impl Key {
    /// Parses `ctrl-n`, `alt-up`, `shift-tab`, `f1`, `pageup`, `esc`, `x`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        let mut parts: Vec<&str> = lower.split('-').collect();
        let last = parts
            .pop()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("empty key in {text:?}"))?;
        let mut modifiers = KeyModifiers::NONE;
        for m in parts {
            modifiers |= match m {
                "ctrl" | "c" => KeyModifiers::CONTROL,
                "alt" | "a" | "m" => KeyModifiers::ALT,
                "shift" | "s" => KeyModifiers::SHIFT,
                other => return Err(format!("unknown modifier {other:?} in {text:?}")),
            };
        }
        let code = match last {
            "up" => KeyCode::Up,
            "down" => KeyCode::Down,
            "left" => KeyCode::Left,
            "right" => KeyCode::Right,
            "pageup" => KeyCode::PageUp,
            "pagedown" => KeyCode::PageDown,
            "home" => KeyCode::Home,
            "end" => KeyCode::End,
            "tab" => KeyCode::Tab,
            "esc" | "escape" => KeyCode::Esc,
            "enter" => KeyCode::Enter,
            f if f.starts_with('f') && f.len() > 1 => KeyCode::F(
                f[1..]
                    .parse::<u8>()
                    .ok()
                    .filter(|n| (1..=12).contains(n))
                    .ok_or_else(|| format!("unknown key {text:?}"))?,
            ),
            c if c.chars().count() == 1 => KeyCode::Char(c.chars().next().unwrap_or(' ')),
            other => return Err(format!("unknown key {other:?} in {text:?}")),
        };
        Ok(Self { code, modifiers })
    }

    fn matches(&self, e: &KeyEvent) -> bool {
        // A typed letter carries SHIFT when upper-case: letters match either way.
        let (code, modifiers) = match e.code {
            KeyCode::Char(c) => (
                KeyCode::Char(c.to_ascii_lowercase()),
                e.modifiers.difference(KeyModifiers::SHIFT),
            ),
            other => (other, e.modifiers),
        };
        let wanted = match self.code {
            KeyCode::Char(_) => self.modifiers.difference(KeyModifiers::SHIFT),
            _ => self.modifiers,
        };
        code == self.code && modifiers == wanted
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.modifiers.contains(KeyModifiers::CONTROL) {
            f.write_str("ctrl-")?;
        }
        if self.modifiers.contains(KeyModifiers::ALT) {
            f.write_str("alt-")?;
        }
        if self.modifiers.contains(KeyModifiers::SHIFT) {
            f.write_str("shift-")?;
        }
        match self.code {
            KeyCode::Char(c) => write!(f, "{c}"),
            KeyCode::F(n) => write!(f, "f{n}"),
            KeyCode::PageUp => f.write_str("pageup"),
            KeyCode::PageDown => f.write_str("pagedown"),
            other => write!(f, "{}", format!("{other:?}").to_ascii_lowercase()),
        }
    }
}

/// The bindings in force.
#[derive(Debug, Clone)]
pub struct KeyMap {
    bindings: BTreeMap<Action, Key>,
}

impl KeyMap {
    /// The defaults, with the config's `[keys]` applied on top. Unknown actions or keys are
    /// errors that name them.
    pub fn new(overrides: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut bindings = BTreeMap::new();
        for (action, key) in [
            (Action::Quit, "ctrl-c"),
            (Action::Help, "f1"),
            (Action::NextConversation, "alt-down"),
            (Action::PrevConversation, "alt-up"),
            (Action::ScrollUp, "pageup"),
            (Action::ScrollDown, "pagedown"),
            (Action::Retry, "ctrl-r"),
        ] {
            bindings.insert(action, Key::parse(key)?);
        }
        for (name, key) in overrides {
            let action = Action::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = Action::ALL.iter().map(|(_, n, _)| *n).collect();
                format!(
                    "[keys]: unknown action {name:?} (known: {})",
                    known.join(", ")
                )
            })?;
            bindings.insert(
                action,
                Key::parse(key).map_err(|e| format!("[keys] {name}: {e}"))?,
            );
        }
        Ok(Self { bindings })
    }

    /// The action bound to a key press, if any.
    pub fn action(&self, e: &KeyEvent) -> Option<Action> {
        self.bindings
            .iter()
            .find(|(_, k)| k.matches(e))
            .map(|(a, _)| *a)
    }

    /// `(key, what it does)` for the help overlay.
    pub fn describe(&self) -> Vec<(String, &'static str)> {
        Action::ALL
            .iter()
            .filter_map(|(a, _, about)| self.bindings.get(a).map(|k| (k.to_string(), *about)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn press(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    #[test]
    fn defaults_and_remapping() {
        let map = KeyMap::new(&BTreeMap::new()).unwrap();
        assert_eq!(
            map.action(&press(KeyCode::F(1), KeyModifiers::NONE)),
            Some(Action::Help)
        );
        assert_eq!(
            map.action(&press(KeyCode::Down, KeyModifiers::ALT)),
            Some(Action::NextConversation)
        );
        assert_eq!(map.action(&press(KeyCode::Down, KeyModifiers::NONE)), None);
        let overrides = BTreeMap::from([
            ("next_conversation".to_string(), "ctrl-n".to_string()),
            ("help".to_string(), "F2".to_string()),
        ]);
        let map = KeyMap::new(&overrides).unwrap();
        assert_eq!(
            map.action(&press(KeyCode::Char('n'), KeyModifiers::CONTROL)),
            Some(Action::NextConversation)
        );
        assert_eq!(
            map.action(&press(KeyCode::Down, KeyModifiers::ALT)),
            None,
            "the old key is free"
        );
        assert_eq!(
            map.action(&press(KeyCode::F(2), KeyModifiers::NONE)),
            Some(Action::Help)
        );
        assert!(
            map.describe()
                .contains(&("ctrl-n".to_string(), "next conversation"))
        );
    }

    #[test]
    fn bad_bindings_are_named() {
        let bad = |k: &str, v: &str| {
            KeyMap::new(&BTreeMap::from([(k.to_string(), v.to_string())])).unwrap_err()
        };
        assert!(bad("fly", "f1").contains("unknown action \"fly\""));
        assert!(bad("help", "hyper-x").contains("unknown modifier"));
        assert!(bad("help", "f13").contains("unknown key"));
        assert!(bad("help", "").contains("empty key"));
    }

    proptest::proptest! {
        #[test]
        fn any_key_text_parses_or_errs(text in ".{0,20}") {
            let _ = Key::parse(&text);
        }
    }
}
