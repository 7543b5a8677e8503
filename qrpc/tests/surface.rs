//! The public surface, kept deliberate: the crate root's exports are listed in
//! `qrpc/tests/public-api.txt`, so any change to them is a visible diff; and no public
//! signature names a third-party crate outside the documented allowlist.
//!
//! After an intended change of the surface, rewrite the list with
//! `QRPC_BLESS=1 cargo test -p qrpc --test surface` and review the diff.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Crates whose types may appear in qrpc's public API (docs/architecture.md, "Public API").
const ALLOWED_CRATES: &[&str] = &[
    "std",
    "core",
    "alloc",
    "crate",
    "self",
    "super",
    "quinn",
    "rustls",
    "tower",
    "tower_layer",
    "prost",
    "bytes",
    "futures",
    "tokio",
    "zeroize",
];

/// Modules that are public only behind a feature for fuzzing or tests, not part of the API.
const NOT_API: &[&str] = &["frame.rs", "call_state.rs", "extension.rs", "testing.rs"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Expands `pub use a::{b, c::{d, e}};` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(prefix: &str, tree: &str, out: &mut BTreeSet<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').unwrap()];
        let mut depth = 0;
        let mut start = 0;
        for (i, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&join(prefix, head), &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&join(prefix, head), &inner[start..], out);
    } else if !tree.is_empty() {
        out.insert(join(prefix, tree));
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}::{b}"),
    }
}

/// The exports of one module file: `pub use`, `pub mod`, `pub type` and exported macros, with
/// the `cfg` (feature) each is under.
fn exports(file: &Path, module: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap();
    let mut out = BTreeSet::new();
    let mut cfg = String::new();
    let mut statement = String::new();
    // Inside an inline `pub mod name { ... }`: its name and cfg label what it exports.
    let mut inline: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("//") {
            continue;
        }
        if line == "}" {
            inline = None;
            continue;
        }
        if line.starts_with("#[cfg(") {
            cfg = format!(" [{}]", &line[6..line.len() - 2]);
            continue;
        }
        if statement.is_empty()
            && !(line.starts_with("pub use ")
                || line.starts_with("pub mod ")
                || line.starts_with("pub type ")
                || line.starts_with("macro_rules! "))
        {
            if !line.starts_with("#[") {
                cfg.clear();
            }
            continue;
        }
        statement.push_str(line);
        statement.push(' ');
        let ends = if statement.starts_with("pub use ") {
            line.ends_with(';')
        } else {
            line.ends_with(';') || line.ends_with('{')
        };
        if !ends {
            continue;
        }
        let s = std::mem::take(&mut statement);
        let mut items = BTreeSet::new();
        if let Some(rest) = s.strip_prefix("pub use ") {
            expand("", rest.trim().trim_end_matches(';'), &mut items);
        } else if let Some(rest) = s.strip_prefix("pub mod ") {
            let name = rest.trim_end_matches([';', '{', ' ']);
            items.insert(format!("mod {name}"));
            if s.trim_end().ends_with('{') {
                inline = Some((format!("{name}: "), cfg.clone()));
            }
        } else if let Some(rest) = s.strip_prefix("pub type ") {
            items.insert(format!(
                "type {}",
                rest.split([' ', '<', '=']).next().unwrap()
            ));
        } else if let Some(rest) = s.strip_prefix("macro_rules! ") {
            items.insert(format!("macro {}", rest.split([' ', '{']).next().unwrap()));
        }
        for item in items {
            match &inline {
                Some((prefix, inline_cfg)) if !item.starts_with("mod ") => {
                    out.insert(format!("{module}{prefix}{item}{inline_cfg}"))
                }
                _ => out.insert(format!("{module}{item}{cfg}")),
            };
        }
        cfg.clear();
    }
    out
}

#[test]
fn the_root_exports_are_the_listed_ones() {
    let mut surface = exports(&src().join("lib.rs"), "");
    for (file, module) in [
        ("middleware/mod.rs", "middleware: "),
        ("tls/mod.rs", "tls: "),
        ("protocol.rs", "protocol: "),
    ] {
        surface.extend(exports(&src().join(file), module));
    }
    let listed_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/public-api.txt");
    let now: String = surface.iter().map(|l| format!("{l}\n")).collect();
    if std::env::var_os("QRPC_BLESS").is_some() {
        std::fs::write(&listed_path, &now).unwrap();
        return;
    }
    let listed = std::fs::read_to_string(&listed_path).unwrap_or_default();
    let listed: BTreeSet<&str> = listed.lines().collect();
    let current: BTreeSet<&str> = now.lines().collect();
    let added: Vec<_> = current.difference(&listed).collect();
    let removed: Vec<_> = listed.difference(&current).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "the public surface changed.\n  added: {added:?}\n  removed: {removed:?}\n\
         If intended, run QRPC_BLESS=1 cargo test -p qrpc --test surface and commit the list."
    );
}

/// Every public signature in a file: `pub fn`, `pub struct`/`enum`/`trait`/`type`/`const`
/// headers, public fields and variants' payloads, joined across lines.
fn public_signatures(text: &str) -> Vec<String> {
    let text = text.split("#[cfg(test)]").next().unwrap();
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("//") {
            continue;
        }
        if let Some(sig) = current.as_mut() {
            sig.push(' ');
            sig.push_str(line);
            if line.contains('{') || line.ends_with(';') || line.ends_with(',') {
                out.push(current.take().unwrap());
            }
            continue;
        }
        let public = [
            "pub fn ",
            "pub async fn ",
            "pub struct ",
            "pub enum ",
            "pub trait ",
        ]
        .iter()
        .any(|p| line.starts_with(p))
            || line.starts_with("pub const ")
            || line.starts_with("pub type ")
            || (line.starts_with("pub ") && line.contains(": ") && line.ends_with(','));
        if public {
            if line.contains('{') || line.ends_with(';') || line.ends_with(',') {
                out.push(line.to_owned());
            } else {
                current = Some(line.to_owned());
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn public_signatures_name_only_allowed_crates() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut offending = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if NOT_API.contains(&name.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for sig in public_signatures(&text) {
            for word in sig.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
                let Some((krate, _)) = word.split_once("::") else {
                    continue;
                };
                let first = krate.chars().next();
                if krate.is_empty()
                    || first.is_some_and(char::is_uppercase)
                    || ALLOWED_CRATES.contains(&krate)
                {
                    continue;
                }
                offending.push(format!("{}: {sig}", file.display()));
            }
        }
    }
    assert!(
        offending.is_empty(),
        "public signatures name crates outside the allowlist:\n{}",
        offending.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_check() {
    // The parsers themselves: an export list and a disallowed crate are found.
    let mut set = BTreeSet::new();
    expand("", "a::{b, c::{d, e}}", &mut set);
    assert_eq!(
        set.into_iter().collect::<Vec<_>>(),
        ["a::b", "a::c::d", "a::c::e"]
    );
    let sigs = public_signatures(
        "pub fn quota(q: governor::Quota) -> Self {\n}\npub fn fine(x: bytes::Bytes) {}\n",
    );
    assert_eq!(sigs.len(), 2);
    assert!(sigs[0].contains("governor::Quota"));
}
