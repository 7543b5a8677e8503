/**
 * A qrpc client over a WebTransport session (or anything shaped like one): one bidirectional
 * stream per call with the framing of docs/wire-protocol.md, server push on the
 * unidirectional streams the server opens, deadlines and metadata through the call extension
 * (section 11), and cancellation with an `AbortSignal`.
 */
import {
  DEFAULT_MAX_PAYLOAD,
  FrameReader,
  type PushFrame,
  type ResponseFrame,
  encodeRequest,
} from "./frame.js";
import { decodeCallExtension, decodeErrorStatus, encodeCallExtension } from "./pb.js";

/** Status codes (wire-protocol.md section 4). */
export const Code = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

/** A status code. */
export type Code = (typeof Code)[keyof typeof Code];

/** How a call failed: the server's status, or the client's (a deadline, a cancellation). */
export class QrpcError extends Error {
  /** The status code; a value above 16 reads as `UNKNOWN`. */
  readonly code: Code;
  /** The server's machine-readable details (`ErrorStatus.details`). */
  readonly details: Uint8Array;

  constructor(code: number, message: string, details: Uint8Array = new Uint8Array(0)) {
    const known = Number.isInteger(code) && code >= 0 && code <= 16 ? (code as Code) : Code.UNKNOWN;
    super(message);
    this.name = "QrpcError";
    this.code = known;
    this.details = details;
  }
}

/** One bidirectional stream, as `WebTransport.createBidirectionalStream()` gives it. */
export interface BidiStream {
  readonly readable: ReadableStream<Uint8Array>;
  readonly writable: WritableStream<Uint8Array>;
}

/** What the client needs of a WebTransport session (a `WebTransport` object has all of it). */
export interface Session {
  createBidirectionalStream(): Promise<BidiStream>;
  readonly incomingUnidirectionalStreams: ReadableStream<ReadableStream<Uint8Array>>;
}

/** Options of one call. */
export interface CallOptions {
  /** Aborting it cancels the call (`CANCELLED`); the server's handler is stopped. */
  readonly signal?: AbortSignal;
  /** The time the call may take, in milliseconds: the server is told, and the client ends the
   * call with `DEADLINE_EXCEEDED` when it passes. */
  readonly timeoutMs?: number;
  /** Metadata sent with the call (keys of `a-z 0-9 - _ .`; byte values for keys ending in
   * `-bin`). */
  readonly metadata?: Readonly<Record<string, string | Uint8Array>>;
}

/** Client options. */
export interface ClientOptions {
  /** The largest payload accepted in a response or push frame (default 4 MiB). */
  readonly maxPayload?: number;
}

const encoder = new TextEncoder();

/** A call's stream: frames in and out, and its ending. */
class CallStream {
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #frames: FrameReader<ResponseFrame>;
  #ended = false;

  constructor(stream: BidiStream, maxPayload: number) {
    this.#writer = stream.writable.getWriter();
    this.#reader = stream.readable.getReader();
    this.#frames = FrameReader.responses(maxPayload);
  }

  async write(bytes: Uint8Array): Promise<void> {
    await this.#writer.write(bytes);
  }

  async finish(): Promise<void> {
    await this.#writer.close();
  }

  /** The next response frame, or `undefined` at the end of the stream. */
  async next(): Promise<ResponseFrame | undefined> {
    for (;;) {
      const frame = this.#frames.next();
      if (frame !== undefined) {
        return frame;
      }
      if (this.#ended) {
        this.#frames.finish();
        return undefined;
      }
      const { value, done } = await this.#reader.read();
      if (done) {
        this.#ended = true;
      } else {
        this.#frames.push(value);
      }
    }
  }

  /** Abandons the call: both directions are reset (RESET_STREAM and STOP_SENDING). */
  abort(reason: QrpcError): void {
    void this.#writer.abort(reason).catch(() => {});
    void this.#reader.cancel(reason).catch(() => {});
  }
}

/** The call's end when `signal` aborts or the deadline passes, whichever comes first. */
function ending(options: CallOptions): { promise: Promise<never>; clear: () => void } {
  let clear = (): void => {};
  const promise = new Promise<never>((_, reject) => {
    const timer =
      options.timeoutMs === undefined
        ? undefined
        : setTimeout(
            () => reject(new QrpcError(Code.DEADLINE_EXCEEDED, "deadline exceeded")),
            options.timeoutMs,
          );
    const onAbort = (): void =>
      reject(new QrpcError(Code.CANCELLED, "the call was cancelled"));
    if (options.signal?.aborted) {
      onAbort();
    }
    options.signal?.addEventListener("abort", onAbort, { once: true });
    clear = () => {
      if (timer !== undefined) {
        clearTimeout(timer);
      }
      options.signal?.removeEventListener("abort", onAbort);
    };
  });
  promise.catch(() => {});
  return { promise, clear };
}

function metadataEntries(
  metadata: Readonly<Record<string, string | Uint8Array>>,
): [string, Uint8Array][] {
  return Object.entries(metadata).map(([k, v]) => [k, typeof v === "string" ? encoder.encode(v) : v]);
}

/** A qrpc client over one session. */
export class Client {
  readonly #session: Session;
  readonly #maxPayload: number;
  #nextRequestId = 1;
  /** Whether the server speaks the call extension (asked once, on first need). */
  #extension: Promise<boolean> | undefined;

  constructor(session: Session, options: ClientOptions = {}) {
    this.#session = session;
    this.#maxPayload = options.maxPayload ?? DEFAULT_MAX_PAYLOAD;
  }

  #requestId(): number {
    const id = this.#nextRequestId;
    this.#nextRequestId = id >= 0xffffffff ? 1 : id + 1;
    return id;
  }

  /** Asks the server once whether it speaks the call extension (section 11.2). */
  #speaksExtension(): Promise<boolean> {
    this.#extension ??= (async () => {
      try {
        const stream = new CallStream(
          await this.#session.createBidirectionalStream(),
          this.#maxPayload,
        );
        const requestId = this.#requestId();
        await stream.write(
          encodeRequest({ methodId: 0, requestId, payload: encodeCallExtension({ version: 1, metadata: [] }) }),
        );
        await stream.finish();
        const answer = await stream.next();
        return answer !== undefined && answer.status === Code.OK && answer.requestId === requestId;
      } catch {
        return false;
      }
    })();
    return this.#extension;
  }

  /**
   * Opens a call's stream, with the extension frame first when the call has a deadline or
   * metadata and the server speaks the extension.
   */
  async #open(options: CallOptions): Promise<{ stream: CallStream; requestId: number }> {
    const wantsExtension = options.timeoutMs !== undefined || options.metadata !== undefined;
    const extension = wantsExtension && (await this.#speaksExtension());
    const stream = new CallStream(await this.#session.createBidirectionalStream(), this.#maxPayload);
    const requestId = this.#requestId();
    if (extension) {
      const timeoutUs =
        options.timeoutMs === undefined ? undefined : BigInt(Math.max(0, Math.round(options.timeoutMs * 1000)));
      const ext = encodeCallExtension(
        timeoutUs === undefined
          ? { version: 1, metadata: metadataEntries(options.metadata ?? {}) }
          : { version: 1, timeoutUs, metadata: metadataEntries(options.metadata ?? {}) },
      );
      await stream.write(encodeRequest({ methodId: 0, requestId, payload: ext }));
    }
    return { stream, requestId };
  }

  /** The next OK payload of a call, `undefined` at its end; an error status throws. */
  static async #payload(stream: CallStream, requestId: number): Promise<Uint8Array | undefined> {
    for (;;) {
      const frame = await stream.next();
      if (frame === undefined) {
        return undefined;
      }
      if (frame.requestId !== requestId) {
        throw new QrpcError(Code.INTERNAL, "a response frame of another call");
      }
      if (frame.status === 255) {
        // Response metadata (section 11.1): read and passed over.
        decodeCallExtension(frame.payload);
        continue;
      }
      if (frame.status !== Code.OK) {
        const status = decodeErrorStatus(frame.payload);
        throw new QrpcError(frame.status, status.message, status.details);
      }
      return frame.payload;
    }
  }

  /** Runs `body` until it settles, the signal aborts or the deadline passes. */
  static async #bounded<T>(
    stream: CallStream,
    options: CallOptions,
    body: Promise<T>,
  ): Promise<T> {
    const end = ending(options);
    try {
      return await Promise.race([body, end.promise]);
    } catch (e) {
      if (e instanceof QrpcError && (e.code === Code.CANCELLED || e.code === Code.DEADLINE_EXCEEDED)) {
        stream.abort(e);
      }
      throw e;
    } finally {
      end.clear();
    }
  }

  /** A unary call: one request, one response. */
  async unary(methodId: number, request: Uint8Array, options: CallOptions = {}): Promise<Uint8Array> {
    if (options.signal?.aborted) {
      throw new QrpcError(Code.CANCELLED, "the call was cancelled");
    }
    const { stream, requestId } = await this.#open(options);
    return Client.#bounded(
      stream,
      options,
      (async () => {
        await stream.write(encodeRequest({ methodId, requestId, payload: request }));
        await stream.finish();
        const response = await Client.#payload(stream, requestId);
        if (response === undefined) {
          throw new QrpcError(Code.INTERNAL, "the server ended the call without a response");
        }
        return response;
      })(),
    );
  }

  /** A server-streaming call: one request, the responses as they come. */
  async *serverStreaming(
    methodId: number,
    request: Uint8Array,
    options: CallOptions = {},
  ): AsyncGenerator<Uint8Array, void, undefined> {
    const { stream, requestId } = await this.#open(options);
    await Client.#bounded(
      stream,
      options,
      (async () => {
        await stream.write(encodeRequest({ methodId, requestId, payload: request }));
        await stream.finish();
      })(),
    );
    for (;;) {
      const next = await Client.#bounded(stream, options, Client.#payload(stream, requestId));
      if (next === undefined) {
        return;
      }
      yield next;
    }
  }

  /** A client-streaming call: the requests as `requests` gives them, one response. */
  async clientStreaming(
    methodId: number,
    requests: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    options: CallOptions = {},
  ): Promise<Uint8Array> {
    const { stream, requestId } = await this.#open(options);
    return Client.#bounded(
      stream,
      options,
      (async () => {
        await stream.write(encodeRequest({ methodId, requestId, payload: new Uint8Array(0) }));
        for await (const payload of requests) {
          await stream.write(encodeRequest({ methodId, requestId, payload }));
        }
        await stream.finish();
        const response = await Client.#payload(stream, requestId);
        if (response === undefined) {
          throw new QrpcError(Code.INTERNAL, "the server ended the call without a response");
        }
        return response;
      })(),
    );
  }

  /** A bidi call: the requests are sent as `requests` gives them while the responses come. */
  async *bidi(
    methodId: number,
    requests: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    options: CallOptions = {},
  ): AsyncGenerator<Uint8Array, void, undefined> {
    const { stream, requestId } = await this.#open(options);
    await stream.write(encodeRequest({ methodId, requestId, payload: new Uint8Array(0) }));
    const sending = (async () => {
      for await (const payload of requests) {
        await stream.write(encodeRequest({ methodId, requestId, payload }));
      }
      await stream.finish();
    })();
    sending.catch(() => {});
    for (;;) {
      const next = await Client.#bounded(stream, options, Client.#payload(stream, requestId));
      if (next === undefined) {
        await sending;
        return;
      }
      yield next;
    }
  }

  /** The server's push events, in the order it sent them, for as long as the session lives. */
  async *pushes(): AsyncGenerator<PushFrame, void, undefined> {
    const streams = this.#session.incomingUnidirectionalStreams.getReader();
    for (;;) {
      const { value: stream, done } = await streams.read();
      if (done) {
        return;
      }
      const frames = FrameReader.pushes(this.#maxPayload);
      const reader = stream.getReader();
      for (;;) {
        const chunk = await reader.read();
        if (chunk.done) {
          frames.finish();
          break;
        }
        frames.push(chunk.value);
        for (let f = frames.next(); f !== undefined; f = frames.next()) {
          yield f;
        }
      }
    }
  }
}
