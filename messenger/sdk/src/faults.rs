//! Fault injection for crash-safety tests (the `testing` feature): a client stops at a
//! chosen point as if its process died. Without the feature every point is a no-op.

use std::sync::Mutex;

use crate::error::{SdkError, SdkResult};

/// Places where a test makes the client fail (the `testing` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub enum CrashPoint {
    /// After an entry is decrypted and its effect computed, before it is committed: the
    /// process dies.
    AfterDecrypt,
    /// After an entry is committed locally, before the server is told (acknowledged): the
    /// process dies.
    BeforeAck,
    /// Where [`AfterDecrypt`](Self::AfterDecrypt) is, the local store fails once (busy,
    /// full, I/O) and the process goes on.
    StoreFailure,
    /// As [`StoreFailure`](Self::StoreFailure), once this many entries were decrypted: in the
    /// middle of a run of entries committed together.
    StoreFailureAfter(u32),
}

/// The armed crash point, if any (tests only; see [`QpqClientBuilder::crash_at`]).
pub(crate) type CrashSwitch = Mutex<Option<CrashPoint>>;

/// Fails once if `point` (or, at `AfterDecrypt`, a store failure) is armed, disarming it: a
/// crash point with [`SdkError::SimulatedCrash`] (the background tasks then stop as if the
/// process had died), a store failure as the store would.
#[cfg(feature = "testing")]
pub(crate) fn fail_point(switch: &CrashSwitch, point: CrashPoint) -> SdkResult<()> {
    let mut armed = crate::client::lock(switch);
    match *armed {
        Some(p) if p == point => {
            *armed = None;
            Err(SdkError::SimulatedCrash(point))
        }
        Some(CrashPoint::StoreFailure | CrashPoint::StoreFailureAfter(0))
            if point == CrashPoint::AfterDecrypt =>
        {
            *armed = None;
            Err(SdkError::Store("injected store failure".into()))
        }
        Some(CrashPoint::StoreFailureAfter(n)) if point == CrashPoint::AfterDecrypt => {
            *armed = Some(CrashPoint::StoreFailureAfter(n - 1));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Without the `testing` feature nothing is ever armed.
#[cfg(not(feature = "testing"))]
pub(crate) fn fail_point(_switch: &CrashSwitch, _point: CrashPoint) -> SdkResult<()> {
    Ok(())
}

/// Whether `e` is a test's simulated crash (never, without the `testing` feature).
pub(crate) fn simulated_crash(e: &SdkError) -> bool {
    #[cfg(feature = "testing")]
    if matches!(e, SdkError::SimulatedCrash(_)) {
        return true;
    }
    let _ = e;
    false
}
