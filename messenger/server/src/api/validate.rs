//! Input checks shared by the services. Every failure is `InvalidArgument` naming the field.

use qrpc::Status;

use crate::store::DeviceId;

/// A user name: 1..=32 of `[a-z0-9_.-]`.
pub fn user(name: &str) -> Result<(), Status> {
    let ok = (1..=32).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "user: 1 to 32 characters of a-z, 0-9, '_', '.', '-'",
        ))
    }
}

/// A device id: 1..=32 of `[A-Za-z0-9_-]`.
pub fn device(id: &str) -> Result<(), Status> {
    let ok = (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "device: 1 to 32 characters of A-Z, a-z, 0-9, '_', '-'",
        ))
    }
}

/// A device reference from a request.
pub fn device_ref(r: Option<&qpq_proto::v1::DeviceRef>) -> Result<DeviceId, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("device: missing"))?;
    user(&r.user)?;
    device(&r.device)?;
    Ok(DeviceId::new(&r.user, &r.device))
}

/// A user address from a request: a local user (bare, or qualified with this server's
/// own domain) or a user of another server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<T> {
    /// The other server's domain; `None` for a local user.
    pub domain: Option<String>,
    /// The user or device, its user bare.
    pub device: T,
}

/// A user address: `name` or `name@domain` (this server's own domain is the same as bare).
pub fn address(text: &str, own_domain: &str) -> Result<Target<String>, Status> {
    let parsed = qpq_core::address::Address::parse(text)
        .map_err(|e| Status::invalid_argument(format!("user: {e}")))?;
    let domain = parsed
        .domain()
        .filter(|d| *d != own_domain)
        .map(str::to_owned);
    Ok(Target {
        domain,
        device: parsed.user().to_owned(),
    })
}

/// A device reference whose user may be of another server (`user@domain`).
pub fn target(
    r: Option<&qpq_proto::v1::DeviceRef>,
    own_domain: &str,
) -> Result<Target<DeviceId>, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("device: missing"))?;
    let user = address(&r.user, own_domain)?;
    device(&r.device)?;
    Ok(Target {
        domain: user.domain,
        device: DeviceId::new(user.device, &r.device),
    })
}

/// A queued message's id (16 bytes) and payload (not empty, at most `max_bytes`), whether a
/// local user enqueues it or a peer server relays it.
pub fn message(message_id: &[u8], payload: &[u8], max_bytes: u32) -> Result<(), Status> {
    exact_len("message_id", message_id, 16)?;
    if payload.is_empty() {
        return Err(Status::invalid_argument("payload: must not be empty"));
    }
    max_len("payload", payload.len(), max_bytes as usize)
}

/// A byte field of an exact length.
pub fn exact_len(field: &str, bytes: &[u8], len: usize) -> Result<(), Status> {
    if bytes.len() == len {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{field}: must be {len} bytes, got {}",
            bytes.len()
        )))
    }
}

/// A byte or string field with a maximum length.
pub fn max_len(field: &str, len: usize, max: usize) -> Result<(), Status> {
    if len <= max {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{field}: at most {max} bytes, got {len}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(user("alice.b-2_").is_ok());
        for bad in ["", "Alice", "a/b", "a b", &"x".repeat(33)] {
            assert!(user(bad).is_err(), "{bad}");
        }
        assert!(device("Phone-1").is_ok());
        assert!(device("a/b").is_err());
    }
}
