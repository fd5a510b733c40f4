//! The `#[service]` attribute of `wasmsocket-guest`; see that crate's docs.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{ImplItem, ItemImpl, parse_macro_input};

/// The session callbacks and the WIT flag each one sets.
const CALLBACKS: &[(&str, &str)] = &[
    ("on_open", "ON_OPEN"),
    ("on_text_message", "ON_TEXT_MESSAGE"),
    ("on_binary_message", "ON_BINARY_MESSAGE"),
    ("on_ping", "ON_PING"),
    ("on_pong", "ON_PONG"),
    ("on_idle_timeout", "ON_IDLE_TIMEOUT"),
    ("on_close", "ON_CLOSE"),
    ("on_error", "ON_ERROR"),
    ("on_timer", "ON_TIMER"),
];

/// Exports an `impl Service for T` block as the component's WebSocket service.
///
/// Write it on the `impl wasmsocket_guest::Service for YourType` block. It records which
/// callbacks the block implements (so the host skips the others, and answers pings
/// itself when `on_ping` is absent), declares where the component keeps the sessions
/// of `YourType` (one per connection), and exports the component's entry points.
/// Use it once per component.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[service] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let mut block = parse_macro_input!(item as ItemImpl);
    let is_service_impl = block
        .trait_
        .as_ref()
        .and_then(|(_, path, _)| path.segments.last())
        .is_some_and(|segment| segment.ident == "Service");
    if !is_service_impl {
        return syn::Error::new_spanned(
            &block.self_ty,
            "#[service] goes on an `impl Service for YourType` block",
        )
        .to_compile_error()
        .into();
    }
    if !block.generics.params.is_empty() {
        return syn::Error::new_spanned(
            &block.generics,
            "a component exports one concrete service type; remove the generics",
        )
        .to_compile_error()
        .into();
    }
    let mut implemented: Vec<_> = block
        .items
        .iter()
        .filter_map(|item| match item {
            ImplItem::Fn(function) => CALLBACKS
                .iter()
                .find(|(name, _)| function.sig.ident == name)
                .map(|(_, flag)| format_ident!("{flag}")),
            _ => None,
        })
        .collect();
    // `on_message` receives text and binary messages not taken by their own callbacks.
    let has_on_message = block
        .items
        .iter()
        .any(|item| matches!(item, ImplItem::Fn(function) if function.sig.ident == "on_message"));
    if has_on_message {
        for flag in ["ON_TEXT_MESSAGE", "ON_BINARY_MESSAGE"] {
            if !implemented.iter().any(|f| f == flag) {
                implemented.push(format_ident!("{flag}"));
            }
        }
    }
    block.items.push(syn::parse_quote! {
        #[doc(hidden)]
        fn __implemented_callbacks() -> ::wasmsocket_guest::Callbacks {
            ::wasmsocket_guest::Callbacks::empty() #( | ::wasmsocket_guest::Callbacks::#implemented )*
        }
    });
    let self_ty = &block.self_ty;
    quote! {
        #block

        impl ::wasmsocket_guest::__private::Stored for #self_ty {
            fn with_sessions<R>(
                f: impl FnOnce(&mut ::wasmsocket_guest::__private::Sessions<Self>) -> R,
            ) -> R {
                ::std::thread_local! {
                    static SESSIONS: ::std::cell::RefCell<
                        ::wasmsocket_guest::__private::Sessions<#self_ty>,
                    > = const {
                        ::std::cell::RefCell::new(::wasmsocket_guest::__private::Sessions::new())
                    };
                }
                SESSIONS.with_borrow_mut(f)
            }
        }

        #[allow(unsafe_code, reason = "wit-bindgen's export glue")]
        const _: () = {
            type __WasmsocketComponent = ::wasmsocket_guest::__private::Component<#self_ty>;
            ::wasmsocket_guest::__private::export!(
                __WasmsocketComponent with_types_in ::wasmsocket_guest::wit
            );
        };
    }
    .into()
}
