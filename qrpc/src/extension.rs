//! The call extension: a call's deadline and metadata on the wire, added to the framing
//! without changing it (`docs/wire-protocol.md`, §11).
//!
//! * A request stream may begin with one *extension frame*: a request frame whose method id
//!   is 0 (never a method's id) and whose payload is an encoded [`CallExtension`]; the call's
//!   opening frame follows with the same request id.
//! * An extension frame followed by the end of the stream is a *probe*: a server that knows the
//!   extension answers it with one OK frame whose payload is its own (empty) extension; a server
//!   that does not answers `Unimplemented` (or any error), and the client then sends plain calls.
//! * A server answers a call that carried an extension frame with an extension frame of its own
//!   first when the handler set response metadata: a response frame with status 255.
//!
//! The payload is protobuf (`proto/qrpc/v1/extension.proto`), so later versions add fields.

// Public for the fuzz targets (feature `fuzzing`); the rest of qrpc uses part of it.
#![cfg_attr(not(feature = "fuzzing"), allow(dead_code, unreachable_pub))]

use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use crate::metadata::{InvalidMetadata, Metadata};

/// The method id of an extension frame.
pub const EXTENSION_METHOD_ID: u16 = 0;
/// The status byte of a response extension frame.
pub const EXTENSION_STATUS: u8 = 0xff;
/// The extension version this implementation speaks.
pub const EXTENSION_VERSION: u32 = 1;
/// Largest encoded extension accepted or sent, in bytes.
pub const MAX_EXTENSION_LEN: usize = 16 * 1024;
/// Most metadata entries in one extension.
pub const MAX_METADATA_ENTRIES: usize = 64;

/// Why an extension payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtensionError {
    /// The encoded extension is longer than [`MAX_EXTENSION_LEN`].
    #[error("call extension of {0} bytes exceeds the limit of {MAX_EXTENSION_LEN} bytes")]
    TooLarge(usize),
    /// More than [`MAX_METADATA_ENTRIES`] entries.
    #[error("call metadata has {0} entries; the limit is {MAX_METADATA_ENTRIES}")]
    TooManyEntries(usize),
    /// Not a valid encoding.
    #[error("malformed call extension: {0}")]
    Malformed(String),
    /// An entry is not valid metadata.
    #[error(transparent)]
    Metadata(#[from] InvalidMetadata),
}

#[derive(Clone, PartialEq, Message)]
struct WireExtension {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(uint64, optional, tag = "2")]
    timeout_us: Option<u64>,
    #[prost(message, repeated, tag = "3")]
    metadata: Vec<WireEntry>,
}

#[derive(Clone, PartialEq, Message)]
struct WireEntry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

/// What an extension frame carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallExtension {
    /// The sender's extension version.
    pub version: u32,
    /// The time the caller gives the call, from when the server reads the call's opening
    /// frame.
    pub timeout: Option<Duration>,
    /// Request or response metadata.
    pub metadata: Metadata,
}

impl CallExtension {
    /// An extension of this version.
    pub fn new(timeout: Option<Duration>, metadata: Metadata) -> Self {
        Self {
            version: EXTENSION_VERSION,
            timeout,
            metadata,
        }
    }

    /// The extension of a probe and of its answer: this version, nothing else (`08 01`).
    pub fn hello() -> Bytes {
        WireExtension {
            version: EXTENSION_VERSION,
            timeout_us: None,
            metadata: Vec::new(),
        }
        .encode_to_vec()
        .into()
    }

    /// Encodes the extension; refuses one over the limits (the receiver would refuse it).
    pub fn encode(&self) -> Result<Bytes, ExtensionError> {
        if self.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(ExtensionError::TooManyEntries(self.metadata.len()));
        }
        let wire = WireExtension {
            version: self.version,
            timeout_us: self
                .timeout
                .map(|t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX)),
            metadata: self
                .metadata
                .raw_entries()
                .map(|(key, value)| WireEntry {
                    key: key.to_owned(),
                    value: Bytes::copy_from_slice(value),
                })
                .collect(),
        };
        let len = wire.encoded_len();
        if len > MAX_EXTENSION_LEN {
            return Err(ExtensionError::TooLarge(len));
        }
        Ok(wire.encode_to_vec().into())
    }

    /// Decodes and checks an extension payload.
    pub fn decode(payload: &[u8]) -> Result<Self, ExtensionError> {
        if payload.len() > MAX_EXTENSION_LEN {
            return Err(ExtensionError::TooLarge(payload.len()));
        }
        // Counted before decoding, so that many tiny entries cannot make decoding allocate
        // far more than the payload.
        let entries = count_metadata_entries(payload)?;
        if entries > MAX_METADATA_ENTRIES {
            return Err(ExtensionError::TooManyEntries(entries));
        }
        let wire =
            WireExtension::decode(payload).map_err(|e| ExtensionError::Malformed(e.to_string()))?;
        if wire.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(ExtensionError::TooManyEntries(wire.metadata.len()));
        }
        let mut metadata = Metadata::new();
        for entry in wire.metadata {
            metadata.push_raw(entry.key, entry.value)?;
        }
        Ok(Self {
            version: wire.version,
            timeout: wire.timeout_us.map(Duration::from_micros),
            metadata,
        })
    }
}

/// Counts the metadata fields (field 3) of an encoded extension by walking its top-level fields.
fn count_metadata_entries(mut bytes: &[u8]) -> Result<usize, ExtensionError> {
    fn varint(bytes: &mut &[u8]) -> Result<u64, ExtensionError> {
        prost::encoding::decode_varint(bytes).map_err(|e| ExtensionError::Malformed(e.to_string()))
    }
    fn skip(bytes: &mut &[u8], n: u64) -> Result<(), ExtensionError> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n > bytes.len() {
            return Err(ExtensionError::Malformed("field runs past the end".into()));
        }
        *bytes = &bytes[n..];
        Ok(())
    }
    let mut entries = 0;
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        match key & 7 {
            0 => drop(varint(&mut bytes)?),
            1 => skip(&mut bytes, 8)?,
            2 => {
                let len = varint(&mut bytes)?;
                skip(&mut bytes, len)?;
                if key >> 3 == 3 {
                    entries += 1;
                }
            }
            5 => skip(&mut bytes, 4)?,
            other => return Err(ExtensionError::Malformed(format!("wire type {other}"))),
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_known_encoding_decodes() {
        // Written by hand from the protobuf rules: field 1 varint 1; field 2 varint 250000;
        // field 3 a message of field 1 "a" and field 2 "b".
        let bytes = [
            0x08, 0x01, // version = 1
            0x10, 0x90, 0xa1, 0x0f, // timeout_us = 250000
            0x1a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'b', // metadata { "a": "b" }
        ];
        let ext = CallExtension::decode(&bytes).unwrap();
        assert_eq!(ext.version, 1);
        assert_eq!(ext.timeout, Some(Duration::from_millis(250)));
        assert_eq!(ext.metadata.get("a"), Some("b"));
        assert_eq!(&ext.encode().unwrap()[..], &bytes[..]);
    }

    #[test]
    fn limits_are_enforced_both_ways() {
        let mut many = Metadata::new();
        for i in 0..=MAX_METADATA_ENTRIES {
            many.insert(format!("k{i}"), "v").unwrap();
        }
        let ext = CallExtension::new(None, many);
        assert!(matches!(
            ext.encode(),
            Err(ExtensionError::TooManyEntries(65))
        ));
        let mut big = Metadata::new();
        big.insert_bin("blob-bin", vec![0u8; MAX_EXTENSION_LEN])
            .unwrap();
        assert!(matches!(
            CallExtension::new(None, big).encode(),
            Err(ExtensionError::TooLarge(_))
        ));
        assert!(matches!(
            CallExtension::decode(&vec![0u8; MAX_EXTENSION_LEN + 1]),
            Err(ExtensionError::TooLarge(_))
        ));
        // Thousands of empty entries (1a 00) are refused by their count, before decoding.
        let tiny: Vec<u8> = [0x1a, 0x00].repeat(MAX_EXTENSION_LEN / 2);
        assert!(matches!(
            CallExtension::decode(&tiny),
            Err(ExtensionError::TooManyEntries(8192))
        ));
        // A key that is not metadata, and text under a -bin key's opposite, are refused.
        let bad_key = WireExtension {
            version: 1,
            timeout_us: None,
            metadata: vec![WireEntry {
                key: "Bad Key".into(),
                value: Bytes::from_static(b"v"),
            }],
        }
        .encode_to_vec();
        assert!(matches!(
            CallExtension::decode(&bad_key),
            Err(ExtensionError::Metadata(InvalidMetadata::Key(_)))
        ));
        let control = WireExtension {
            version: 1,
            timeout_us: None,
            metadata: vec![WireEntry {
                key: "k".into(),
                value: Bytes::from_static(b"\x1b[2J"),
            }],
        }
        .encode_to_vec();
        assert!(matches!(
            CallExtension::decode(&control),
            Err(ExtensionError::Metadata(InvalidMetadata::AsciiValue(_)))
        ));
    }

    fn metadata() -> impl Strategy<Value = Metadata> {
        let ascii = ("[a-z0-9._-]{1,20}", "[ -~]{0,40}").prop_map(|(k, v)| (k, v.into_bytes()));
        let binary = (
            "[a-z0-9._-]{1,16}",
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(k, v)| (format!("{k}-bin"), v));
        proptest::collection::vec(prop_oneof![ascii, binary], 0..MAX_METADATA_ENTRIES).prop_map(
            |entries| {
                let mut m = Metadata::new();
                for (k, v) in entries {
                    m.push_raw(k, v.into()).unwrap();
                }
                m
            },
        )
    }

    proptest! {
        #[test]
        fn every_valid_extension_round_trips(
            timeout in proptest::option::of(0u64..u64::MAX),
            metadata in metadata(),
        ) {
            let ext = CallExtension::new(timeout.map(Duration::from_micros), metadata);
            let decoded = CallExtension::decode(&ext.encode().unwrap()).unwrap();
            prop_assert_eq!(decoded, ext);
        }

        #[test]
        fn arbitrary_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(ext) = CallExtension::decode(&bytes) {
                // Whatever decodes is valid metadata and encodes again.
                prop_assert!(ext.metadata.len() <= MAX_METADATA_ENTRIES);
                let again = CallExtension::decode(&ext.encode().unwrap()).unwrap();
                prop_assert_eq!(again, ext);
            }
        }
    }
}
