//! The shared wire vectors (`tests/vectors/frames.json`, written from the specification's byte
//! layout): every valid frame decodes to its fields and encodes to its bytes, and every invalid
//! one is refused with the named error. The TypeScript client's tests read the same file.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use qrpc::fuzzing::{CallExtension, FrameError, PushFrame, RequestFrame, ResponseFrame};
use serde_json::Value;

fn vectors() -> Value {
    let text = include_str!("vectors/frames.json");
    serde_json::from_str(text).unwrap()
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn num(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

#[test]
fn valid_frames_decode_to_their_fields_and_encode_to_their_bytes() {
    let all = vectors();
    let max = u32::try_from(num(&all, "default_max_payload")).unwrap();
    let mut checked = 0;
    for v in all["request"].as_array().unwrap() {
        let bytes = hex(v["bytes"].as_str().unwrap());
        let frame = RequestFrame {
            method_id: u16::try_from(num(v, "method_id")).unwrap(),
            request_id: u32::try_from(num(v, "request_id")).unwrap(),
            payload: Bytes::from(hex(v["payload"].as_str().unwrap())),
        };
        assert_eq!(
            RequestFrame::decode_exact(&bytes, max).unwrap(),
            frame,
            "{v}"
        );
        assert_eq!(frame.to_bytes().as_ref(), bytes.as_slice(), "{v}");
        checked += 1;
    }
    for v in all["response"].as_array().unwrap() {
        let bytes = hex(v["bytes"].as_str().unwrap());
        let frame = ResponseFrame {
            status: u8::try_from(num(v, "status")).unwrap(),
            request_id: u32::try_from(num(v, "request_id")).unwrap(),
            payload: Bytes::from(hex(v["payload"].as_str().unwrap())),
        };
        assert_eq!(
            ResponseFrame::decode_exact(&bytes, max).unwrap(),
            frame,
            "{v}"
        );
        assert_eq!(frame.to_bytes().as_ref(), bytes.as_slice(), "{v}");
        checked += 1;
    }
    for v in all["push"].as_array().unwrap() {
        let bytes = hex(v["bytes"].as_str().unwrap());
        let frame = PushFrame {
            event_type: u16::try_from(num(v, "event_type")).unwrap(),
            payload: Bytes::from(hex(v["payload"].as_str().unwrap())),
        };
        assert_eq!(PushFrame::decode_exact(&bytes, max).unwrap(), frame, "{v}");
        assert_eq!(frame.to_bytes().as_ref(), bytes.as_slice(), "{v}");
        checked += 1;
    }
    assert_eq!(checked, 12);
}

#[test]
fn invalid_frames_are_refused_with_the_named_error() {
    let all = vectors();
    let mut checked = 0;
    for v in all["invalid"].as_array().unwrap() {
        let bytes = hex(v["bytes"].as_str().unwrap());
        let max = u32::try_from(num(v, "max_payload")).unwrap();
        let error = match v["kind"].as_str().unwrap() {
            "request" => RequestFrame::decode_exact(&bytes, max).map(drop),
            "response" => ResponseFrame::decode_exact(&bytes, max).map(drop),
            "push" => PushFrame::decode_exact(&bytes, max).map(drop),
            other => panic!("unknown kind {other}"),
        }
        .unwrap_err();
        let name = match error {
            FrameError::Truncated { .. } => "truncated",
            FrameError::TrailingBytes(_) => "trailing",
            FrameError::PayloadTooLarge { .. } => "too_large",
            _ => "other",
        };
        assert_eq!(name, v["error"].as_str().unwrap(), "{v}: {error}");
        checked += 1;
    }
    assert_eq!(checked, 8);
}

#[test]
fn call_extensions_decode_to_their_fields_and_encode_to_their_bytes() {
    let all = vectors();
    let mut checked = 0;
    for v in all["call_extension"].as_array().unwrap() {
        let bytes = hex(v["payload"].as_str().unwrap());
        let ext = CallExtension::decode(&bytes).unwrap();
        assert_eq!(u64::from(ext.version), num(v, "version"), "{v}");
        assert_eq!(
            ext.timeout.map(|t| u64::try_from(t.as_micros()).unwrap()),
            v["timeout_us"].as_u64(),
            "{v}"
        );
        let entries = v["metadata"].as_array().unwrap();
        assert_eq!(ext.metadata.len(), entries.len(), "{v}");
        for entry in entries {
            let key = entry[0].as_str().unwrap();
            let value = hex(entry[1].as_str().unwrap());
            let stored: Vec<u8> = if key.ends_with("-bin") {
                ext.metadata.get_bin(key).unwrap().to_vec()
            } else {
                ext.metadata.get(key).unwrap().as_bytes().to_vec()
            };
            assert_eq!(stored, value, "{v}");
        }
        assert_eq!(ext.encode().unwrap().as_ref(), bytes.as_slice(), "{v}");
        checked += 1;
    }
    assert_eq!(checked, 4);
}
