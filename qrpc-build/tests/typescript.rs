//! The TypeScript generator on small `.proto` trees written to temp dirs: file placement,
//! method ids and kinds, imports across files and packages, push channels, and the same
//! checks as the Rust generator.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};

use qrpc_build::typescript::TypeScript;

fn tree(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qrpc-ts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (path, source) in files {
        let path = dir.join("proto").join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, source).unwrap();
    }
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

const SHARED: &str = "syntax = \"proto3\";\npackage shared.v1;\nmessage Blob { bytes data = 1; message Part { uint32 n = 1; } }\n";

const SERVICE: &str = r#"syntax = "proto3";
package app.v1;
import "qrpc/options.proto";
import "google/protobuf/empty.proto";
import "shared/v1/shared.proto";

// Stores blobs.
service Store {
  // Puts one.
  rpc Put(shared.v1.Blob) returns (google.protobuf.Empty) { option (qrpc.method_id) = 40; }
  rpc List(google.protobuf.Empty) returns (stream shared.v1.Blob.Part) {
    option (qrpc.method_id) = 41;
    option idempotency_level = NO_SIDE_EFFECTS;
  }
  rpc Upload(stream shared.v1.Blob) returns (google.protobuf.Empty) { option (qrpc.method_id) = 42; }
  rpc Sync(stream shared.v1.Blob) returns (stream shared.v1.Blob) { option (qrpc.method_id) = 43; }
}

message Stored { string name = 1; }
message Gone { string name = 1; }

// What the store tells its clients.
message StoreEvent {
  option (qrpc.push_channel) = true;
  oneof event {
    Stored stored = 5;
    Gone gone_for_good = 6;
  }
}
"#;

#[test]
fn clients_and_channels_are_written_beside_protobuf_es_files() {
    let dir = tree(
        "tree",
        &[
            ("shared/v1/shared.proto", SHARED),
            ("app/v1/app.proto", SERVICE),
        ],
    );
    let out = dir.join("gen");
    let written = TypeScript::new(&out)
        .descriptor_set(out.join("protos.binpb"))
        .compile(&[dir.join("proto/app/v1/app.proto")], &[dir.join("proto")])
        .unwrap();
    // Only the file given (not its imports), and only because it has a service.
    assert_eq!(written, vec![out.join("app/v1/app_qrpc.ts")]);
    let code = read(&written[0]);
    for expected in [
        "export const StoreMethods = {",
        "put: { id: 40, name: \"Put\", kind: \"unary\", idempotent: false, input: $pb0.BlobSchema, output: $pb1.EmptySchema }",
        "list: { id: 41, name: \"List\", kind: \"server_streaming\", idempotent: true, input: $pb1.EmptySchema, output: $pb0.Blob_PartSchema }",
        "upload: { id: 42, name: \"Upload\", kind: \"client_streaming\"",
        "sync: { id: 43, name: \"Sync\", kind: \"bidi\"",
        "import * as $pb0 from \"../../shared/v1/shared_pb.js\";",
        "import * as $pb1 from \"@bufbuild/protobuf/wkt\";",
        "import * as $pb2 from \"./app_pb.js\";",
        "} from \"@quicproquo/qrpc\";",
        "/** Stores blobs. */",
        "  /** Puts one. */",
        "export class StoreClient {",
        "list(request: MessageInitShape<typeof $pb1.EmptySchema>, options?: CallOptions): AsyncGenerator<$pb0.Blob_Part, void, undefined>",
        "sync(requests: Messages<typeof $pb0.BlobSchema>, options?: CallOptions): AsyncGenerator<$pb0.Blob, void, undefined>",
        "5: { case: \"stored\", schema: $pb2.StoredSchema },",
        "6: { case: \"goneForGood\", schema: $pb2.GoneSchema },",
        "export function decodeStoreEvent(frame: PushFrame): StoreEventEvent | undefined",
    ] {
        assert!(code.contains(expected), "missing {expected:?} in:\n{code}");
    }
    // The descriptor set holds every file compiled, imports first (what buf reads).
    let set = std::fs::read(out.join("protos.binpb")).unwrap();
    for name in [
        "shared/v1/shared.proto",
        "app/v1/app.proto",
        "qrpc/options.proto",
    ] {
        assert!(
            set.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name} not in the descriptor set"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_runtime_module_can_be_named() {
    let dir = tree(
        "runtime",
        &[
            ("shared/v1/shared.proto", SHARED),
            ("app/v1/app.proto", SERVICE),
        ],
    );
    let written = TypeScript::new(dir.join("gen"))
        .runtime_import("../../../lib/qrpc.js")
        .compile(&[dir.join("proto/app/v1/app.proto")], &[dir.join("proto")])
        .unwrap();
    assert!(read(&written[0]).contains("} from \"../../../lib/qrpc.js\";"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missing_method_id_fails_as_in_rust() {
    let src =
        "syntax = \"proto3\";\npackage t.v1;\nmessage M {}\nservice S { rpc A(M) returns (M); }\n";
    let dir = tree("missing", &[("t.proto", src)]);
    let err = TypeScript::new(dir.join("gen"))
        .compile(&[dir.join("proto/t.proto")], &[dir.join("proto")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("t.v1.S.A has no method id"), "{err}");
    assert!(!dir.join("gen").exists(), "nothing written");
    std::fs::remove_dir_all(dir).unwrap();
}
