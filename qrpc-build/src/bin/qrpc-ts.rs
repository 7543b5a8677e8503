//! `qrpc-ts`: TypeScript clients from `.proto` files (see `qrpc_build::typescript`).
//!
//! ```text
//! qrpc-ts --out DIR [--descriptor-set FILE] [--runtime MODULE] -I INCLUDE... PROTO...
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str =
    "usage: qrpc-ts --out DIR [--descriptor-set FILE] [--runtime MODULE] -I INCLUDE... PROTO...";

fn main() -> ExitCode {
    let mut out = None;
    let mut descriptor_set = None;
    let mut runtime = None;
    let mut includes: Vec<PathBuf> = Vec::new();
    let mut protos: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        let parsed = match arg.as_str() {
            "--out" => value("--out").map(|v| out = Some(PathBuf::from(v))),
            "--descriptor-set" => {
                value("--descriptor-set").map(|v| descriptor_set = Some(PathBuf::from(v)))
            }
            "--runtime" => value("--runtime").map(|v| runtime = Some(v)),
            "-I" | "--include" => value("-I").map(|v| includes.push(v.into())),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            flag if flag.starts_with('-') => Err(format!("unknown option {flag}\n{USAGE}")),
            proto => {
                protos.push(proto.into());
                Ok(())
            }
        };
        if let Err(err) = parsed {
            eprintln!("qrpc-ts: {err}");
            return ExitCode::from(2);
        }
    }
    let Some(out) = out else {
        eprintln!("qrpc-ts: --out is required\n{USAGE}");
        return ExitCode::from(2);
    };
    if protos.is_empty() {
        eprintln!("qrpc-ts: no .proto files given\n{USAGE}");
        return ExitCode::from(2);
    }
    let mut generator = qrpc_build::typescript::TypeScript::new(out);
    if let Some(path) = descriptor_set {
        generator = generator.descriptor_set(path);
    }
    if let Some(module) = runtime {
        generator = generator.runtime_import(module);
    }
    match generator.compile(&protos, &includes) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("qrpc-ts: {err}");
            ExitCode::FAILURE
        }
    }
}
