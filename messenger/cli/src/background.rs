//! Commands run beside the terminal's loop, so keys and incoming messages are handled while
//! one waits on the network: each runs on a copy of the session, and its outcome (with what
//! it changed of the session) comes back as an event.

use qpq_sdk::{ConversationId, Progress};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::session::{CommandError, Output, Session};

/// A command that finished.
#[derive(Debug)]
pub struct Finished {
    /// The line as typed.
    pub line: String,
    /// What it printed, or why it failed.
    pub outcome: Result<Output, CommandError>,
    /// The conversation it opened (or closed), when it changed that.
    pub current: Option<Option<ConversationId>>,
    /// The default device it set (`/login` with a device), when it changed that.
    pub device: Option<String>,
}

impl Finished {
    /// Carries what the command changed over to the terminal's session.
    pub fn apply_to(&self, session: &mut Session) {
        if let Some(current) = self.current {
            session.set_current(current);
        }
        if let Some(device) = &self.device {
            session.set_device(device.clone());
        }
    }
}

/// What the commands running in the background report.
#[derive(Debug)]
pub enum Report {
    /// A transfer moved on.
    Progress(Progress),
    /// A command finished.
    Finished(Finished),
}

/// The commands running beside the loop.
#[derive(Debug)]
pub struct Background {
    tx: mpsc::UnboundedSender<Report>,
    rx: mpsc::UnboundedReceiver<Report>,
    running: usize,
}

impl Default for Background {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self { tx, rx, running: 0 }
    }
}

impl Background {
    /// Starts `line` on a copy of `session`; `secret` answers its password prompt, if any.
    pub fn start(&mut self, session: &Session, line: String, secret: Option<Zeroizing<String>>) {
        let mut copy = session.clone();
        let tx = self.tx.clone();
        self.running += 1;
        tokio::spawn(async move {
            let (current, device) = (copy.current(), copy.device().to_owned());
            let progress_tx = tx.clone();
            let mut progress = move |p: Progress| {
                let _ = progress_tx.send(Report::Progress(p));
            };
            let mut ask = move |_: &str| -> std::io::Result<Zeroizing<String>> {
                secret
                    .clone()
                    .ok_or_else(|| std::io::Error::other("no password given"))
            };
            let outcome = copy.run_line(&line, &mut ask, &mut progress).await;
            let _ = tx.send(Report::Finished(Finished {
                line,
                outcome,
                current: (copy.current() != current).then(|| copy.current()),
                device: (copy.device() != device).then(|| copy.device().to_owned()),
            }));
        });
    }

    /// The next report (waits while nothing runs; cancel-safe, for `select!`).
    pub async fn next(&mut self) -> Report {
        match self.rx.recv().await {
            Some(report) => {
                if matches!(report, Report::Finished(_)) {
                    self.running = self.running.saturating_sub(1);
                }
                report
            }
            // Never: this holds a sender itself.
            None => std::future::pending().await,
        }
    }

    /// Commands still running.
    pub fn running(&self) -> usize {
        self.running
    }
}
