//! Identifier conversions matching prost's (snake_case modules and methods, UpperCamel types).

/// `foo_bar` / `FooBar` / `fooBar` -> `FooBar`.
pub(crate) fn upper_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `FooBar` / `fooBar` -> `foo_bar`.
pub(crate) fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let chars: Vec<char> = name.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if i > 0
                && (prev_lower || (next_lower && chars[i - 1].is_uppercase()))
                && !out.ends_with('_')
            {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(*c);
        }
    }
    out
}

/// Doc attributes from comment lines.
pub(crate) fn docs(lines: &[String]) -> proc_macro2::TokenStream {
    // prost keeps the space after `//`; add one only where a line lacks it.
    let lines = lines.iter().map(|l| {
        let l = l.trim_end();
        if l.starts_with(' ') || l.is_empty() {
            l.to_owned()
        } else {
            format!(" {l}")
        }
    });
    quote::quote! { #( #[doc = #lines] )* }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(upper_camel("message_posted"), "MessagePosted");
        assert_eq!(upper_camel("Echo"), "Echo");
        assert_eq!(snake("EchoService"), "echo_service");
        assert_eq!(snake("HTTPServer"), "http_server");
        assert_eq!(snake("say"), "say");
        assert_eq!(snake("FetchKeyPackage"), "fetch_key_package");
    }
}
