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
  /** Unreliable push events, one per datagram (optional: without it, only the push stream). */
  readonly datagrams?: { readonly readable: ReadableStream<Uint8Array> };
  /** Settles when the session ends (then a client that opens its own sessions opens another). */
  readonly closed?: Promise<unknown>;
  /** Ends the session. */
  close?(info?: { closeCode?: number; reason?: string }): void;
}

/** Opens a session: how a client reconnects. */
export type SessionFactory = () => Promise<Session>;

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
  /** For a client given a {@link SessionFactory}: the wait before the second attempt to open
   * a session after a failure, doubled on each further failure (default 250 ms)... */
  readonly reconnectInitialMs?: number;
  /** ...up to this wait (default 10 s). */
  readonly reconnectMaxMs?: number;
}

/** Push events read ahead of the consumer, at most. */
const PUSH_BUFFER = 256;

/** A session that ends sooner than this after it opened counts as a failed attempt, so a
 * server that accepts and at once closes sessions is retried with backoff, not in a loop. */
const SESSION_MIN_LIFE_MS = 10_000;

/** Resolves after `ms` milliseconds, or at once when `signal` aborts. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
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

  /** Why the send side failed, if it did (the server stopped reading, or the session ended). */
  #sendFailure: unknown;

  /**
   * Writes `bytes`; `false` once the send side is gone. A server stops reading a call whose
   * request it has (or that it refused): the call's outcome is then what it answers, so a
   * failed write is not the call's error.
   */
  async write(bytes: Uint8Array): Promise<boolean> {
    if (this.#sendFailure !== undefined) {
      return false;
    }
    try {
      await this.#writer.write(bytes);
      return true;
    } catch (e) {
      this.#sendFailure = e ?? "write failed";
      return false;
    }
  }

  /** Ends the request stream (a send side already gone stays so). */
  async finish(): Promise<void> {
    if (this.#sendFailure !== undefined) {
      return;
    }
    try {
      await this.#writer.close();
    } catch (e) {
      this.#sendFailure = e ?? "finish failed";
    }
  }

  /** Why the send side failed, for a call that ended without an answer. */
  get sendFailure(): unknown {
    return this.#sendFailure;
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
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await this.#reader.read();
      } catch (e) {
        throw e instanceof QrpcError ? e : new QrpcError(Code.UNAVAILABLE, `the call's stream failed: ${String(e)}`);
      }
      const { value, done } = chunk;
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

/**
 * A qrpc client over a session. Given a {@link SessionFactory} instead of a session, it opens
 * one on first use and a new one whenever the last ended (waiting longer after each failed
 * attempt): calls made while no session is open wait for the next; a call cut by the end of
 * its session fails with `UNAVAILABLE` and is not sent again (the application knows whether
 * it may be).
 */
export class Client {
  readonly #factory: SessionFactory;
  readonly #maxPayload: number;
  readonly #backoff: { readonly initial: number; readonly max: number };
  readonly #closing = new AbortController();
  /** The one session this client was given, if it was given one (no reconnection). */
  readonly #fixed: Session | undefined;
  #nextRequestId = 1;
  /** The session in use (or being opened), with whether it speaks the call extension. */
  #current: { session: Promise<Session>; extension: Promise<boolean> | undefined } | undefined;
  #failures = 0;

  constructor(session: Session | SessionFactory, options: ClientOptions = {}) {
    const fixed = typeof session === "function" ? undefined : session;
    this.#fixed = fixed;
    this.#factory = fixed === undefined ? (session as SessionFactory) : () => Promise.resolve(fixed);
    this.#maxPayload = options.maxPayload ?? DEFAULT_MAX_PAYLOAD;
    this.#backoff = { initial: options.reconnectInitialMs ?? 250, max: options.reconnectMaxMs ?? 10_000 };
  }

  /** Ends the session and stops reconnecting; later calls fail with `UNAVAILABLE`. */
  close(): void {
    this.#closing.abort();
    const current = this.#current;
    this.#current = undefined;
    void current?.session.then((s) => s.close?.({ closeCode: 0, reason: "client closed" })).catch(() => {});
  }

  /** The current session, opened if there is none (after the backoff of earlier failures). */
  #session(): Promise<Session> {
    if (this.#closing.signal.aborted) {
      return Promise.reject(new QrpcError(Code.UNAVAILABLE, "the client was closed"));
    }
    if (this.#current === undefined) {
      const entry: { session: Promise<Session>; extension: Promise<boolean> | undefined } = {
        session: this.#openSession(),
        extension: undefined,
      };
      this.#current = entry;
      entry.session.then(
        (session) => {
          if (session.closed === undefined) {
            this.#failures = 0;
          }
          const opened = Date.now();
          void session.closed?.finally(() => {
            // Backoff is forgiven only for a session that lived a while.
            this.#failures = Date.now() - opened >= SESSION_MIN_LIFE_MS ? 0 : this.#failures + 1;
            this.#forget(entry);
          });
        },
        () => this.#forget(entry),
      );
    }
    return this.#current.session;
  }

  async #openSession(): Promise<Session> {
    if (this.#failures > 0) {
      const wait = Math.min(this.#backoff.initial * 2 ** (this.#failures - 1), this.#backoff.max);
      await pause(wait, this.#closing.signal);
    }
    try {
      return await this.#factory();
    } catch (e) {
      this.#failures += 1;
      throw new QrpcError(Code.UNAVAILABLE, `cannot open a session: ${String(e)}`);
    }
  }

  /** The session `entry` holds ended: the next call opens another. */
  #forget(entry: unknown): void {
    if (this.#current === entry) {
      this.#current = undefined;
    }
  }

  /** A new stream on the current session; a session that cannot open one is dropped. */
  async #stream(): Promise<CallStream> {
    const entry = this.#current;
    const session = await this.#session();
    try {
      return new CallStream(await session.createBidirectionalStream(), this.#maxPayload);
    } catch (e) {
      this.#forget(entry ?? this.#current);
      throw new QrpcError(Code.UNAVAILABLE, `the session ended: ${String(e)}`);
    }
  }

  #requestId(): number {
    const id = this.#nextRequestId;
    this.#nextRequestId = id >= 0xffffffff ? 1 : id + 1;
    return id;
  }

  /** Asks the server once whether it speaks the call extension (section 11.2). */
  async #speaksExtension(): Promise<boolean> {
    await this.#session();
    const entry = this.#current;
    if (entry === undefined) {
      return false;
    }
    entry.extension ??= (async () => {
      try {
        const stream = await this.#stream();
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
    return entry.extension;
  }

  /**
   * Opens a call's stream, with the extension frame first when the call has a deadline or
   * metadata and the server speaks the extension.
   */
  async #open(options: CallOptions): Promise<{ stream: CallStream; requestId: number }> {
    const wantsExtension = options.timeoutMs !== undefined || options.metadata !== undefined;
    const extension = wantsExtension && (await this.#speaksExtension());
    const stream = await this.#stream();
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

  /** A call that needed an answer and got none: the send side's failure says why, if any. */
  static #noAnswer(stream: CallStream): QrpcError {
    return stream.sendFailure === undefined
      ? new QrpcError(Code.INTERNAL, "the server ended the call without a response")
      : new QrpcError(Code.UNAVAILABLE, `the call's stream failed: ${String(stream.sendFailure)}`);
  }

  /** The next OK payload of a call, `undefined` at its end; an error status throws. */
  static async #payload(stream: CallStream, requestId: number): Promise<Uint8Array | undefined> {
    for (;;) {
      const frame = await stream.next();
      if (frame === undefined) {
        // A clean end (a stream that failed throws from `next`): for a streaming answer, its
        // last message; a server that stopped reading early (STOP_SENDING) changes nothing.
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
          throw Client.#noAnswer(stream);
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
          if (!(await stream.write(encodeRequest({ methodId, requestId, payload })))) {
            break;
          }
        }
        await stream.finish();
        const response = await Client.#payload(stream, requestId);
        if (response === undefined) {
          throw Client.#noAnswer(stream);
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
        if (!(await stream.write(encodeRequest({ methodId, requestId, payload })))) {
          break;
        }
      }
      await stream.finish();
    })();
    sending.catch(() => {});
    for (;;) {
      const next = await Client.#bounded(stream, options, Client.#payload(stream, requestId));
      if (next === undefined) {
        // The server ended the call: it is over, whatever `requests` would still give (its
        // next value is not waited for).
        return;
      }
      yield next;
    }
  }

  /**
   * The server's push events, in the order it sent them on the push stream, with the events
   * sent as datagrams (unordered, droppable) among them. Follows the client across sessions
   * when it reconnects; ends when the client is closed (or its one session ends).
   *
   * One consumer per client: leaving the loop stops the session's push stream (the server
   * stops pushing to it), so keep one loop for the client's life and fan its events out.
   */
  async *pushes(): AsyncGenerator<PushFrame, void, undefined> {
    for (;;) {
      let session: Session;
      try {
        session = await this.#session();
      } catch {
        if (this.#closing.signal.aborted) {
          return;
        }
        continue;
      }
      yield* this.#sessionPushes(session);
      if (this.#closing.signal.aborted || this.#fixed === session) {
        return;
      }
      // The session's streams ended: it is over (or ending); the next one takes over.
      await session.closed?.catch(() => {});
      const current = this.#current;
      if (current !== undefined && (await current.session.catch(() => undefined)) === session) {
        this.#forget(current);
      }
    }
  }

  /** The push events of one session, until it ends or the consumer stops. */
  async *#sessionPushes(session: Session): AsyncGenerator<PushFrame, void, undefined> {
    const queue: PushFrame[] = [];
    // The consumer's wake-up, and the readers' (they wait while the queue is full).
    let wakeConsumer: (() => void) | undefined;
    let wakeReaders: (() => void)[] = [];
    let open = 0;
    let stopped = false;
    const readers: ReadableStreamDefaultReader<unknown>[] = [];
    const notify = (): void => {
      const w = wakeConsumer;
      wakeConsumer = undefined;
      w?.();
    };
    /** Waits until the consumer took events (the queue is bounded: a server that sends
     * faster than the page handles is held back by flow control, not buffered). */
    const room = async (): Promise<void> => {
      while (queue.length >= PUSH_BUFFER && !stopped) {
        await new Promise<void>((resolve) => wakeReaders.push(resolve));
      }
    };
    const pump = async (source: () => Promise<void>): Promise<void> => {
      open += 1;
      try {
        await source();
      } catch {
        // A stream that fails ends with its session; the events read so far stand.
      } finally {
        open -= 1;
        notify();
      }
    };
    const maxPayload = this.#maxPayload;
    void pump(async () => {
      const streams = session.incomingUnidirectionalStreams.getReader();
      readers.push(streams);
      for (;;) {
        const { value: stream, done } = await streams.read();
        if (done || stopped) {
          return;
        }
        const frames = FrameReader.pushes(maxPayload);
        const reader = stream.getReader();
        readers.push(reader);
        for (;;) {
          const chunk = await reader.read();
          if (chunk.done) {
            frames.finish();
            break;
          }
          frames.push(chunk.value);
          // One event at a time into the bounded queue: the rest waits as bytes.
          for (;;) {
            await room();
            if (stopped) {
              return;
            }
            const frame = frames.next();
            if (frame === undefined) {
              break;
            }
            queue.push(frame);
            notify();
          }
        }
      }
    });
    const datagrams = session.datagrams?.readable;
    if (datagrams !== undefined) {
      void pump(async () => {
        const reader = datagrams.getReader();
        readers.push(reader);
        for (;;) {
          const { value, done } = await reader.read();
          if (done || stopped) {
            return;
          }
          // Datagrams are droppable: while the queue is full, they are dropped.
          if (queue.length >= PUSH_BUFFER) {
            continue;
          }
          // One event per datagram; one that does not decode is dropped, as the network may.
          const frames = FrameReader.pushes(maxPayload);
          try {
            frames.push(value);
            const frame = frames.next();
            frames.finish();
            if (frame !== undefined) {
              queue.push({ ...frame, unreliable: true });
              notify();
            }
          } catch {
            continue;
          }
        }
      });
    }
    try {
      for (;;) {
        const next = queue.shift();
        if (next !== undefined) {
          const waiting = wakeReaders;
          wakeReaders = [];
          for (const wake of waiting) {
            wake();
          }
          yield next;
          continue;
        }
        if (open === 0) {
          return;
        }
        await new Promise<void>((resolve) => {
          wakeConsumer = resolve;
        });
      }
    } finally {
      // The consumer stopped (or the session ended): stop reading for it.
      stopped = true;
      for (const wake of wakeReaders) {
        wake();
      }
      for (const reader of readers) {
        void reader.cancel().catch(() => {});
      }
    }
  }
}
