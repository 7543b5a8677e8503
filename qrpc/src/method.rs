//! What a method and a service are, statically: ids, names, call kinds, idempotence.

use std::fmt;

/// The four call kinds (`docs/wire-protocol.md`, "Call kinds").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallKind {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses.
    ServerStreaming,
    /// A stream of requests, one response.
    ClientStreaming,
    /// A stream of requests and a stream of responses.
    Bidi,
}

impl CallKind {
    /// Whether the client sends a stream (and so opens the call with an empty frame).
    pub fn client_streams(self) -> bool {
        matches!(self, Self::ClientStreaming | Self::Bidi)
    }

    /// Whether the server answers with a stream.
    pub fn server_streams(self) -> bool {
        matches!(self, Self::ServerStreaming | Self::Bidi)
    }
}

/// Static description of one method: what logs, layers and tooling need to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MethodInfo {
    /// The wire id, unique within a server.
    pub id: u16,
    /// Fully qualified service name, such as `echo.v1.Echo`.
    pub service: &'static str,
    /// Method name as written in the `.proto`, such as `Say`.
    pub name: &'static str,
    /// The call kind.
    pub kind: CallKind,
    /// Whether calling it twice has the effect of calling it once (the `.proto` sets
    /// `idempotency_level`). Only such calls travel in 0-RTT data, which can be replayed.
    pub idempotent: bool,
}

/// Names a method in a policy: a generated [`MethodInfo`] constant (preferred: it cannot drift
/// from the `.proto`) or a raw wire id.
pub trait MethodRef {
    /// The method's wire id.
    fn method_id(&self) -> u16;
}

impl MethodRef for u16 {
    fn method_id(&self) -> u16 {
        *self
    }
}

impl MethodRef for MethodInfo {
    fn method_id(&self) -> u16 {
        self.id
    }
}

impl<M: MethodRef + ?Sized> MethodRef for &M {
    fn method_id(&self) -> u16 {
        (**self).method_id()
    }
}

impl fmt::Display for MethodInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.name)
    }
}

/// Static description of a service: its name and methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceDescriptor {
    /// Fully qualified service name.
    pub name: &'static str,
    /// Every method of the service.
    pub methods: &'static [MethodInfo],
}

impl ServiceDescriptor {
    /// The method with `id`, if the service has one.
    pub fn method(&self, id: u16) -> Option<&'static MethodInfo> {
        self.methods.iter().find(|m| m.id == id)
    }

    /// The method called `name`, if the service has one.
    pub fn method_by_name(&self, name: &str) -> Option<&'static MethodInfo> {
        self.methods.iter().find(|m| m.name == name)
    }
}
