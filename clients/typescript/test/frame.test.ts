// The codec against the shared wire vectors (qrpc/tests/vectors/frames.json, which the Rust
// tests read too), and the incremental reader fed byte by byte.
import { strict as assert } from "node:assert";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  FrameError,
  decodeCallExtension,
  encodeCallExtension,
  FrameReader,
  decodePush,
  decodeRequest,
  decodeResponse,
  encodePush,
  encodeRequest,
  encodeResponse,
  type FrameErrorKind,
} from "../src/index.js";

interface Vectors {
  default_max_payload: number;
  request: { name: string; method_id: number; request_id: number; payload: string; bytes: string }[];
  response: { name: string; status: number; request_id: number; payload: string; bytes: string }[];
  push: { name: string; event_type: number; payload: string; bytes: string }[];
  invalid: { name: string; kind: "request" | "response" | "push"; bytes: string; max_payload: number; error: FrameErrorKind }[];
  call_extension: { name: string; payload: string; version: number; timeout_us: number | null; metadata: [string, string][] }[];
}

const vectors = JSON.parse(
  readFileSync(new URL("../../../../qrpc/tests/vectors/frames.json", import.meta.url), "utf8"),
) as Vectors;

function hex(text: string): Uint8Array {
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = Number.parseInt(text.slice(2 * i, 2 * i + 2), 16);
  }
  return out;
}

function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

test("request frames decode to their fields and encode to their bytes", () => {
  assert.equal(vectors.request.length, 5);
  for (const v of vectors.request) {
    const frame = decodeRequest(hex(v.bytes), vectors.default_max_payload);
    assert.equal(frame.methodId, v.method_id, v.name);
    assert.equal(frame.requestId, v.request_id, v.name);
    assert.equal(toHex(frame.payload), v.payload, v.name);
    assert.equal(toHex(encodeRequest(frame)), v.bytes, v.name);
  }
});

test("response frames decode to their fields and encode to their bytes", () => {
  assert.equal(vectors.response.length, 5);
  for (const v of vectors.response) {
    const frame = decodeResponse(hex(v.bytes), vectors.default_max_payload);
    assert.equal(frame.status, v.status, v.name);
    assert.equal(frame.requestId, v.request_id, v.name);
    assert.equal(toHex(frame.payload), v.payload, v.name);
    assert.equal(toHex(encodeResponse(frame)), v.bytes, v.name);
  }
});

test("push frames decode to their fields and encode to their bytes", () => {
  assert.equal(vectors.push.length, 2);
  for (const v of vectors.push) {
    const frame = decodePush(hex(v.bytes), vectors.default_max_payload);
    assert.equal(frame.eventType, v.event_type, v.name);
    assert.equal(toHex(frame.payload), v.payload, v.name);
    assert.equal(toHex(encodePush(frame)), v.bytes, v.name);
  }
});

test("invalid frames are refused with the named error", () => {
  assert.equal(vectors.invalid.length, 8);
  for (const v of vectors.invalid) {
    const decode = { request: decodeRequest, response: decodeResponse, push: decodePush }[v.kind];
    assert.throws(
      () => decode(hex(v.bytes), v.max_payload),
      (e: unknown) => e instanceof FrameError && e.kind === v.error,
      v.name,
    );
  }
});

test("values out of range are refused when encoding", () => {
  const payload = new Uint8Array(0);
  assert.throws(() => encodeRequest({ methodId: 65536, requestId: 1, payload }), RangeError);
  assert.throws(() => encodeRequest({ methodId: 1, requestId: -1, payload }), RangeError);
  assert.throws(() => encodeResponse({ status: 256, requestId: 1, payload }), RangeError);
  assert.throws(() => encodePush({ eventType: 1.5, payload }), RangeError);
});

test("a reader takes frames from any split of a stream, in order", () => {
  const stream = new Uint8Array(
    vectors.response.flatMap((v) => Array.from(hex(v.bytes))),
  );
  for (const step of [1, 2, 3, 7, stream.length]) {
    const reader = FrameReader.responses();
    const got: string[] = [];
    for (let at = 0; at < stream.length; at += step) {
      reader.push(stream.subarray(at, at + step));
      for (let f = reader.next(); f !== undefined; f = reader.next()) {
        got.push(toHex(encodeResponse(f)));
      }
    }
    reader.finish();
    assert.deepEqual(got, vectors.response.map((v) => v.bytes), `chunks of ${step}`);
  }
});

test("a reader refuses an oversized frame on its header, before the payload", () => {
  const reader = FrameReader.pushes(16);
  // Event 1, announcing 17 bytes: refused as soon as the six header bytes are in.
  reader.push(hex("0001000000"));
  assert.throws(
    () => reader.push(hex("11")),
    (e: unknown) => e instanceof FrameError && e.kind === "too_large",
  );
});

test("a stream that ends inside a frame is truncated", () => {
  const reader = FrameReader.requests();
  reader.push(hex("00010000000700000002")); // header of a 2-byte payload
  reader.push(hex("08"));
  assert.equal(reader.next(), undefined);
  assert.throws(
    () => reader.finish(),
    (e: unknown) => e instanceof FrameError && e.kind === "truncated",
  );
});

test("call extensions decode to their fields and encode to their bytes", () => {
  assert.equal(vectors.call_extension.length, 4);
  for (const v of vectors.call_extension) {
    const ext = decodeCallExtension(hex(v.payload));
    assert.equal(ext.version, v.version, v.name);
    assert.equal(ext.timeoutUs, v.timeout_us === null ? undefined : BigInt(v.timeout_us), v.name);
    assert.deepEqual(
      ext.metadata.map(([k, value]) => [k, toHex(value)]),
      v.metadata,
      v.name,
    );
    assert.equal(toHex(encodeCallExtension(ext)), v.payload, v.name);
  }
});
