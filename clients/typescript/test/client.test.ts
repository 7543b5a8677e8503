// The client against a fake session: a fake qrpc server in the test, wired to the client by
// web streams, that answers per the wire protocol (docs/wire-protocol.md) and records what it
// saw. Known answers for the call extension come from the specification's examples (11.4).
import { strict as assert } from "node:assert";
import { test } from "node:test";

import {
  Client,
  Code,
  QrpcError,
  decodeCallExtension,
  decodeErrorStatus,
  encodePush,
} from "../src/index.js";
import { echo, errorStatus, fakeSession, hex, toHex } from "./fake.js";

test("a unary call sends one request frame and reads its response", { timeout: 10_000 }, async () => {
  const { session, calls } = fakeSession({ 1: echo });
  const client = new Client(session);
  const answer = await client.unary(1, hex("082a"));
  assert.equal(toHex(answer), "082a");
  assert.equal(calls.length, 1);
  assert.deepEqual(
    calls[0]?.frames.map((f) => [f.methodId, toHex(f.payload)]),
    [[1, "082a"]],
  );
});

test("an error status becomes a QrpcError with the server's message", { timeout: 10_000 }, async () => {
  const { session } = fakeSession({
    2: async (_r, send) => send(Code.NOT_FOUND, errorStatus("no such user")),
  });
  const client = new Client(session);
  await assert.rejects(client.unary(2, new Uint8Array(0)), (e: unknown) => {
    assert.ok(e instanceof QrpcError);
    assert.equal(e.code, Code.NOT_FOUND);
    assert.equal(e.message, "no such user");
    return true;
  });
  await assert.rejects(client.unary(99, new Uint8Array(0)), (e: unknown) =>
    e instanceof QrpcError && e.code === Code.UNIMPLEMENTED,
  );
});

test("server-streaming yields every response in order", { timeout: 10_000 }, async () => {
  const { session } = fakeSession({
    3: async (_r, send) => {
      for (const n of [1, 2, 3]) {
        await send(0, Uint8Array.from([0x08, n]));
      }
    },
  });
  const client = new Client(session);
  const got: string[] = [];
  for await (const m of client.serverStreaming(3, new Uint8Array(0))) {
    got.push(toHex(m));
  }
  assert.deepEqual(got, ["0801", "0802", "0803"]);
});

test("client-streaming opens with an empty frame, then sends each message", { timeout: 10_000 }, async () => {
  const { session, calls } = fakeSession({
    4: async (requests, send) => send(0, Uint8Array.from([0x08, requests.length - 1])),
  });
  const client = new Client(session);
  const answer = await client.clientStreaming(4, [hex("0801"), new Uint8Array(0), hex("0803")]);
  // Three messages (one of them empty), after the open frame.
  assert.equal(toHex(answer), "0803");
  assert.deepEqual(
    calls[0]?.frames.map((f) => toHex(f.payload)),
    ["", "0801", "", "0803"],
  );
});

test("bidi: responses come while requests are still being sent", { timeout: 10_000 }, async () => {
  const { session } = fakeSession({
    40: async (requests, send) => {
      // Answers each request as it arrives (the open frame first).
      let answered = 1;
      while (answered < 4) {
        while (requests.length <= answered) {
          await new Promise((r) => setImmediate(r));
        }
        await send(0, requests[answered]?.payload ?? new Uint8Array(0));
        answered++;
      }
    },
  });
  const client = new Client(session);
  let sent = 0;
  const responses: string[] = [];
  async function* requests(): AsyncGenerator<Uint8Array> {
    for (const n of [1, 2, 3]) {
      // Each next request only after the previous answer: proves interleaving.
      while (responses.length < sent) {
        await new Promise((r) => setImmediate(r));
      }
      sent++;
      yield Uint8Array.from([0x08, n]);
    }
  }
  for await (const m of client.bidi(40, requests())) {
    responses.push(toHex(m));
    if (responses.length === 3) {
      break;
    }
  }
  assert.deepEqual(responses, ["0801", "0802", "0803"]);
});

test("aborting a call rejects it with CANCELLED and resets its stream", { timeout: 10_000 }, async () => {
  let release: () => void = () => {};
  const { session, calls } = fakeSession({
    5: () => new Promise<void>((r) => (release = r)),
  });
  const client = new Client(session);
  const controller = new AbortController();
  const call = client.clientStreaming(
    5,
    (async function* () {
      yield hex("0801");
      await new Promise(() => {}); // never finishes sending
    })(),
    { signal: controller.signal },
  );
  while ((calls[0]?.frames.length ?? 0) < 2) {
    await new Promise((r) => setImmediate(r));
  }
  controller.abort();
  await assert.rejects(call, (e: unknown) => e instanceof QrpcError && e.code === Code.CANCELLED);
  while (!calls[0]?.cancelled) {
    await new Promise((r) => setImmediate(r));
  }
  release();
});

test("a deadline and metadata travel in the extension frame, as in the specification", { timeout: 10_000 }, async () => {
  const { session, calls } = fakeSession({ 1: echo });
  const client = new Client(session);
  await client.unary(1, new Uint8Array(0), { metadata: { "x-a": "b" } });
  await client.unary(2, new Uint8Array(0), { timeoutMs: 100 }).catch(() => {});
  // The probe (11.4): method 0, CallExtension { version: 1 }.
  assert.deepEqual(calls[0]?.frames.map((f) => [f.methodId, toHex(f.payload)]), [[0, "0801"]]);
  // Metadata `x-a: b` (11.4): 08 01 1a 08 0a 03 "x-a" 12 01 "b", with the call's request id.
  const call = calls[1]?.frames ?? [];
  assert.equal(call[0]?.methodId, 0);
  assert.equal(toHex(call[0]?.payload ?? new Uint8Array(0)), "08011a080a03782d61120162");
  assert.equal(call[0]?.requestId, call[1]?.requestId);
  // A 100 ms deadline: timeout_us = 100000, varint a0 8d 06 (11.4).
  assert.equal(toHex(calls[2]?.frames[0]?.payload ?? new Uint8Array(0)), "0801" + "10a08d06");
  const decoded = decodeCallExtension(hex("08011a080a03782d61120162"));
  assert.equal(decoded.metadata[0]?.[0], "x-a");
});

test("without the extension, a deadline still ends the call on the client", { timeout: 10_000 }, async () => {
  const { session, calls } = fakeSession({ 6: () => new Promise(() => {}) }, { extension: false });
  const client = new Client(session);
  const started = Date.now();
  await assert.rejects(
    client.unary(6, new Uint8Array(0), { timeoutMs: 50 }),
    (e: unknown) => e instanceof QrpcError && e.code === Code.DEADLINE_EXCEEDED,
  );
  assert.ok(Date.now() - started >= 45);
  // The probe was refused: the call went as plain frames.
  assert.deepEqual(calls[1]?.frames.map((f) => f.methodId), [6]);
});

test("push events arrive typed and in order, across chunk boundaries", { timeout: 10_000 }, async () => {
  const frames = [
    encodePush({ eventType: 1, payload: hex("0801") }),
    encodePush({ eventType: 7, payload: new Uint8Array(0) }),
  ];
  const joined = Uint8Array.from([...(frames[0] ?? []), ...(frames[1] ?? [])]);
  const { session } = fakeSession({}, { extension: true, pushes: [joined.subarray(0, 3), joined.subarray(3)] });
  const client = new Client(session);
  const got: [number, string][] = [];
  for await (const event of client.pushes()) {
    got.push([event.eventType, toHex(event.payload)]);
  }
  assert.deepEqual(got, [
    [1, "0801"],
    [7, ""],
  ]);
});

test("an ErrorStatus that does not decode keeps its status code", () => {
  assert.deepEqual(decodeErrorStatus(hex("0aff")).message, "");
  const e = new QrpcError(200, "odd");
  assert.equal(e.code, Code.UNKNOWN);
});
