/**
 * The few protobuf messages the qrpc runtime itself reads and writes (proto/qrpc/v1):
 * `ErrorStatus` and the call extension's `CallExtension`. Hand-written proto3 encoding, so the
 * runtime needs no protobuf library; services' own messages come from generated code.
 */

/** `qrpc.v1.ErrorStatus`: the payload of a non-OK response frame. */
export interface ErrorStatus {
  readonly message: string;
  readonly details: Uint8Array;
}

/** `qrpc.v1.CallExtension`: a call's deadline and metadata, or a response's metadata. */
export interface CallExtension {
  readonly version: number;
  /** Requests only: the time the caller gives the call, in microseconds. */
  readonly timeoutUs?: bigint;
  readonly metadata: ReadonlyArray<readonly [string, Uint8Array]>;
}

const WIRE_VARINT = 0;
const WIRE_I64 = 1;
const WIRE_LEN = 2;
const WIRE_I32 = 5;

function pushVarint(out: number[], value: bigint): void {
  let v = value;
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
}

function pushLen(out: number[], field: number, bytes: Uint8Array): void {
  pushVarint(out, BigInt((field << 3) | WIRE_LEN));
  pushVarint(out, BigInt(bytes.length));
  for (const b of bytes) {
    out.push(b);
  }
}

/** A cursor over one message's bytes. */
class Reader {
  #at = 0;
  constructor(readonly bytes: Uint8Array) {}

  get done(): boolean {
    return this.#at >= this.bytes.length;
  }

  varint(): bigint {
    let result = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      const b = this.bytes[this.#at];
      if (b === undefined) {
        throw new Error("protobuf: truncated varint");
      }
      this.#at++;
      result |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) {
        return result;
      }
    }
    throw new Error("protobuf: varint too long");
  }

  take(n: number): Uint8Array {
    if (this.#at + n > this.bytes.length) {
      throw new Error("protobuf: truncated field");
    }
    const out = this.bytes.subarray(this.#at, this.#at + n);
    this.#at += n;
    return out;
  }

  /** Reads a field key; returns [field, wire type]. */
  key(): [number, number] {
    const k = this.varint();
    return [Number(k >> 3n), Number(k & 7n)];
  }

  skip(wire: number): void {
    switch (wire) {
      case WIRE_VARINT:
        this.varint();
        return;
      case WIRE_I64:
        this.take(8);
        return;
      case WIRE_LEN:
        this.take(Number(this.varint()));
        return;
      case WIRE_I32:
        this.take(4);
        return;
      default:
        throw new Error(`protobuf: wire type ${wire} cannot be skipped`);
    }
  }

  bytesField(): Uint8Array {
    return this.take(Number(this.varint()));
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: false });
const encoder = new TextEncoder();

/** Decodes an `ErrorStatus`; a payload that does not decode gives an empty one. */
export function decodeErrorStatus(bytes: Uint8Array): ErrorStatus {
  let message = "";
  let details: Uint8Array = new Uint8Array(0);
  try {
    const r = new Reader(bytes);
    while (!r.done) {
      const [field, wire] = r.key();
      if (field === 1 && wire === WIRE_LEN) {
        message = utf8.decode(r.bytesField());
      } else if (field === 2 && wire === WIRE_LEN) {
        details = r.bytesField().slice();
      } else {
        r.skip(wire);
      }
    }
  } catch {
    // The status code stands on its own (wire-protocol.md section 4).
  }
  return { message, details };
}

/** Encodes a `CallExtension`. */
export function encodeCallExtension(ext: CallExtension): Uint8Array {
  const out: number[] = [];
  pushVarint(out, BigInt((1 << 3) | WIRE_VARINT));
  pushVarint(out, BigInt(ext.version));
  if (ext.timeoutUs !== undefined) {
    pushVarint(out, BigInt((2 << 3) | WIRE_VARINT));
    pushVarint(out, ext.timeoutUs);
  }
  for (const [key, value] of ext.metadata) {
    const entry: number[] = [];
    pushLen(entry, 1, encoder.encode(key));
    pushLen(entry, 2, value);
    pushLen(out, 3, Uint8Array.from(entry));
  }
  return Uint8Array.from(out);
}

/** Decodes a `CallExtension` (unknown fields are skipped: later versions add fields). */
export function decodeCallExtension(bytes: Uint8Array): CallExtension {
  const r = new Reader(bytes);
  let version = 0;
  let timeoutUs: bigint | undefined;
  const metadata: [string, Uint8Array][] = [];
  while (!r.done) {
    const [field, wire] = r.key();
    if (field === 1 && wire === WIRE_VARINT) {
      version = Number(r.varint());
    } else if (field === 2 && wire === WIRE_VARINT) {
      timeoutUs = r.varint();
    } else if (field === 3 && wire === WIRE_LEN) {
      const e = new Reader(r.bytesField());
      let key = "";
      let value: Uint8Array = new Uint8Array(0);
      while (!e.done) {
        const [f, w] = e.key();
        if (f === 1 && w === WIRE_LEN) {
          key = utf8.decode(e.bytesField());
        } else if (f === 2 && w === WIRE_LEN) {
          value = e.bytesField().slice();
        } else {
          e.skip(w);
        }
      }
      metadata.push([key, value]);
    } else {
      r.skip(wire);
    }
  }
  return timeoutUs === undefined ? { version, metadata } : { version, timeoutUs, metadata };
}
