//! # qrpc-build — code generation for qrpc
//!
//! Call it from `build.rs`; it compiles `.proto` files with [protox] (no system `protoc`) and
//! emits prost messages plus, for each service:
//!
//! * `<service>_server` — a trait with one `async fn` per method, an adapter (`<Service>Server`)
//!   that registers every method with a qrpc server, the methods' [`MethodInfo`] constants and a
//!   `DESCRIPTOR`;
//! * `<service>_client` — a typed client with one async method per RPC.
//!
//! and for each message marked `option (qrpc.push_channel) = true`, a module with a typed event
//! enum, a server-side sender and a client-side stream.
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     qrpc_build::compile_protos(&["proto/echo.proto"], &["proto"])?;
//!     Ok(())
//! }
//! ```
//!
//! Method ids are explicit: every method carries `option (qrpc.method_id) = N;` from
//! `qrpc/options.proto`, which qrpc-build provides to the compiler itself. A missing or
//! duplicate id fails the build with the file, service and method named.
//!
//! A unary or server-streaming method with the standard `option idempotency_level =
//! IDEMPOTENT;` (or `NO_SIDE_EFFECTS`) is marked idempotent in its `MethodInfo`: the
//! generated client sends it as 0-RTT data on a resumed connection, and the server accepts
//! only such methods from 0-RTT data. A push channel with `option (qrpc.unreliable) = true;`
//! sends its events as QUIC datagrams.
//!
//! [`MethodInfo`]: https://docs.rs/qrpc

#![warn(unreachable_pub, unnameable_types)]

mod ids;
mod names;
mod push;
mod service;
pub mod typescript;

use std::path::{Path, PathBuf};

use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

pub use ids::IdError;

/// The `qrpc/options.proto` file qrpc-build provides to every compilation.
pub const OPTIONS_PROTO: &str = include_str!("../proto/qrpc/options.proto");

/// Why code generation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `.proto` files did not compile.
    #[error("{location}{0}", location = .0.file().map(|f| format!("{f}: ")).unwrap_or_default())]
    Protox(#[from] protox::Error),
    /// Method ids or push channels are missing, duplicated or out of range.
    #[error(transparent)]
    Ids(#[from] IdError),
    /// prost-build failed to generate or write code.
    #[error("code generation failed: {0}")]
    Io(#[from] std::io::Error),
    /// `OUT_DIR` is not set and no output directory was given.
    #[error("OUT_DIR is not set: call Builder::out_dir outside build scripts")]
    NoOutDir,
}

/// Compiles `protos` (found under `includes`) into `$OUT_DIR` with default settings.
pub fn compile_protos(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> Result<(), Error> {
    configure().compile(protos, includes)
}

/// A builder with default settings.
pub fn configure() -> Builder {
    Builder::default()
}

type ProstHook = std::sync::Arc<dyn Fn(&mut prost_build::Config) + Send + Sync>;

/// Code generation settings.
#[derive(Clone)]
pub struct Builder {
    out_dir: Option<PathBuf>,
    include_file: Option<String>,
    emit_rerun_if_changed: bool,
    bytes: bool,
    prost_hooks: Vec<ProstHook>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("out_dir", &self.out_dir)
            .field("include_file", &self.include_file)
            .field("emit_rerun_if_changed", &self.emit_rerun_if_changed)
            .field("bytes", &self.bytes)
            .field("prost_hooks", &self.prost_hooks.len())
            .finish()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            out_dir: None,
            include_file: Some("_qrpc_include.rs".into()),
            emit_rerun_if_changed: true,
            bytes: true,
            prost_hooks: Vec::new(),
        }
    }
}

impl Builder {
    /// Where to write the generated files (default: `$OUT_DIR`).
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// The name of a file that includes every generated package in nested modules
    /// (default `_qrpc_include.rs`); `None` writes no such file.
    pub fn include_file(mut self, name: Option<&str>) -> Self {
        self.include_file = name.map(str::to_owned);
        self
    }

    /// Whether to print `cargo:rerun-if-changed` for every input (default true).
    pub fn emit_rerun_if_changed(mut self, yes: bool) -> Self {
        self.emit_rerun_if_changed = yes;
        self
    }

    /// Whether `bytes` fields become `bytes::Bytes` instead of `Vec<u8>` (default true).
    pub fn bytes(mut self, yes: bool) -> Self {
        self.bytes = yes;
        self
    }

    /// Adjusts the [`prost_build::Config`] before generation, as `tonic-build` allows: extern
    /// paths, type and field attributes, and so on. Hooks run in the order given, after
    /// qrpc-build's own settings (output directory, include file, `bytes`), so a hook may
    /// override them; the service generator is always qrpc's.
    ///
    /// ```no_run
    /// qrpc_build::configure()
    ///     .prost_config(|config| {
    ///         config.type_attribute(".echo.v1.Msg", "#[derive(Eq, Hash)]");
    ///     })
    ///     .compile(&["proto/echo.proto"], &["proto"])
    ///     .expect("protos compile");
    /// ```
    pub fn prost_config(
        mut self,
        hook: impl Fn(&mut prost_build::Config) + Send + Sync + 'static,
    ) -> Self {
        self.prost_hooks.push(std::sync::Arc::new(hook));
        self
    }

    /// Compiles `protos`, resolving imports under `includes`, and writes the generated code.
    pub fn compile(
        self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<(), Error> {
        let out_dir = match self.out_dir {
            Some(dir) => dir,
            None => std::env::var_os("OUT_DIR")
                .map(PathBuf::from)
                .ok_or(Error::NoOutDir)?,
        };
        let compiler = open(protos, includes)?;

        if self.emit_rerun_if_changed {
            for file in compiler.files() {
                if let Some(path) = file.path() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }

        let pool = compiler.descriptor_pool();
        let model = ids::collect(&pool)?;

        let mut config = prost_build::Config::new();
        config.out_dir(&out_dir);
        if let Some(include) = &self.include_file {
            config.include_file(include);
        }
        if self.bytes {
            config.bytes(["."]);
        }
        for hook in &self.prost_hooks {
            hook(&mut config);
        }
        let channels = model.push.clone();
        let finalized = std::rc::Rc::default();
        config.service_generator(Box::new(service::Generator::new(
            model,
            std::rc::Rc::clone(&finalized),
        )));
        config.compile_fds(compiler.file_descriptor_set())?;
        // prost finalizes only packages that have services: append the push channels of the
        // others to their files.
        for (package, channels) in channels {
            if finalized.borrow().contains(&package) {
                continue;
            }
            let file = out_dir.join(if package.is_empty() {
                "_.rs".to_owned()
            } else {
                format!("{package}.rs")
            });
            let mut code = std::fs::read_to_string(&file)?;
            for channel in &channels {
                code.push_str(&service::pretty(push::generate(channel)));
            }
            std::fs::write(&file, code)?;
        }
        Ok(())
    }
}

/// Compiles `protos`, resolving imports under `includes`, `google/protobuf/*` and
/// `qrpc/options.proto`.
fn open(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> Result<protox::Compiler, Error> {
    let mut resolver = ChainFileResolver::new();
    for include in includes {
        resolver.add(IncludeFileResolver::new(include.as_ref().to_path_buf()));
    }
    resolver.add(GoogleFileResolver::new());
    resolver.add(OptionsResolver);
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(protos.iter().map(AsRef::as_ref))?;
    Ok(compiler)
}

/// Provides `qrpc/options.proto` without an include path.
struct OptionsResolver;

impl FileResolver for OptionsResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == "qrpc/options.proto" {
            File::from_source(name, OPTIONS_PROTO)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}
