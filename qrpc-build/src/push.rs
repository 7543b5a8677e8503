//! Code for push channels: a typed event enum, its wire mapping, and sender/stream aliases.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::ids::PushChannel;
use crate::names::{docs, snake};

pub(crate) fn generate(channel: &PushChannel) -> TokenStream {
    let module = format_ident!("{}_push", snake(&channel.name));
    let channel_docs = docs(&channel.comments);
    let mut variants = Vec::new();
    let mut consts = Vec::new();
    let mut type_arms = Vec::new();
    let mut encode_arms = Vec::new();
    let mut decode_arms = Vec::new();
    let mut event_types = Vec::new();
    let unreliable = channel.unreliable;
    for event in &channel.events {
        let variant = format_ident!("{}", event.variant);
        let ty = syn::parse_str::<syn::Path>(&format!("super::{}", event.rust_type))
            .map_or_else(|e| e.to_compile_error(), |p| quote!(#p));
        let const_ident = format_ident!("{}", snake(&event.variant).to_uppercase());
        let event_type = event.event_type;
        event_types.push(quote!(#const_ident));
        let event_docs = docs(&event.comments);
        let const_doc = format!(" Event type of [`Event::{}`].", event.variant);
        variants.push(quote! { #event_docs #variant(#ty), });
        consts.push(quote! { #[doc = #const_doc] pub const #const_ident: u16 = #event_type; });
        type_arms.push(quote! { Self::#variant(_) => #const_ident, });
        encode_arms.push(
            quote! { Self::#variant(m) => ::qrpc::codegen::prost::Message::encode_to_vec(m), },
        );
        decode_arms.push(quote! {
            #const_ident => ::qrpc::codegen::prost::Message::decode(payload).map(Self::#variant).map_err(Into::into),
        });
    }
    let module_doc = format!(" Push events of the `{}` channel.", channel.name);
    quote! {
        #[doc = #module_doc]
        #[allow(dead_code, clippy::all, missing_docs)]
        pub mod #module {
            #(#consts)*

            /// Every event type of this channel, for telling its frames from other channels'.
            pub const EVENT_TYPES: &[u16] = &[#(#event_types),*];

            #channel_docs
            #[derive(Debug, Clone, PartialEq)]
            pub enum Event {
                #(#variants)*
            }

            impl ::qrpc::codegen::PushEvent for Event {
                const UNRELIABLE: bool = #unreliable;

                fn event_type(&self) -> u16 {
                    match self { #(#type_arms)* }
                }

                fn encode_payload(&self) -> ::qrpc::codegen::Bytes {
                    ::qrpc::codegen::Bytes::from(match self { #(#encode_arms)* })
                }

                fn decode_payload(
                    event_type: u16,
                    payload: ::qrpc::codegen::Bytes,
                ) -> ::core::result::Result<Self, ::qrpc::codegen::Status> {
                    match event_type {
                        #(#decode_arms)*
                        other => ::core::result::Result::Err(::qrpc::codegen::Status::unimplemented(
                            ::std::format!("unknown push event type {other}"),
                        )),
                    }
                }
            }

            /// Sends this channel's events to one connection (server side).
            pub type Sender = ::qrpc::codegen::TypedPushSender<Event>;
            /// This channel's events as a client receives them.
            pub type Events = ::qrpc::codegen::TypedPushEvents<Event>;
        }
    }
}
