//! Reads method ids and push channels from the compiled descriptor pool and checks them.
//!
//! prost drops custom options, so they are read here through prost-reflect, where protox has
//! decoded them against `qrpc/options.proto`.

use std::collections::HashMap;
use std::fmt;

use prost_reflect::{DescriptorPool, Kind, MessageDescriptor, Value};

use crate::names;

/// A method id or push channel that breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// A method has no `(qrpc.method_id)` option.
    #[error(
        "{file}: method {service}.{method} has no method id: add `option (qrpc.method_id) = N;` (import \"qrpc/options.proto\")"
    )]
    Missing {
        /// The `.proto` file.
        file: String,
        /// Fully qualified service name.
        service: String,
        /// Method name.
        method: String,
    },
    /// A method id is 0 or above 65535.
    #[error("{file}: method {service}.{method} has method id {value}, outside 1..=65535")]
    OutOfRange {
        /// The `.proto` file.
        file: String,
        /// Fully qualified service name.
        service: String,
        /// Method name.
        method: String,
        /// The id given.
        value: u32,
    },
    /// Two methods share an id.
    #[error("duplicate method id {id}: {first} and {second}")]
    Duplicate {
        /// The id.
        id: u16,
        /// The first method, as `file: service.method`.
        first: String,
        /// The second method.
        second: String,
    },
    /// A method's generated name is another's `*_with_metadata` twin (`Say` and
    /// `SayWithMetadata`, where `Say` returns one response).
    #[error(
        "{file}: methods {service}.{method} and {service}.{twin} would both generate `{generated}`: rename one"
    )]
    NameClash {
        /// The `.proto` file.
        file: String,
        /// Fully qualified service name.
        service: String,
        /// The method whose `*_with_metadata` twin clashes.
        method: String,
        /// The method named like the twin.
        twin: String,
        /// The generated name both would take.
        generated: String,
    },
    /// A method that streams its request is marked idempotent: a request stream cannot be
    /// replayed, so such a method is never sent as 0-RTT data.
    #[error(
        "{file}: method {service}.{method} streams its request and cannot be idempotent: only unary and server-streaming methods may set idempotency_level"
    )]
    StreamingIdempotent {
        /// The `.proto` file.
        file: String,
        /// Fully qualified service name.
        service: String,
        /// Method name.
        method: String,
    },
    /// Two push channels of one package use the same event type, so a client could not tell
    /// their events apart.
    #[error("event type {event_type} of package {package} is used by both {first} and {second}")]
    SharedEventType {
        /// The package.
        package: String,
        /// The event type.
        event_type: u16,
        /// The first channel.
        first: String,
        /// The second channel.
        second: String,
    },
    /// A push channel message is malformed.
    #[error("{file}: push channel {message}: {reason}")]
    PushChannel {
        /// The `.proto` file.
        file: String,
        /// Fully qualified message name.
        message: String,
        /// What is wrong.
        reason: String,
    },
}

/// One event of a push channel.
#[derive(Debug, Clone)]
pub(crate) struct PushEventDef {
    pub(crate) variant: String,
    pub(crate) event_type: u16,
    /// Rust path of the event message, relative to the package module.
    pub(crate) rust_type: String,
    pub(crate) comments: Vec<String>,
}

/// A message marked `(qrpc.push_channel)`.
#[derive(Debug, Clone)]
pub(crate) struct PushChannel {
    pub(crate) name: String,
    pub(crate) comments: Vec<String>,
    pub(crate) events: Vec<PushEventDef>,
    /// Events travel as QUIC datagrams (`(qrpc.unreliable)`).
    pub(crate) unreliable: bool,
}

/// What the generator needs to know of one method.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MethodDef {
    pub(crate) id: u16,
    /// `idempotency_level` is IDEMPOTENT or NO_SIDE_EFFECTS.
    pub(crate) idempotent: bool,
}

/// What the service generator needs beyond prost's view.
#[derive(Debug, Default)]
pub(crate) struct Model {
    /// (fully qualified service, method proto name) -> id and flags
    pub(crate) methods: HashMap<(String, String), MethodDef>,
    /// package -> push channels
    pub(crate) push: HashMap<String, Vec<PushChannel>>,
}

struct Located<'a>(&'a str, &'a str, &'a str);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}.{}", self.0, self.1, self.2)
    }
}

pub(crate) fn collect(pool: &DescriptorPool) -> Result<Model, IdError> {
    let mut model = Model::default();
    let method_ext = pool.get_extension_by_name("qrpc.method_id");
    let push_ext = pool.get_extension_by_name("qrpc.push_channel");
    let unreliable_ext = pool.get_extension_by_name("qrpc.unreliable");
    let mut seen: HashMap<u16, String> = HashMap::new();

    for service in pool.services() {
        let file = service.parent_file().name().to_owned();
        // Methods with one response get a `<name>_with_metadata` twin in generated clients.
        for method in service.methods().filter(|m| !m.is_server_streaming()) {
            let generated = format!("{}_with_metadata", names::snake(method.name()));
            if let Some(twin) = service
                .methods()
                .find(|other| names::snake(other.name()) == generated)
            {
                return Err(IdError::NameClash {
                    file,
                    service: service.full_name().to_owned(),
                    method: method.name().to_owned(),
                    twin: twin.name().to_owned(),
                    generated,
                });
            }
        }
        for method in service.methods() {
            let missing = || IdError::Missing {
                file: file.clone(),
                service: service.full_name().to_owned(),
                method: method.name().to_owned(),
            };
            let ext = method_ext.as_ref().ok_or_else(missing)?;
            let options = method.options();
            if !options.has_extension(ext) {
                return Err(missing());
            }
            let value = match options.get_extension(ext).as_ref() {
                Value::U32(v) => *v,
                _ => return Err(missing()),
            };
            let id = u16::try_from(value)
                .ok()
                .filter(|id| *id != 0)
                .ok_or_else(|| IdError::OutOfRange {
                    file: file.clone(),
                    service: service.full_name().to_owned(),
                    method: method.name().to_owned(),
                    value,
                })?;
            let here = Located(&file, service.full_name(), method.name()).to_string();
            if let Some(first) = seen.get(&id) {
                return Err(IdError::Duplicate {
                    id,
                    first: first.clone(),
                    second: here,
                });
            }
            seen.insert(id, here);
            let idempotent = method
                .method_descriptor_proto()
                .options
                .as_ref()
                .is_some_and(|o| {
                    o.idempotency_level()
                        != prost_types::method_options::IdempotencyLevel::IdempotencyUnknown
                });
            if idempotent && method.is_client_streaming() {
                return Err(IdError::StreamingIdempotent {
                    file: file.clone(),
                    service: service.full_name().to_owned(),
                    method: method.name().to_owned(),
                });
            }
            model.methods.insert(
                (service.full_name().to_owned(), method.name().to_owned()),
                MethodDef { id, idempotent },
            );
        }
    }

    if let Some(push_ext) = push_ext {
        for message in pool.all_messages() {
            let options = message.options();
            if options.has_extension(&push_ext)
                && matches!(options.get_extension(&push_ext).as_ref(), Value::Bool(true))
            {
                let unreliable = unreliable_ext.as_ref().is_some_and(|ext| {
                    options.has_extension(ext)
                        && matches!(options.get_extension(ext).as_ref(), Value::Bool(true))
                });
                let channel = push_channel(&message, unreliable)?;
                model
                    .push
                    .entry(message.package_name().to_owned())
                    .or_default()
                    .push(channel);
            }
        }
    }
    for (package, channels) in &model.push {
        let mut owners: HashMap<u16, &str> = HashMap::new();
        for channel in channels {
            for event in &channel.events {
                if let Some(first) = owners.insert(event.event_type, &channel.name)
                    && first != channel.name
                {
                    return Err(IdError::SharedEventType {
                        package: package.clone(),
                        event_type: event.event_type,
                        first: first.to_owned(),
                        second: channel.name.clone(),
                    });
                }
            }
        }
    }
    Ok(model)
}

fn push_channel(message: &MessageDescriptor, unreliable: bool) -> Result<PushChannel, IdError> {
    let err = |reason: String| IdError::PushChannel {
        file: message.parent_file().name().to_owned(),
        message: message.full_name().to_owned(),
        reason,
    };
    if message.parent_message().is_some() {
        return Err(err("must be a top-level message".into()));
    }
    let mut oneofs = message.oneofs().filter(|o| !o.is_synthetic());
    let oneof = oneofs
        .next()
        .ok_or_else(|| err("needs one oneof listing the events".into()))?;
    if oneofs.next().is_some() || message.fields().count() != oneof.fields().count() {
        return Err(err(
            "must contain exactly one oneof and no other fields".into()
        ));
    }
    let mut events = Vec::new();
    for field in oneof.fields() {
        let Kind::Message(event) = field.kind() else {
            return Err(err(format!("event `{}` must be a message", field.name())));
        };
        if event.package_name() != message.package_name() || event.parent_message().is_some() {
            return Err(err(format!(
                "event `{}` must be a top-level message of package {}",
                field.name(),
                message.package_name()
            )));
        }
        let event_type = u16::try_from(field.number()).map_err(|_| {
            err(format!(
                "event `{}` has field number {} above 65535",
                field.name(),
                field.number()
            ))
        })?;
        events.push(PushEventDef {
            variant: names::upper_camel(field.name()),
            event_type,
            rust_type: names::upper_camel(event.name()),
            comments: leading_comments(&field.parent_file(), field.path()),
        });
    }
    Ok(PushChannel {
        name: message.name().to_owned(),
        comments: leading_comments(&message.parent_file(), message.path()),
        events,
        unreliable,
    })
}

/// The leading comment of the element at `path` in `file`, split into lines.
pub(crate) fn leading_comments(file: &prost_reflect::FileDescriptor, path: &[i32]) -> Vec<String> {
    file.file_descriptor_proto()
        .source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|l| l.path.as_slice() == path))
        .and_then(|l| l.leading_comments.as_deref())
        .map(|text| {
            text.lines()
                .map(|l| l.strip_prefix(' ').unwrap_or(l).to_owned())
                .collect()
        })
        .unwrap_or_default()
}
