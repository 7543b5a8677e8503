//! Padmé padding: hides a message's exact length behind a small set of sizes.
//!
//! Layout: `len_be32 || message || zeros`, padded to `padme(4 + len)` bytes. Padmé keeps the
//! overhead under 12% for any length (at most `2^(⌊log2 L⌋ - ⌊log2 ⌊log2 L⌋⌋ - 1)` bytes), while
//! leaking only O(log log L) bits of the length instead of O(log L).

use zeroize::Zeroizing;

/// Why a padded buffer could not be unpadded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaddingError {
    /// Shorter than the length prefix.
    #[error("padded buffer shorter than its length prefix")]
    Truncated,
    /// The length prefix points past the end, or the padding is not zeros.
    #[error("malformed padding")]
    Malformed,
    /// The message is longer than a `u32` length can describe.
    #[error("message too long to pad")]
    TooLong,
}

/// The Padmé length for a payload of `len` bytes.
pub fn padme(len: usize) -> usize {
    if len < 2 {
        return len;
    }
    let e = usize::BITS - 1 - len.leading_zeros(); // floor(log2 len)
    let s = usize::BITS - 1 - (e as usize).leading_zeros() + 1; // floor(log2 e) + 1
    let last_bits = e.saturating_sub(s);
    let mask = (1usize << last_bits) - 1;
    (len + mask) & !mask
}

/// Pads `message` with a length prefix to its Padmé size.
pub fn pad(message: &[u8]) -> Result<Zeroizing<Vec<u8>>, PaddingError> {
    let len = u32::try_from(message.len()).map_err(|_| PaddingError::TooLong)?;
    let total = padme(4 + message.len());
    let mut out = Zeroizing::new(Vec::with_capacity(total));
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    out.resize(total, 0);
    Ok(out)
}

/// Removes the padding, checking that it is all zeros.
pub fn unpad(padded: &[u8]) -> Result<&[u8], PaddingError> {
    let (prefix, rest) = padded
        .split_first_chunk::<4>()
        .ok_or(PaddingError::Truncated)?;
    let len = u32::from_be_bytes(*prefix) as usize;
    if len > rest.len() {
        return Err(PaddingError::Malformed);
    }
    let (message, padding) = rest.split_at(len);
    if padding.iter().any(|b| *b != 0) {
        return Err(PaddingError::Malformed);
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn padme_known_values() {
        // Reference values of the Padmé function (PURBs paper, table of examples).
        assert_eq!(padme(0), 0);
        assert_eq!(padme(1), 1);
        assert_eq!(padme(9), 10);
        assert_eq!(padme(100), 104);
        assert_eq!(padme(1000), 1024);
        assert_eq!(padme(1025), 1088);
        assert_eq!(padme(1_000_000), 1_015_808);
    }

    #[test]
    fn bad_padding_is_rejected() {
        assert_eq!(unpad(&[0, 0]), Err(PaddingError::Truncated));
        assert_eq!(unpad(&[0, 0, 0, 9, 1]), Err(PaddingError::Malformed));
        let mut padded = pad(b"hello world, padded").unwrap().to_vec();
        let last = padded.len() - 1;
        padded[last] = 1;
        assert_eq!(unpad(&padded), Err(PaddingError::Malformed));
    }

    proptest! {
        #[test]
        fn round_trip_and_bounded_overhead(msg in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let padded = pad(&msg).unwrap();
            prop_assert_eq!(unpad(&padded).unwrap(), &msg[..]);
            let l = 4 + msg.len();
            prop_assert!(padded.len() >= l);
            prop_assert!((padded.len() - l) * 100 <= l * 12, "overhead over 12% at {}", l);
        }

        #[test]
        fn unpad_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = unpad(&bytes);
        }
    }
}
