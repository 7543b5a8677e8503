//! Call metadata: ASCII and binary key/values that travel with a request or a response
//! (`docs/wire-protocol.md`, "Call extension").
//!
//! Keys are lowercase ASCII (`a-z`, `0-9`, `-`, `_`, `.`), as in gRPC; a key ending in `-bin`
//! holds binary bytes, every other key a printable-ASCII value (space to `~`).

use std::fmt;

use bytes::Bytes;

/// Longest key, in bytes.
pub(crate) const MAX_KEY_LEN: usize = 128;

/// Where a call's response metadata is put when the server's extension frame arrives (before
/// the first response message).
pub(crate) type MetadataSlot = std::sync::Arc<std::sync::Mutex<Option<Metadata>>>;

/// Why a key or value cannot be metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidMetadata {
    /// The key is empty, too long, or has a character other than `a-z 0-9 - _ .`.
    #[error("invalid metadata key {0:?}: use 1 to 128 characters of a-z, 0-9, '-', '_', '.'")]
    Key(String),
    /// An ASCII value holds a character outside printable ASCII.
    #[error("the value of metadata key {0:?} is not printable ASCII (use a key ending in -bin)")]
    AsciiValue(String),
    /// A binary value under a key that does not end in `-bin`, or the reverse.
    #[error("metadata key {0:?}: binary values need a key ending in -bin, text values one without")]
    Kind(String),
}

/// One metadata value.
#[derive(Clone, PartialEq, Eq)]
enum Value {
    Ascii(String),
    Binary(Bytes),
}

/// Metadata of a call: ordered key/values, like gRPC's headers.
///
/// Keys are 1 to 128 bytes of lowercase ASCII letters, digits, `-`, `_` and `.`. A key ending in
/// `-bin` holds binary bytes ([`insert_bin`](Self::insert_bin)); every other key holds printable
/// ASCII, space to `~` ([`insert`](Self::insert)). `insert` replaces the key's values, `append`
/// adds one more (a key may repeat). One call carries at most 64 entries and 16 KiB of them: a
/// call over that fails with `InvalidArgument` before it is sent. Values may be credentials:
/// `Debug` shows keys only.
///
/// ```
/// let mut metadata = qrpc::Metadata::new();
/// metadata.insert("x-request-origin", "batch")?;
/// metadata.insert_bin("trace-bin", vec![1u8, 2, 3])?;
/// assert_eq!(metadata.get("x-request-origin"), Some("batch"));
/// assert_eq!(metadata.get_bin("trace-bin").map(|b| b.to_vec()), Some(vec![1, 2, 3]));
/// # Ok::<(), qrpc::InvalidMetadata>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be credentials (an `authorization` entry): keys only.
        f.debug_list()
            .entries(self.entries.iter().map(|(k, _)| k))
            .finish()
    }
}

fn check_key(key: &str) -> Result<(), InvalidMetadata> {
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(InvalidMetadata::Key(printable(key)))
    }
}

/// A key as it may appear in an error message: at most 64 characters, control characters
/// replaced.
fn printable(key: &str) -> String {
    key.chars()
        .take(64)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn is_binary_key(key: &str) -> bool {
    key.ends_with("-bin")
}

fn check_ascii(key: &str, value: &str) -> Result<(), InvalidMetadata> {
    check_key(key)?;
    if is_binary_key(key) {
        return Err(InvalidMetadata::Kind(key.to_owned()));
    }
    if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(InvalidMetadata::AsciiValue(key.to_owned()));
    }
    Ok(())
}

fn check_binary_key(key: &str) -> Result<(), InvalidMetadata> {
    check_key(key)?;
    if !is_binary_key(key) {
        return Err(InvalidMetadata::Kind(key.to_owned()));
    }
    Ok(())
}

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to one ASCII value, replacing any values it had.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), InvalidMetadata> {
        self.put_ascii(key.into(), value.into(), true)
    }

    /// Adds an ASCII value for `key`, after any it already has.
    pub fn append(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), InvalidMetadata> {
        self.put_ascii(key.into(), value.into(), false)
    }

    /// Sets `key` (ending in `-bin`) to one binary value, replacing any values it had.
    pub fn insert_bin(
        &mut self,
        key: impl Into<String>,
        value: impl Into<Bytes>,
    ) -> Result<(), InvalidMetadata> {
        self.put_binary(key.into(), value.into(), true)
    }

    /// Adds a binary value for `key` (ending in `-bin`), after any it already has.
    pub fn append_bin(
        &mut self,
        key: impl Into<String>,
        value: impl Into<Bytes>,
    ) -> Result<(), InvalidMetadata> {
        self.put_binary(key.into(), value.into(), false)
    }

    fn put_ascii(
        &mut self,
        key: String,
        value: String,
        replace: bool,
    ) -> Result<(), InvalidMetadata> {
        check_ascii(&key, &value)?;
        self.put(key, Value::Ascii(value), replace);
        Ok(())
    }

    fn put_binary(
        &mut self,
        key: String,
        value: Bytes,
        replace: bool,
    ) -> Result<(), InvalidMetadata> {
        check_binary_key(&key)?;
        self.put(key, Value::Binary(value), replace);
        Ok(())
    }

    fn put(&mut self, key: String, value: Value, replace: bool) {
        if replace {
            self.remove(&key);
        }
        self.entries.push((key, value));
    }

    /// The first ASCII value under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find_map(|(k, v)| match v {
            Value::Ascii(s) if k == key => Some(s.as_str()),
            _ => None,
        })
    }

    /// The first binary value under `key`.
    pub fn get_bin(&self, key: &str) -> Option<&Bytes> {
        self.entries.iter().find_map(|(k, v)| match v {
            Value::Binary(b) if k == key => Some(b),
            _ => None,
        })
    }

    /// Every ASCII value under `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries.iter().filter_map(move |(k, v)| match v {
            Value::Ascii(s) if k == key => Some(s.as_str()),
            _ => None,
        })
    }

    /// Removes every entry under `key`; returns how many there were.
    pub fn remove(&mut self, key: &str) -> usize {
        let before = self.entries.len();
        self.entries.retain(|(k, _)| k != key);
        before - self.entries.len()
    }

    /// The keys, in order (repeated keys repeat).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries as `(key, raw value)` for the wire codec.
    pub(crate) fn raw_entries(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(k, v)| {
            (
                k.as_str(),
                match v {
                    Value::Ascii(s) => s.as_bytes(),
                    Value::Binary(b) => &b[..],
                },
            )
        })
    }

    /// Adds an entry from the wire, checking it as `insert`/`insert_bin` do.
    pub(crate) fn push_raw(&mut self, key: String, value: Bytes) -> Result<(), InvalidMetadata> {
        if is_binary_key(&key) {
            self.append_bin(key, value)
        } else {
            let text = String::from_utf8(value.to_vec())
                .map_err(|_| InvalidMetadata::AsciiValue(printable(&key)))?;
            self.append(key, text)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_and_values_are_checked() {
        let mut m = Metadata::new();
        assert!(m.insert("ok-key_1.x", "value with spaces ~").is_ok());
        assert!(matches!(m.insert("", "v"), Err(InvalidMetadata::Key(_))));
        assert!(matches!(
            m.insert("Upper", "v"),
            Err(InvalidMetadata::Key(_))
        ));
        assert!(matches!(
            m.insert("k".repeat(MAX_KEY_LEN + 1), "v"),
            Err(InvalidMetadata::Key(_))
        ));
        assert!(m.insert("k".repeat(MAX_KEY_LEN), "v").is_ok());
        assert!(matches!(
            m.insert("nl", "a\nb"),
            Err(InvalidMetadata::AsciiValue(_))
        ));
        assert!(matches!(m.insert("é", "v"), Err(InvalidMetadata::Key(_))));
        assert!(matches!(
            m.insert("x-bin", "text"),
            Err(InvalidMetadata::Kind(_))
        ));
        assert!(matches!(
            m.insert_bin("x", vec![0u8]),
            Err(InvalidMetadata::Kind(_))
        ));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn repeated_keys_keep_their_order_and_debug_shows_no_values() {
        let mut m = Metadata::new();
        m.append("a", "1").unwrap();
        m.insert("authorization", "secret-token").unwrap();
        m.append("a", "2").unwrap();
        assert_eq!(m.get("a"), Some("1"));
        assert_eq!(m.get_all("a").collect::<Vec<_>>(), ["1", "2"]);
        // `insert` replaces every value of its key.
        m.insert("a", "3").unwrap();
        assert_eq!(m.get_all("a").collect::<Vec<_>>(), ["3"]);
        m.append("a", "4").unwrap();
        assert!(!format!("{m:?}").contains("secret-token"));
        assert_eq!(m.remove("a"), 2);
        m.insert_bin("k-bin", vec![1u8]).unwrap();
        m.insert_bin("k-bin", vec![2u8]).unwrap();
        m.append_bin("k-bin", vec![3u8]).unwrap();
        assert_eq!(m.get_bin("k-bin").map(|b| b.to_vec()), Some(vec![2u8]));
        assert_eq!(m.remove("k-bin"), 2);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["authorization"]);
    }
}
