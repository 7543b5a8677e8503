/**
 * The qrpc wire frames (docs/wire-protocol.md, section 2): every integer is unsigned and
 * big-endian, and a frame is a fixed header followed by its payload (a protobuf message).
 *
 * - request  `[method_id u16][request_id u32][payload_len u32][payload]`
 * - response `[status u8][request_id u32][payload_len u32][payload]`
 * - push     `[event_type u16][payload_len u32][payload]`
 *
 * A receiver checks `payload_len` against its limit on the header alone, before it buffers
 * the payload.
 */

/** Bytes of a request frame's header. */
export const REQUEST_HEADER_LEN = 10;
/** Bytes of a response frame's header. */
export const RESPONSE_HEADER_LEN = 9;
/** Bytes of a push frame's header. */
export const PUSH_HEADER_LEN = 6;
/** The payload limit a qrpc peer uses unless configured otherwise (4 MiB). */
export const DEFAULT_MAX_PAYLOAD = 4 * 1024 * 1024;

/** A message the client sends on a call's stream (an empty payload opens a streaming call). */
export interface RequestFrame {
  /** The method's id (0 is the call extension, section 11). */
  readonly methodId: number;
  /** The caller's id for the call, echoed in every response frame. */
  readonly requestId: number;
  /** The encoded protobuf message. */
  readonly payload: Uint8Array;
}

/** A message or an error status the server sends on a call's stream. */
export interface ResponseFrame {
  /** 0 for OK, a status code (section 4) otherwise; 255 is the call extension. */
  readonly status: number;
  /** The call's request id. */
  readonly requestId: number;
  /** The response message, or a `qrpc.v1.ErrorStatus` when `status` is not 0. */
  readonly payload: Uint8Array;
}

/** An event the server sends on the push stream. */
export interface PushFrame {
  /** The event's type id. */
  readonly eventType: number;
  /** The encoded event message. */
  readonly payload: Uint8Array;
  /** The event came in a datagram (an unreliable channel's): unordered, and others like it
   * may have been dropped. */
  readonly unreliable?: boolean;
}

/** Why bytes are not a frame. */
export type FrameErrorKind = "truncated" | "trailing" | "too_large";

/** A frame that cannot be decoded. */
export class FrameError extends Error {
  /** What is wrong. */
  readonly kind: FrameErrorKind;

  constructor(kind: FrameErrorKind, message: string) {
    super(message);
    this.name = "FrameError";
    this.kind = kind;
  }
}

function checkUint(value: number, bits: 8 | 16 | 32, field: string): void {
  if (!Number.isInteger(value) || value < 0 || value >= 2 ** bits) {
    throw new RangeError(`${field}: ${value} is not an unsigned ${bits}-bit integer`);
  }
}

function checkLength(len: number, maxPayload: number): void {
  if (len > maxPayload) {
    throw new FrameError(
      "too_large",
      `frame payload of ${len} bytes exceeds the limit of ${maxPayload} bytes`,
    );
  }
}

/** The shape of one frame kind: its header length, header fields and payload length. */
interface Shape<F> {
  readonly headerLen: number;
  readonly name: string;
  payloadLen(view: DataView): number;
  build(view: DataView, payload: Uint8Array): F;
}

const requestShape: Shape<RequestFrame> = {
  headerLen: REQUEST_HEADER_LEN,
  name: "request",
  payloadLen: (v) => v.getUint32(6),
  build: (v, payload) => ({ methodId: v.getUint16(0), requestId: v.getUint32(2), payload }),
};

const responseShape: Shape<ResponseFrame> = {
  headerLen: RESPONSE_HEADER_LEN,
  name: "response",
  payloadLen: (v) => v.getUint32(5),
  build: (v, payload) => ({ status: v.getUint8(0), requestId: v.getUint32(1), payload }),
};

const pushShape: Shape<PushFrame> = {
  headerLen: PUSH_HEADER_LEN,
  name: "push",
  payloadLen: (v) => v.getUint32(2),
  build: (v, payload) => ({ eventType: v.getUint16(0), payload }),
};

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function decodeExact<F>(shape: Shape<F>, bytes: Uint8Array, maxPayload: number): F {
  if (bytes.length < shape.headerLen) {
    throw new FrameError(
      "truncated",
      `truncated ${shape.name} frame: ${shape.headerLen} bytes needed, ${bytes.length} available`,
    );
  }
  const header = view(bytes);
  const len = shape.payloadLen(header);
  checkLength(len, maxPayload);
  const total = shape.headerLen + len;
  if (bytes.length < total) {
    throw new FrameError(
      "truncated",
      `truncated ${shape.name} frame: ${total} bytes needed, ${bytes.length} available`,
    );
  }
  if (bytes.length > total) {
    throw new FrameError("trailing", `${bytes.length - total} trailing bytes after a complete ${shape.name} frame`);
  }
  return shape.build(header, bytes.slice(shape.headerLen));
}

/** Writes a frame: its header fields (after checking their ranges), then the payload. */
function encodeWith(
  headerLen: number,
  payload: Uint8Array,
  header: (v: DataView) => void,
): Uint8Array {
  checkUint(payload.length, 32, "payload length");
  const out = new Uint8Array(headerLen + payload.length);
  header(view(out));
  out.set(payload, headerLen);
  return out;
}

/** Encodes a request frame. */
export function encodeRequest(frame: RequestFrame): Uint8Array {
  checkUint(frame.methodId, 16, "methodId");
  checkUint(frame.requestId, 32, "requestId");
  return encodeWith(REQUEST_HEADER_LEN, frame.payload, (v) => {
    v.setUint16(0, frame.methodId);
    v.setUint32(2, frame.requestId);
    v.setUint32(6, frame.payload.length);
  });
}

/** Encodes a response frame. */
export function encodeResponse(frame: ResponseFrame): Uint8Array {
  checkUint(frame.status, 8, "status");
  checkUint(frame.requestId, 32, "requestId");
  return encodeWith(RESPONSE_HEADER_LEN, frame.payload, (v) => {
    v.setUint8(0, frame.status);
    v.setUint32(1, frame.requestId);
    v.setUint32(5, frame.payload.length);
  });
}

/** Encodes a push frame. */
export function encodePush(frame: PushFrame): Uint8Array {
  checkUint(frame.eventType, 16, "eventType");
  return encodeWith(PUSH_HEADER_LEN, frame.payload, (v) => {
    v.setUint16(0, frame.eventType);
    v.setUint32(2, frame.payload.length);
  });
}

/** Decodes exactly one request frame (no more, no less). */
export function decodeRequest(bytes: Uint8Array, maxPayload = DEFAULT_MAX_PAYLOAD): RequestFrame {
  return decodeExact(requestShape, bytes, maxPayload);
}

/** Decodes exactly one response frame (no more, no less). */
export function decodeResponse(bytes: Uint8Array, maxPayload = DEFAULT_MAX_PAYLOAD): ResponseFrame {
  return decodeExact(responseShape, bytes, maxPayload);
}

/** Decodes exactly one push frame (no more, no less). */
export function decodePush(bytes: Uint8Array, maxPayload = DEFAULT_MAX_PAYLOAD): PushFrame {
  return decodeExact(pushShape, bytes, maxPayload);
}

/**
 * Frames out of a stream's chunks, as they arrive: `push` each chunk, then take every
 * complete frame with `next`. A header announcing more than the limit throws at once, before
 * its payload is buffered.
 */
export class FrameReader<F> {
  readonly #shape: Shape<F>;
  readonly #maxPayload: number;
  /** Chunks received and not yet taken, in order; each byte is copied once, into its frame. */
  #chunks: Uint8Array[] = [];
  /** Offset into the first chunk of the bytes not yet taken. */
  #offset = 0;
  #length = 0;

  private constructor(shape: Shape<F>, maxPayload: number) {
    this.#shape = shape;
    this.#maxPayload = maxPayload;
  }

  /** A reader of response frames (a call's stream, client side). */
  static responses(maxPayload = DEFAULT_MAX_PAYLOAD): FrameReader<ResponseFrame> {
    return new FrameReader(responseShape, maxPayload);
  }

  /** A reader of request frames (a call's stream, server side). */
  static requests(maxPayload = DEFAULT_MAX_PAYLOAD): FrameReader<RequestFrame> {
    return new FrameReader(requestShape, maxPayload);
  }

  /** A reader of push frames (the push stream). */
  static pushes(maxPayload = DEFAULT_MAX_PAYLOAD): FrameReader<PushFrame> {
    return new FrameReader(pushShape, maxPayload);
  }

  /** Bytes received and not yet taken as frames. */
  get buffered(): number {
    return this.#length;
  }

  /** Adds a chunk of the stream. */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0) {
      return;
    }
    this.#chunks.push(chunk);
    this.#length += chunk.length;
    this.#checkHeader();
  }

  /** Checks the announced length of the frame at the front, once its header is here. */
  #checkHeader(): void {
    if (this.#length >= this.#shape.headerLen) {
      checkLength(this.#shape.payloadLen(view(this.#peek(this.#shape.headerLen))), this.#maxPayload);
    }
  }

  /** The first `n` bytes not yet taken (at most `#length`), copied. */
  #peek(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let filled = 0;
    let offset = this.#offset;
    for (const chunk of this.#chunks) {
      if (filled === n) {
        break;
      }
      const part = chunk.subarray(offset, Math.min(chunk.length, offset + n - filled));
      out.set(part, filled);
      filled += part.length;
      offset = 0;
    }
    return out;
  }

  /** Takes the first `n` bytes (at most `#length`). */
  #take(n: number): Uint8Array {
    const out = this.#peek(n);
    let left = n;
    while (left > 0) {
      const first = this.#chunks[0];
      if (first === undefined) {
        break;
      }
      const available = first.length - this.#offset;
      if (available > left) {
        this.#offset += left;
        left = 0;
      } else {
        left -= available;
        this.#chunks.shift();
        this.#offset = 0;
      }
    }
    this.#length -= n;
    return out;
  }

  /** The next complete frame, or `undefined` until more bytes arrive. */
  next(): F | undefined {
    const shape = this.#shape;
    if (this.#length < shape.headerLen) {
      return undefined;
    }
    const header = view(this.#peek(shape.headerLen));
    const len = shape.payloadLen(header);
    checkLength(len, this.#maxPayload);
    const total = shape.headerLen + len;
    if (this.#length < total) {
      return undefined;
    }
    const bytes = this.#take(total);
    // The payload gets a buffer of its own (starting at offset 0), as from `decode*`.
    const frame = shape.build(view(bytes), bytes.slice(shape.headerLen));
    this.#checkHeader();
    return frame;
  }

  /**
   * The end of the stream: throws `truncated` when a frame was begun and not finished.
   */
  finish(): void {
    if (this.#length > 0) {
      throw new FrameError(
        "truncated",
        `the stream ended inside a ${this.#shape.name} frame (${this.#length} bytes)`,
      );
    }
  }
}
