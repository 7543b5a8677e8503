//! The stranger-check memory: recent answers to "does the recipient know the sender?", so
//! that the check does not read the store on every message.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::{Store, StoreResult};
use crate::util::lock;

/// How long a "does the recipient know the sender" answer is reused, at most. Every change
/// that can make a stranger known (the recipient writes to the sender, a channel is created or
/// changed) forgets it at once; a relationship that ends is noticed within this time.
const KNOWN_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Pairs remembered at most; the memory is cleared when full.
const KNOWN_PAIRS: usize = 100_000;

/// Remembered stranger checks: recipient, then sender (looked up by `&str`, no allocation on
/// the enqueue path), to the answer and until when it holds.
#[derive(Default)]
pub(crate) struct KnownPairs {
    by_recipient: HashMap<String, HashMap<String, (bool, std::time::Instant)>>,
    pairs: usize,
}

impl KnownPairs {
    fn get(&self, recipient: &str, sender: &str, now: std::time::Instant) -> Option<bool> {
        self.by_recipient
            .get(recipient)?
            .get(sender)
            .filter(|(_, until)| *until > now)
            .map(|(k, _)| *k)
    }

    fn insert(&mut self, recipient: String, sender: &str, known: bool, until: std::time::Instant) {
        if self.pairs >= KNOWN_PAIRS {
            self.clear();
        }
        let previous = self
            .by_recipient
            .entry(recipient)
            .or_default()
            .insert(sender.to_owned(), (known, until));
        if previous.is_none() {
            self.pairs += 1;
        }
    }

    /// `recipient` wrote to `sender`: a remembered "stranger" answer no longer holds.
    fn forget_stranger(&mut self, recipient: &str, sender: &str) {
        if let Some(senders) = self.by_recipient.get_mut(recipient)
            && matches!(senders.get(sender), Some((false, _)))
        {
            senders.remove(sender);
            self.pairs -= 1;
        }
    }

    fn clear(&mut self) {
        self.by_recipient.clear();
        self.pairs = 0;
    }
}

/// The memory and the store it falls back on.
#[derive(Default)]
pub(crate) struct StrangerMemory(Mutex<KnownPairs>);

impl StrangerMemory {
    /// `writer` just wrote to `reader`: from now on `writer` knows `reader`.
    pub(crate) fn wrote_to(&self, writer: &str, reader: &str) {
        lock(&self.0).forget_stranger(writer, reader);
    }

    /// Channel memberships changed: every cached answer may be stale.
    pub(crate) fn channels_changed(&self) {
        lock(&self.0).clear();
    }

    /// Which of `recipients` know `sender` (wrote to it or share a channel), reusing recent
    /// answers and asking the store for the rest.
    pub(crate) async fn known_to<S: Store>(
        &self,
        store: &S,
        sender: &str,
        recipients: &[String],
    ) -> StoreResult<Vec<bool>> {
        let now = std::time::Instant::now();
        let mut answers: Vec<Option<bool>> = {
            let known = lock(&self.0);
            recipients
                .iter()
                .map(|r| known.get(r, sender, now))
                .collect()
        };
        let ask: Vec<String> = recipients
            .iter()
            .zip(&answers)
            .filter(|(_, a)| a.is_none())
            .map(|(r, _)| r.clone())
            .collect();
        if !ask.is_empty() {
            let fresh = store.known_to(sender.to_owned(), ask.clone()).await?;
            let mut known = lock(&self.0);
            let mut fresh = ask.into_iter().zip(fresh);
            for answer in answers.iter_mut().filter(|a| a.is_none()) {
                if let Some((r, k)) = fresh.next() {
                    known.insert(r, sender, k, now + KNOWN_FOR);
                    *answer = Some(k);
                }
            }
        }
        Ok(answers.into_iter().map(|a| a.unwrap_or(false)).collect())
    }
}
