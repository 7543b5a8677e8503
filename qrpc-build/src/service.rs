//! prost-build service generator: server traits, adapters, clients, descriptors, push events.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::ids::Model;
use crate::names::{docs, snake};
use crate::push;

pub(crate) struct Generator {
    model: Model,
    /// Packages whose push channels were written; prost finalizes only packages with
    /// services, and the builder writes the others' channels itself.
    finalized: std::rc::Rc<std::cell::RefCell<std::collections::HashSet<String>>>,
}

impl Generator {
    pub(crate) fn new(
        model: Model,
        finalized: std::rc::Rc<std::cell::RefCell<std::collections::HashSet<String>>>,
    ) -> Self {
        Self { model, finalized }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Unary,
    ServerStreaming,
    ClientStreaming,
    Bidi,
}

/// A type path prost gave relative to the package module, seen from one module deeper.
fn type_path(rust_type: &str) -> TokenStream {
    // Absolute paths and `()` (google.protobuf.Empty) stay as they are.
    let path = if rust_type.starts_with("::") || rust_type.starts_with('(') {
        rust_type.to_owned()
    } else {
        format!("super::{rust_type}")
    };
    // prost's types are valid Rust types; a parse failure would be a prost bug, reported
    // where the generated code is compiled.
    syn::parse_str::<syn::Type>(&path).map_or_else(|e| e.to_compile_error(), |p| quote!(#p))
}

impl prost_build::ServiceGenerator for Generator {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        let full_service = if service.package.is_empty() {
            service.proto_name.clone()
        } else {
            format!("{}.{}", service.package, service.proto_name)
        };
        let service_ident = format_ident!("{}", service.name);
        let server_ident = format_ident!("{}Server", service.name);
        let client_ident = format_ident!("{}Client", service.name);
        let server_mod = format_ident!("{}_server", snake(&service.name));
        let client_mod = format_ident!("{}_client", snake(&service.name));
        let service_docs = docs(&service.comments.leading);

        let mut consts = Vec::new();
        let mut const_idents = Vec::new();
        let mut trait_methods = Vec::new();
        let mut arms = Vec::new();
        let mut client_methods = Vec::new();

        for method in &service.methods {
            // `ids::collect` checked every method of every service in the pool, so a miss is a
            // bug here; it still fails the build with the method named.
            let Some(def) = self
                .model
                .methods
                .get(&(full_service.clone(), method.proto_name.clone()))
                .copied()
            else {
                let message = format!(
                    "qrpc-build: method {full_service}.{} has no method id",
                    method.proto_name
                );
                buf.push_str(&quote!(::core::compile_error!(#message);).to_string());
                continue;
            };
            let id = def.id;
            let idempotent = def.idempotent;
            let kind = match (method.client_streaming, method.server_streaming) {
                (false, false) => Kind::Unary,
                (false, true) => Kind::ServerStreaming,
                (true, false) => Kind::ClientStreaming,
                (true, true) => Kind::Bidi,
            };
            let const_ident = format_ident!("{}", snake(&method.proto_name).to_uppercase());
            let method_ident = format_ident!("{}", method.name);
            let proto_name = &method.proto_name;
            let input = type_path(&method.input_type);
            let output = type_path(&method.output_type);
            let method_docs = docs(&method.comments.leading);
            let with_metadata_ident =
                format_ident!("{}_with_metadata", method.name.trim_start_matches("r#"));
            let with_metadata_docs = {
                let line = format!(
                    " [`{}`](Self::{}), returning the response with the server's metadata (the call \
                     always carries the call extension, so the server can answer metadata).",
                    method.name.trim_start_matches("r#"),
                    method.name
                );
                quote!(#[doc = #line])
            };
            let kind_tokens = match kind {
                Kind::Unary => quote!(Unary),
                Kind::ServerStreaming => quote!(ServerStreaming),
                Kind::ClientStreaming => quote!(ClientStreaming),
                Kind::Bidi => quote!(Bidi),
            };
            let const_doc = format!(" `{full_service}/{proto_name}`: method id {id}.");
            consts.push(quote! {
                #[doc = #const_doc]
                pub const #const_ident: ::qrpc::codegen::MethodInfo = ::qrpc::codegen::MethodInfo {
                    id: #id,
                    service: #full_service,
                    name: #proto_name,
                    kind: ::qrpc::codegen::CallKind::#kind_tokens,
                    idempotent: #idempotent,
                };
            });
            const_idents.push(const_ident.clone());

            let (request_ty, response_ty) = match kind {
                Kind::Unary => (quote!(#input), quote!(#output)),
                Kind::ServerStreaming => (
                    quote!(#input),
                    quote!(::qrpc::codegen::ResponseStream<#output>),
                ),
                Kind::ClientStreaming => {
                    (quote!(::qrpc::codegen::Streaming<#input>), quote!(#output))
                }
                Kind::Bidi => (
                    quote!(::qrpc::codegen::Streaming<#input>),
                    quote!(::qrpc::codegen::ResponseStream<#output>),
                ),
            };
            trait_methods.push(quote! {
                #method_docs
                fn #method_ident(
                    &self,
                    ctx: ::qrpc::codegen::RequestContext,
                    request: #request_ty,
                ) -> impl ::core::future::Future<
                    Output = ::core::result::Result<#response_ty, ::qrpc::codegen::Status>,
                > + ::core::marker::Send;
            });
            let serve = match kind {
                Kind::Unary => quote!(serve_unary),
                Kind::ServerStreaming => quote!(serve_server_streaming),
                Kind::ClientStreaming => quote!(serve_client_streaming),
                Kind::Bidi => quote!(serve_bidi),
            };
            let message_ty = match kind {
                Kind::Unary | Kind::ServerStreaming => quote!(#input),
                Kind::ClientStreaming | Kind::Bidi => quote!(::qrpc::codegen::Streaming<#input>),
            };
            arms.push(quote! {
                #id => ::qrpc::codegen::#serve(request, move |ctx, message: #message_ty| async move {
                    inner.#method_ident(ctx, message).await
                }),
            });
            client_methods.push(match kind {
                Kind::Unary => quote! {
                    #method_docs
                    ///
                    /// `request` is the message, a reference to it, or a `qrpc::Request` with a
                    /// timeout and metadata.
                    pub async fn #method_ident(&self, request: impl ::qrpc::codegen::IntoRequest<#input>) -> ::core::result::Result<#output, ::qrpc::codegen::Status> {
                        ::qrpc::codegen::unary(&self.inner, &super::#server_mod::#const_ident, request).await.map(::qrpc::codegen::Response::into_inner)
                    }

                    #with_metadata_docs
                    pub async fn #with_metadata_ident(&self, request: impl ::qrpc::codegen::IntoRequest<#input>) -> ::core::result::Result<::qrpc::codegen::Response<#output>, ::qrpc::codegen::Status> {
                        ::qrpc::codegen::unary_with_metadata(&self.inner, &super::#server_mod::#const_ident, request).await
                    }
                },
                Kind::ServerStreaming => quote! {
                    #method_docs
                    ///
                    /// `request` is the message, a reference to it, or a `qrpc::Request` with a
                    /// timeout and metadata; the stream's `metadata()` is the server's.
                    pub async fn #method_ident(&self, request: impl ::qrpc::codegen::IntoRequest<#input>) -> ::core::result::Result<::qrpc::codegen::Streaming<#output>, ::qrpc::codegen::Status> {
                        ::qrpc::codegen::server_streaming(&self.inner, &super::#server_mod::#const_ident, request).await
                    }
                },
                Kind::ClientStreaming => quote! {
                    #method_docs
                    ///
                    /// `requests` is a stream of messages, or a `qrpc::Request` wrapping one with
                    /// a timeout and metadata.
                    pub async fn #method_ident(
                        &self,
                        requests: impl ::qrpc::codegen::IntoStreamingRequest<Message = #input>,
                    ) -> ::core::result::Result<#output, ::qrpc::codegen::Status> {
                        ::qrpc::codegen::client_streaming(&self.inner, &super::#server_mod::#const_ident, requests).await.map(::qrpc::codegen::Response::into_inner)
                    }

                    #with_metadata_docs
                    pub async fn #with_metadata_ident(
                        &self,
                        requests: impl ::qrpc::codegen::IntoStreamingRequest<Message = #input>,
                    ) -> ::core::result::Result<::qrpc::codegen::Response<#output>, ::qrpc::codegen::Status> {
                        ::qrpc::codegen::client_streaming_with_metadata(&self.inner, &super::#server_mod::#const_ident, requests).await
                    }
                },
                Kind::Bidi => quote! {
                    #method_docs
                    ///
                    /// `requests` is a stream of messages, or a `qrpc::Request` wrapping one with
                    /// a timeout and metadata; the response stream's `metadata()` is the server's.
                    pub async fn #method_ident(
                        &self,
                        requests: impl ::qrpc::codegen::IntoStreamingRequest<Message = #input>,
                    ) -> ::core::result::Result<::qrpc::codegen::Streaming<#output>, ::qrpc::codegen::Status> {
                        ::qrpc::codegen::bidi(&self.inner, &super::#server_mod::#const_ident, requests).await
                    }
                },
            });
        }

        let server_mod_doc =
            format!(" Server side of `{full_service}`: its trait, adapter and method ids.");
        let client_mod_doc = format!(" Client of `{full_service}`.");
        let adapter_doc = format!(
            " Serves a [`{}`] implementation: a tower service over raw calls; pass it to \
             `qrpc::Server::add_service`, alone or behind per-service layers \
             (`qrpc::LayerExt::named_layer`).",
            service.name
        );
        let tokens = quote! {
            #[doc = #server_mod_doc]
            #[allow(dead_code, clippy::all, missing_docs)]
            pub mod #server_mod {
                #(#consts)*

                /// Every method of the service, for logging and tooling.
                pub static DESCRIPTOR: ::qrpc::codegen::ServiceDescriptor = ::qrpc::codegen::ServiceDescriptor {
                    name: #full_service,
                    methods: &[#(#const_idents),*],
                };

                #service_docs
                pub trait #service_ident: ::core::marker::Send + ::core::marker::Sync + 'static {
                    #(#trait_methods)*
                }

                #[doc = #adapter_doc]
                #[derive(Debug)]
                pub struct #server_ident<T> {
                    inner: ::std::sync::Arc<T>,
                }

                impl<T: #service_ident> #server_ident<T> {
                    /// Wraps an implementation.
                    pub fn new(inner: T) -> Self {
                        Self { inner: ::std::sync::Arc::new(inner) }
                    }

                    /// Wraps a shared implementation.
                    pub fn from_arc(inner: ::std::sync::Arc<T>) -> Self {
                        Self { inner }
                    }
                }

                impl<T> ::core::clone::Clone for #server_ident<T> {
                    fn clone(&self) -> Self {
                        Self { inner: ::std::sync::Arc::clone(&self.inner) }
                    }
                }

                impl<T> ::qrpc::codegen::NamedService for #server_ident<T> {
                    fn descriptor(&self) -> &'static ::qrpc::codegen::ServiceDescriptor {
                        &DESCRIPTOR
                    }
                }

                impl<T: #service_ident> ::qrpc::codegen::Service<::qrpc::codegen::ServerRequest<::qrpc::codegen::RequestBody>> for #server_ident<T> {
                    type Response = ::qrpc::codegen::ServerResponse<::qrpc::codegen::ResponseBody>;
                    type Error = ::qrpc::codegen::Status;
                    type Future = ::qrpc::codegen::CallFuture;

                    fn poll_ready(
                        &mut self,
                        _cx: &mut ::core::task::Context<'_>,
                    ) -> ::core::task::Poll<::core::result::Result<(), Self::Error>> {
                        ::core::task::Poll::Ready(::core::result::Result::Ok(()))
                    }

                    fn call(&mut self, request: ::qrpc::codegen::ServerRequest<::qrpc::codegen::RequestBody>) -> Self::Future {
                        let inner = ::std::sync::Arc::clone(&self.inner);
                        match request.context().method_id() {
                            #(#arms)*
                            _ => ::qrpc::codegen::serve_unimplemented(&request),
                        }
                    }
                }
            }

            #[doc = #client_mod_doc]
            #[allow(dead_code, clippy::all, missing_docs)]
            pub mod #client_mod {
                #service_docs
                ///
                /// Calls go through `T`: a `qrpc::Client` (the default), or any tower service
                /// over `qrpc::CallRequest` (for example a client behind client-side layers).
                #[derive(Debug, Clone)]
                pub struct #client_ident<T = ::qrpc::codegen::Client> {
                    inner: T,
                }

                impl<T: ::qrpc::codegen::Transport> #client_ident<T> {
                    /// A typed client over a transport: a connected `qrpc::Client` (cheap to
                    /// clone, shareable with other typed clients) or a layered one.
                    pub fn new(inner: T) -> Self {
                        Self { inner }
                    }

                    /// The transport beneath.
                    pub fn inner(&self) -> &T {
                        &self.inner
                    }

                    #(#client_methods)*
                }
            }
        };
        buf.push_str(&pretty(tokens));
    }

    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        self.finalized.borrow_mut().insert(package.to_owned());
        if let Some(channels) = self.model.push.get(package) {
            for channel in channels {
                buf.push_str(&pretty(push::generate(channel)));
            }
        }
    }
}

/// Formats generated items like rustfmt would, so generated files are readable. Tokens that do
/// not parse as a file (which would be a generator bug) are written as they are, and the
/// compiler reports them where the file is included.
pub(crate) fn pretty(tokens: TokenStream) -> String {
    match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(_) => tokens.to_string(),
    }
}
