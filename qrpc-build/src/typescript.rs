//! TypeScript clients for browsers, from the same `.proto` files.
//!
//! For each `.proto` file given (not its imports) that has services or push channels, writes
//! `<dir>/<name>_qrpc.ts` beside where protobuf-es writes `<name>_pb.ts`: a typed client per
//! service (method ids and call kinds from the same options the Rust code uses) and a decoder
//! per push channel. The message types come from protobuf-es (`protoc-gen-es` with
//! `target=ts,import_extension=js`), run by `buf generate` on the descriptor set written here
//! (no `protoc`), so both read one compilation.
//!
//! ```no_run
//! qrpc_build::typescript::TypeScript::new("web/gen")
//!     .descriptor_set("web/gen/protos.binpb")
//!     .compile(&["proto/echo/v1/echo.proto"], &["proto"])
//!     .expect("protos compile");
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use prost_reflect::{DescriptorPool, FileDescriptor, Kind, MessageDescriptor, MethodDescriptor};

use crate::Error;
use crate::ids::{self, Model};

/// Settings of the TypeScript generator.
#[derive(Debug, Clone)]
pub struct TypeScript {
    out_dir: PathBuf,
    runtime: String,
    descriptor_set: Option<PathBuf>,
}

impl TypeScript {
    /// Writes under `out_dir` (the directory protobuf-es writes to).
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        Self {
            out_dir: out_dir.into(),
            runtime: "@quicproquo/qrpc".into(),
            descriptor_set: None,
        }
    }

    /// The module the generated code imports the qrpc client from (default
    /// `@quicproquo/qrpc`).
    pub fn runtime_import(mut self, module: impl Into<String>) -> Self {
        self.runtime = module.into();
        self
    }

    /// Also writes the compiled files (a `FileDescriptorSet`, imports included) to `path`,
    /// as input for `buf generate` (a `binary_image` input) and protobuf-es.
    pub fn descriptor_set(mut self, path: impl Into<PathBuf>) -> Self {
        self.descriptor_set = Some(path.into());
        self
    }

    /// Compiles `protos` (found under `includes`) and writes the clients; returns the files
    /// written.
    pub fn compile(
        self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<Vec<PathBuf>, Error> {
        let compiler = crate::open(protos, includes)?;
        let pool = compiler.descriptor_pool();
        let model = ids::collect(&pool)?;
        if let Some(path) = &self.descriptor_set {
            write(path, &compiler.encode_file_descriptor_set())?;
        }
        let mut written = Vec::new();
        for file in compiler.files().filter(|f| !f.is_import()) {
            let Some(descriptor) = pool.get_file_by_name(file.name()) else {
                continue;
            };
            if let Some(code) = self.generate(&pool, &model, &descriptor) {
                let path = self.out_dir.join(sibling(descriptor.name(), "_qrpc.ts"));
                write(&path, code.as_bytes())?;
                written.push(path);
            }
        }
        Ok(written)
    }

    /// The code for `file`, if it has services or push channels.
    fn generate(
        &self,
        pool: &DescriptorPool,
        model: &Model,
        file: &FileDescriptor,
    ) -> Option<String> {
        let channels: Vec<_> = model
            .push
            .get(file.package_name())
            .into_iter()
            .flatten()
            .filter_map(|channel| {
                let name = qualified(file.package_name(), &channel.name);
                let message = pool.get_message_by_name(&name)?;
                (message.parent_file() == *file).then_some((channel, message))
            })
            .collect();
        if file.services().len() == 0 && channels.is_empty() {
            return None;
        }
        let mut imports = Imports::new(file);
        let mut runtime = std::collections::BTreeSet::new();
        let mut body = String::new();
        for service in file.services() {
            let service_docs = comments(file, service.path());
            let _ = writeln!(body);
            doc(
                &mut body,
                "",
                &service_docs,
                &format!("The `{}` service.", service.full_name()),
            );
            // protobuf-es exports the service's descriptor as `<Service>`: these are its
            // qrpc methods.
            let _ = writeln!(body, "export const {}Methods = {{", service.name());
            let _ = writeln!(body, "  typeName: {:?},", service.full_name());
            let _ = writeln!(body, "  methods: {{");
            let mut client = String::new();
            for method in service.methods() {
                let def = model
                    .methods
                    .get(&(service.full_name().to_owned(), method.name().to_owned()))?;
                let input = imports.message(&method.input());
                let output = imports.message(&method.output());
                let kind = kind(&method);
                let local = lower_camel(method.name());
                let docs = comments(file, method.path());
                doc(&mut body, "    ", &docs, &format!("`{}`.", method.name()));
                let _ = writeln!(
                    body,
                    "    {local}: {{ id: {}, name: {:?}, kind: {kind:?}, idempotent: {}, input: {}, output: {} }},",
                    def.id,
                    method.name(),
                    def.idempotent,
                    input.schema,
                    output.schema,
                );
                let (params, returns, helper) = match kind {
                    "unary" => (
                        format!("request: MessageInitShape<typeof {}>", input.schema),
                        format!("Promise<{}>", output.ty),
                        "unaryCall",
                    ),
                    "server_streaming" => (
                        format!("request: MessageInitShape<typeof {}>", input.schema),
                        format!("AsyncGenerator<{}, void, undefined>", output.ty),
                        "serverStreamingCall",
                    ),
                    "client_streaming" => (
                        format!("requests: Messages<typeof {}>", input.schema),
                        format!("Promise<{}>", output.ty),
                        "clientStreamingCall",
                    ),
                    _ => (
                        format!("requests: Messages<typeof {}>", input.schema),
                        format!("AsyncGenerator<{}, void, undefined>", output.ty),
                        "bidiCall",
                    ),
                };
                let arg = params.split(':').next().unwrap_or("request");
                runtime.insert(helper);
                runtime.insert("type CallOptions");
                if params.contains("Messages<") {
                    runtime.insert("type Messages");
                }
                doc(
                    &mut client,
                    "  ",
                    &docs,
                    &format!("Calls `{}`.", method.name()),
                );
                let _ = writeln!(
                    client,
                    "  {local}({params}, options?: CallOptions): {returns} {{\n    return {helper}(this.#client, {}Methods.methods.{local}, {arg}, options);\n  }}\n",
                    service.name(),
                );
            }
            let _ = writeln!(body, "  }},\n}} as const;\n");
            let _ = writeln!(body, "/** A typed client of `{}`. */", service.full_name());
            runtime.insert("type Client");
            let _ = writeln!(body, "export class {}Client {{", service.name());
            let _ = writeln!(body, "  readonly #client: Client;\n");
            let _ = writeln!(
                body,
                "  /** Calls `{}` through `client`. */\n  constructor(client: Client) {{\n    this.#client = client;\n  }}\n",
                service.full_name()
            );
            body.push_str(client.trim_end());
            let _ = writeln!(body, "\n}}");
        }
        for (channel, message) in channels {
            let name = &channel.name;
            let _ = writeln!(body);
            doc(
                &mut body,
                "",
                &channel.comments,
                &format!("The `{}` push channel.", message.full_name()),
            );
            let _ = writeln!(body, "export const {name}Channel = {{");
            let _ = writeln!(body, "  typeName: {:?},", message.full_name());
            let _ = writeln!(body, "  unreliable: {},", channel.unreliable);
            let _ = writeln!(body, "  events: {{");
            let mut union = Vec::new();
            for event in &channel.events {
                let field = message.get_field(u32::from(event.event_type))?;
                let Kind::Message(event_message) = field.kind() else {
                    return None;
                };
                let names = imports.message(&event_message);
                let case = lower_camel(field.name());
                let _ = writeln!(
                    body,
                    "    {}: {{ case: {case:?}, schema: {} }},",
                    event.event_type, names.schema
                );
                union.push(format!("{{ case: {case:?}; value: {} }}", names.ty));
            }
            let _ = writeln!(body, "  }},\n}} as const;\n");
            runtime.insert("decodeEvent");
            runtime.insert("type PushFrame");
            let _ = writeln!(body, "/** An event of `{}`. */", message.full_name());
            let _ = writeln!(
                body,
                "export type {name}Event =\n  | {};\n",
                union.join("\n  | ")
            );
            let _ = writeln!(
                body,
                "/** The event in `frame`, or `undefined` for an event type this code does not know. */\nexport function decode{name}(frame: PushFrame): {name}Event | undefined {{\n  return decodeEvent({name}Channel, frame) as {name}Event | undefined;\n}}"
            );
        }
        let mut code = String::new();
        let _ = writeln!(
            code,
            "// Generated by qrpc-build from {}: do not edit.\n",
            file.name()
        );
        if body.contains("MessageInitShape<") {
            let _ = writeln!(
                code,
                "import type {{ MessageInitShape }} from \"@bufbuild/protobuf\";"
            );
        }
        // Sorted as a formatter would: by name, `type` ignored.
        let mut runtime: Vec<&str> = runtime.into_iter().collect();
        runtime.sort_by_key(|name| name.trim_start_matches("type "));
        let _ = writeln!(
            code,
            "import {{\n{}}} from {:?};",
            runtime
                .iter()
                .map(|n| format!("  {n},\n"))
                .collect::<String>(),
            self.runtime
        );
        for (module, alias) in &imports.modules {
            let _ = writeln!(code, "import * as {alias} from {module:?};");
        }
        code.push_str(&body);
        Some(code)
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, bytes)?;
    Ok(())
}

fn qualified(package: &str, name: &str) -> String {
    if package.is_empty() {
        name.to_owned()
    } else {
        format!("{package}.{name}")
    }
}

/// `dir/name.proto` -> `dir/name<suffix>`.
fn sibling(proto: &str, suffix: &str) -> String {
    format!("{}{suffix}", proto.strip_suffix(".proto").unwrap_or(proto))
}

fn kind(method: &MethodDescriptor) -> &'static str {
    match (method.is_client_streaming(), method.is_server_streaming()) {
        (false, false) => "unary",
        (false, true) => "server_streaming",
        (true, false) => "client_streaming",
        (true, true) => "bidi",
    }
}

/// protobuf-es's name for a field or method: `foo_bar` / `FooBar` -> `fooBar`.
fn lower_camel(name: &str) -> String {
    let upper = crate::names::upper_camel(name);
    let mut chars = upper.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The element's leading comment, its blank lines left out (a JSDoc block has none).
fn comments(file: &FileDescriptor, path: &[i32]) -> Vec<String> {
    ids::leading_comments(file, path)
        .into_iter()
        .map(|l| l.trim_end().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn doc(out: &mut String, indent: &str, lines: &[String], fallback: &str) {
    let text: Vec<String> = if lines.is_empty() {
        vec![fallback.to_owned()]
    } else {
        lines.iter().map(|l| l.replace("*/", "* /")).collect()
    };
    if let [line] = text.as_slice() {
        let _ = writeln!(out, "{indent}/** {line} */");
    } else {
        let _ = writeln!(out, "{indent}/**");
        for line in text {
            let _ = writeln!(out, "{indent} * {line}");
        }
        let _ = writeln!(out, "{indent} */");
    }
}

/// How generated code names a message: its schema and its type.
struct Names {
    schema: String,
    ty: String,
}

/// The modules a generated file imports messages from.
struct Imports {
    dir: PathBuf,
    /// module -> alias
    modules: BTreeMap<String, String>,
}

impl Imports {
    fn new(file: &FileDescriptor) -> Self {
        Self {
            dir: Path::new(file.name())
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            modules: BTreeMap::new(),
        }
    }

    /// Names `message` by protobuf-es's rules: nested names joined by `_`, the schema
    /// suffixed `Schema`; the well-known types come from `@bufbuild/protobuf/wkt`.
    fn message(&mut self, message: &MessageDescriptor) -> Names {
        let file = message.parent_file();
        let module = if file.name().starts_with("google/protobuf/") {
            "@bufbuild/protobuf/wkt".to_owned()
        } else {
            relative(&self.dir, &sibling(file.name(), "_pb.js"))
        };
        let next = format!("$pb{}", self.modules.len());
        let alias = self.modules.entry(module).or_insert(next).clone();
        let package = file.package_name();
        let local = message
            .full_name()
            .strip_prefix(package)
            .map_or(message.full_name(), |rest| rest.trim_start_matches('.'))
            .replace('.', "_");
        Names {
            schema: format!("{alias}.{local}Schema"),
            ty: format!("{alias}.{local}"),
        }
    }
}

/// The import path of `target` (a path under the output root) from a file in `dir`.
fn relative(dir: &Path, target: &str) -> String {
    let from: Vec<_> = dir.components().collect();
    let to: Vec<_> = Path::new(target).components().collect();
    // The directories both share, then up from the rest of `dir` and down to `target`.
    let shared = from
        .iter()
        .zip(&to[..to.len().saturating_sub(1)])
        .take_while(|(a, b)| a == b)
        .count();
    let up = match from.len() - shared {
        0 => "./".to_owned(),
        n => "../".repeat(n),
    };
    let down: Vec<String> = to[shared..]
        .iter()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    format!("{up}{}", down.join("/"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_follow_protobuf_es() {
        assert_eq!(lower_camel("Say"), "say");
        assert_eq!(lower_camel("member_left"), "memberLeft");
        assert_eq!(
            sibling("echo/v1/echo.proto", "_pb.js"),
            "echo/v1/echo_pb.js"
        );
        assert_eq!(
            relative(Path::new("echo/v1"), "common/v1/common_pb.js"),
            "../../common/v1/common_pb.js"
        );
        assert_eq!(relative(Path::new(""), "a_pb.js"), "./a_pb.js");
        assert_eq!(
            relative(Path::new("echo/v1"), "echo/v1/echo_pb.js"),
            "./echo_pb.js"
        );
        assert_eq!(
            relative(Path::new("echo/v2"), "echo/v1/x_pb.js"),
            "../v1/x_pb.js"
        );
        assert_eq!(relative(Path::new("a"), "b_pb.js"), "../b_pb.js");
    }
}
