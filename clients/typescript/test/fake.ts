// A fake qrpc server for the client tests: wired to the client by web streams, it answers
// per the wire protocol (docs/wire-protocol.md) and records what it saw.
import {
  Code,
  FrameReader,
  encodeCallExtension,
  encodeResponse,
  type BidiStream,
  type RequestFrame,
  type Session,
} from "../src/index.js";

export const hex = (text: string): Uint8Array =>
  Uint8Array.from(text.match(/../g) ?? [], (b) => Number.parseInt(b, 16));
export const toHex = (bytes: Uint8Array): string =>
  Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

/** What the fake server saw of one call. */
export interface Seen {
  frames: RequestFrame[];
  cancelled: boolean;
}

export type Handler = (
  requests: RequestFrame[],
  send: (status: number, payload: Uint8Array) => Promise<void>,
  seen: Seen,
) => Promise<void>;

/** `ErrorStatus { message }`, encoded by hand: field 1, length-delimited. */
export function errorStatus(message: string): Uint8Array {
  const text = new TextEncoder().encode(message);
  return Uint8Array.from([0x0a, text.length, ...text]);
}

/** A session whose streams reach `serve`; `pushes` are sent on a server-opened stream. */
export function fakeSession(
  handlers: Record<number, Handler>,
  options: { extension: boolean; pushes?: Uint8Array[] } = { extension: true },
): { session: Session; calls: Seen[] } {
  const calls: Seen[] = [];
  const serve = async (stream: BidiStream): Promise<void> => {
    const reader = stream.readable.getReader();
    const writer = stream.writable.getWriter();
    const frames = FrameReader.requests();
    const seen: Seen = { frames: [], cancelled: false };
    calls.push(seen);
    const send = async (status: number, payload: Uint8Array, id?: number): Promise<void> => {
      await writer.write(encodeResponse({ status, requestId: id ?? seen.frames[0]?.requestId ?? 0, payload }));
    };
    // Read everything the client sends (until FIN), or notice its reset.
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) {
          break;
        }
        frames.push(value);
        for (let f = frames.next(); f !== undefined; f = frames.next()) {
          seen.frames.push(f);
          const first = seen.frames[0];
          // A streaming handler starts on the open frame; unary ones wait for FIN.
          if (seen.frames.length === 1 && first !== undefined && first.methodId === 40) {
            void handlers[40]?.(seen.frames, (s, p) => send(s, p), seen);
          }
        }
      }
    } catch {
      seen.cancelled = true;
      return;
    }
    const [first] = seen.frames;
    if (first === undefined) {
      await writer.close();
      return;
    }
    if (first.methodId === 0) {
      if (seen.frames.length === 1) {
        // The probe (11.2).
        if (options.extension) {
          await send(0, encodeCallExtension({ version: 1, metadata: [] }));
        } else {
          await send(Code.UNIMPLEMENTED, new Uint8Array(0));
        }
        await writer.close();
        return;
      }
    }
    const call = seen.frames.filter((f) => f.methodId !== 0);
    const method = call[0]?.methodId ?? -1;
    const handler = handlers[method];
    if (method === 40) {
      return;
    }
    if (handler === undefined) {
      await send(Code.UNIMPLEMENTED, errorStatus(`method ${method} is not served here`));
    } else {
      await handler(call, (s, p) => send(s, p), seen);
    }
    await writer.close().catch(() => {});
  };
  let pushController: ReadableStreamDefaultController<ReadableStream<Uint8Array>> | undefined;
  const incoming = new ReadableStream<ReadableStream<Uint8Array>>({
    start(c) {
      pushController = c;
    },
  });
  if (options.pushes !== undefined) {
    const chunks = options.pushes;
    pushController?.enqueue(
      new ReadableStream<Uint8Array>({
        start(c) {
          for (const chunk of chunks) {
            c.enqueue(chunk);
          }
          c.close();
        },
      }),
    );
    pushController?.close();
  }
  const session: Session = {
    incomingUnidirectionalStreams: incoming,
    async createBidirectionalStream(): Promise<BidiStream> {
      const up = new TransformStream<Uint8Array, Uint8Array>();
      const down = new TransformStream<Uint8Array, Uint8Array>();
      void serve({ readable: up.readable, writable: down.writable });
      return { readable: down.readable, writable: up.writable };
    },
  };
  return { session, calls };
}

export const echo: Handler = async (requests, send) => {
  await send(0, requests[requests.length - 1]?.payload ?? new Uint8Array(0));
};

