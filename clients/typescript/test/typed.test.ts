// The generated clients (qrpc-build's qrpc-ts over protobuf-es messages) against the fake
// server, reconnection, and events in datagrams. Known answers: method ids and event types
// as written in proto/examples, and protobuf encodings worked out by hand from the encoding
// rules (field 1, wire type 2 is 0x0a; field 1, varint is 0x08).
import { strict as assert } from "node:assert";
import { test } from "node:test";

import { Client, Code, FrameReader, QrpcError, encodePush, encodeResponse, type Session } from "../src/index.js";
import { EchoClient, EchoMethods } from "../examples/gen/echo/v1/echo_qrpc.js";
import { RoomEventChannel, TypingEventChannel, decodeRoomEvent } from "../examples/gen/chat/v1/chat_qrpc.js";
import { echo, fakeSession, hex, toHex } from "./fake.js";

test("generated method specs carry the ids and kinds of the .proto", () => {
  const ids = Object.values(EchoMethods.methods).map((m) => [m.name, m.id, m.kind]);
  assert.deepEqual(ids, [
    ["Say", 1, "unary"],
    ["Repeat", 2, "server_streaming"],
    ["Sum", 3, "client_streaming"],
    ["Double", 4, "bidi"],
    ["Ping", 5, "unary"],
    ["Wait", 6, "unary"],
    ["WaitStats", 7, "unary"],
  ]);
  assert.equal(RoomEventChannel.unreliable, false);
  assert.equal(TypingEventChannel.unreliable, true);
  assert.deepEqual(Object.keys(RoomEventChannel.events), ["1", "2"]);
});

test("a typed unary call encodes its request and decodes the reply", { timeout: 10_000 }, async () => {
  const { session, calls } = fakeSession({ 1: echo });
  const echoClient = new EchoClient(new Client(session));
  // SayRequest { text: "hi" } echoed back as a SayReply: field 1 is text in both.
  const reply = await echoClient.say({ text: "hi" });
  assert.equal(reply.text, "hi");
  assert.deepEqual(
    calls[0]?.frames.map((f) => [f.methodId, toHex(f.payload)]),
    [[1, "0a026869"]],
  );
});

test("typed streaming calls send and receive messages", { timeout: 10_000 }, async () => {
  const { session, calls } = fakeSession({
    // Sum: answers Number { value: 10 }.
    3: async (_requests, send) => send(0, hex("080a")),
    // Repeat: three SayReply { index } (field 2, varint: 0x10).
    2: async (_requests, send) => {
      for (const index of [0, 1, 2]) {
        await send(0, Uint8Array.from([0x10, index]));
      }
    },
  });
  const echoClient = new EchoClient(new Client(session));
  const sum = await echoClient.sum([1n, 2n, 3n, 4n].map((value) => ({ value })));
  assert.equal(sum.value, 10n);
  assert.deepEqual(
    calls[0]?.frames.map((f) => [f.methodId, toHex(f.payload)]),
    [[3, ""], [3, "0801"], [3, "0802"], [3, "0803"], [3, "0804"]],
  );
  const indexes: number[] = [];
  for await (const reply of echoClient.repeat({ text: "x", count: 3 })) {
    indexes.push(reply.index);
  }
  assert.deepEqual(indexes, [0, 1, 2]);
});

test("a reply that does not decode fails with INTERNAL", { timeout: 10_000 }, async () => {
  // A truncated length-delimited field.
  const { session } = fakeSession({ 1: async (_r, send) => send(0, hex("0a05ff")) });
  await assert.rejects(new EchoClient(new Client(session)).say({ text: "x" }), (e: unknown) =>
    e instanceof QrpcError && e.code === Code.INTERNAL,
  );
});

test("push frames decode to typed events; unknown event types are skipped", () => {
  // Posted { from: "a", text: "b" }.
  const posted = decodeRoomEvent({ eventType: 1, payload: hex("0a0161120162") });
  assert.equal(posted?.case, "posted");
  assert.deepEqual(posted?.case === "posted" ? [posted.value.from, posted.value.text] : [], ["a", "b"]);
  assert.equal(decodeRoomEvent({ eventType: 99, payload: new Uint8Array(0) }), undefined);
  assert.throws(() => decodeRoomEvent({ eventType: 2, payload: hex("0a09") }), QrpcError);
});

test("a client with a session factory reconnects after its session ends", { timeout: 10_000 }, async () => {
  let opened = 0;
  const ends: (() => void)[] = [];
  const closings: Promise<void>[] = [];
  const factory = async (): Promise<Session> => {
    opened += 1;
    if (opened === 2) {
      throw new Error("server unreachable");
    }
    const { session } = fakeSession({ 1: echo });
    const closed = new Promise<void>((resolve) => ends.push(resolve));
    closings.push(closed);
    return { ...session, closed };
  };
  const client = new Client(factory, { reconnectInitialMs: 1 });
  const echoClient = new EchoClient(client);
  assert.equal((await echoClient.say({ text: "one" })).text, "one");
  assert.equal(opened, 1);
  // The session ends: the next call opens another (the first attempt fails; the next works).
  ends[0]?.();
  // The client saw the end before this test goes on (its handler was registered first).
  await closings[0];
  await assert.rejects(echoClient.say({ text: "lost" }), (e: unknown) =>
    e instanceof QrpcError && e.code === Code.UNAVAILABLE,
  );
  assert.equal((await echoClient.say({ text: "two" })).text, "two");
  assert.equal(opened, 3);
  client.close();
  await assert.rejects(echoClient.say({ text: "closed" }), (e: unknown) =>
    e instanceof QrpcError && e.code === Code.UNAVAILABLE,
  );
});

test("events in datagrams arrive among the push stream's, marked unreliable", { timeout: 10_000 }, async () => {
  const { session } = fakeSession({}, { extension: true, pushes: [encodePush({ eventType: 1, payload: hex("0a0161") })] });
  const datagrams = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(hex("ff")); // not a frame: dropped, as the network may drop one
      c.enqueue(encodePush({ eventType: 3, payload: hex("0a0162") }));
      c.close();
    },
  });
  const client = new Client({ ...session, datagrams: { readable: datagrams } });
  const seen: [number, boolean][] = [];
  for await (const frame of client.pushes()) {
    seen.push([frame.eventType, frame.unreliable === true]);
  }
  seen.sort((a, b) => a[0] - b[0]);
  assert.deepEqual(seen, [
    [1, false],
    [3, true],
  ]);
});

test("a consumer that stops reading push events stops the reads", { timeout: 10_000 }, async () => {
  let cancelled!: () => void;
  const cancel = new Promise<void>((resolve) => {
    cancelled = resolve;
  });
  let n = 0;
  const pushStream = new ReadableStream<Uint8Array>({
    pull(c) {
      n += 1;
      c.enqueue(encodePush({ eventType: 1, payload: Uint8Array.from([0x08, n & 0x7f]) }));
    },
    cancel() {
      cancelled();
    },
  });
  const incoming = new ReadableStream<ReadableStream<Uint8Array>>({
    start(c) {
      c.enqueue(pushStream);
    },
  });
  const { session } = fakeSession({});
  const client = new Client({ ...session, incomingUnidirectionalStreams: incoming });
  for await (const frame of client.pushes()) {
    assert.equal(frame.eventType, 1);
    break;
  }
  // The endless push stream was cancelled once the consumer left.
  await cancel;
});

test("frames split into many small chunks decode once complete", () => {
  // A 4,000-byte push payload arriving a byte at a time (each byte is copied once).
  const payload = Uint8Array.from({ length: 4000 }, (_, i) => i & 0xff);
  const bytes = encodePush({ eventType: 9, payload });
  const reader = FrameReader.pushes();
  let frame;
  for (let i = 0; i < bytes.length; i += 1) {
    assert.equal(frame, undefined);
    reader.push(bytes.subarray(i, i + 1));
    frame = reader.next();
  }
  assert.equal(frame?.eventType, 9);
  assert.deepEqual(frame?.payload, payload);
  assert.equal(reader.buffered, 0);
});

test("a server that stops reading the request early does not fail the call it answers", { timeout: 10_000 }, async () => {
  // The request side fails on finish (STOP_SENDING), as when the server has the whole
  // request before the FIN arrives; the answer decides the call.
  const answered = (frames: Uint8Array[]): Session => {
    const { session } = fakeSession({});
    return {
      ...session,
      async createBidirectionalStream() {
        const writable = new WritableStream<Uint8Array>({
          close() {
            throw new Error("Received STOP_SENDING");
          },
        });
        const readable = new ReadableStream<Uint8Array>({
          start(c) {
            for (const frame of frames) {
              c.enqueue(frame);
            }
            c.close();
          },
        });
        return { readable, writable };
      },
    };
  };
  const say = encodeResponse({ status: 0, requestId: 1, payload: hex("0a026869") });
  const reply = await new EchoClient(new Client(answered([say]))).say({ text: "hi" });
  assert.equal(reply.text, "hi");
  const replies = [0, 1].map((i) => encodeResponse({ status: 0, requestId: 1, payload: Uint8Array.from([0x10, i]) }));
  const indexes: number[] = [];
  for await (const r of new EchoClient(new Client(answered(replies))).repeat({ text: "x", count: 2 })) {
    indexes.push(r.index);
  }
  assert.deepEqual(indexes, [0, 1]);
  // No answer at all: the failure is the call's.
  await assert.rejects(new EchoClient(new Client(answered([]))).say({ text: "x" }), (e: unknown) =>
    e instanceof QrpcError && e.code === Code.UNAVAILABLE && e.message.includes("STOP_SENDING"),
  );
});

test("a bidi call ends when the server ends it, whatever the requests would still give", { timeout: 10_000 }, async () => {
  const { session } = fakeSession({});
  const ended: Session = {
    ...session,
    async createBidirectionalStream() {
      const readable = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(encodeResponse({ status: 0, requestId: 1, payload: hex("0802") }));
          c.close();
        },
      });
      return { readable, writable: new WritableStream<Uint8Array>() };
    },
  };
  // One request, then an input that never comes (a chat box nobody types in).
  async function* requests(): AsyncGenerator<{ value: bigint }> {
    yield { value: 1n };
    await new Promise<never>(() => {});
  }
  const got: bigint[] = [];
  for await (const n of new EchoClient(new Client(ended)).double(requests())) {
    got.push(n.value);
  }
  assert.deepEqual(got, [2n]);
});
