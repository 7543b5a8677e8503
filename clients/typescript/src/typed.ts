/**
 * Typed calls for the clients qrpc-build generates (`qrpc-ts`): messages of protobuf-es
 * (`@bufbuild/protobuf`) in, messages out, over a {@link Client}.
 */
import {
  type DescMessage,
  type MessageInitShape,
  type MessageShape,
  create,
  fromBinary,
  toBinary,
} from "@bufbuild/protobuf";

import { type CallOptions, type Client, Code, QrpcError } from "./client.js";
import type { PushFrame } from "./frame.js";

/** How a method is called. */
export type CallKind = "unary" | "server_streaming" | "client_streaming" | "bidi";

/** A method of a generated service: its id, kind and message schemas. */
export interface MethodSpec<I extends DescMessage, O extends DescMessage> {
  readonly id: number;
  readonly name: string;
  readonly kind: CallKind;
  readonly idempotent: boolean;
  readonly input: I;
  readonly output: O;
}

/** The requests of a streaming call: any iterable of messages (or their initializers). */
export type Messages<I extends DescMessage> =
  | Iterable<MessageInitShape<I>>
  | AsyncIterable<MessageInitShape<I>>;

function encode<I extends DescMessage>(schema: I, message: MessageInitShape<I>): Uint8Array {
  return toBinary(schema, create(schema, message));
}

function decode<O extends DescMessage>(schema: O, bytes: Uint8Array): MessageShape<O> {
  try {
    return fromBinary(schema, bytes);
  } catch (e) {
    throw new QrpcError(Code.INTERNAL, `undecodable ${schema.typeName}: ${String(e)}`);
  }
}

async function* encodeAll<I extends DescMessage>(
  schema: I,
  messages: Messages<I>,
): AsyncGenerator<Uint8Array, void, undefined> {
  for await (const message of messages) {
    yield encode(schema, message);
  }
}

/** A unary call of `method`. */
export async function unaryCall<I extends DescMessage, O extends DescMessage>(
  client: Client,
  method: MethodSpec<I, O>,
  request: MessageInitShape<I>,
  options?: CallOptions,
): Promise<MessageShape<O>> {
  return decode(method.output, await client.unary(method.id, encode(method.input, request), options));
}

/** A server-streaming call of `method`. */
export async function* serverStreamingCall<I extends DescMessage, O extends DescMessage>(
  client: Client,
  method: MethodSpec<I, O>,
  request: MessageInitShape<I>,
  options?: CallOptions,
): AsyncGenerator<MessageShape<O>, void, undefined> {
  for await (const bytes of client.serverStreaming(method.id, encode(method.input, request), options)) {
    yield decode(method.output, bytes);
  }
}

/** A client-streaming call of `method`. */
export async function clientStreamingCall<I extends DescMessage, O extends DescMessage>(
  client: Client,
  method: MethodSpec<I, O>,
  requests: Messages<I>,
  options?: CallOptions,
): Promise<MessageShape<O>> {
  const bytes = await client.clientStreaming(method.id, encodeAll(method.input, requests), options);
  return decode(method.output, bytes);
}

/** A bidi call of `method`. */
export async function* bidiCall<I extends DescMessage, O extends DescMessage>(
  client: Client,
  method: MethodSpec<I, O>,
  requests: Messages<I>,
  options?: CallOptions,
): AsyncGenerator<MessageShape<O>, void, undefined> {
  for await (const bytes of client.bidi(method.id, encodeAll(method.input, requests), options)) {
    yield decode(method.output, bytes);
  }
}

/** A push channel of a generated package: its events by event type. */
export interface ChannelSpec {
  readonly typeName: string;
  readonly unreliable: boolean;
  readonly events: Readonly<Record<number, { readonly case: string; readonly schema: DescMessage }>>;
}

/** The event in `frame` as `{ case, value }`, or `undefined` for an event type `channel` does
 * not have (a newer server's); an event that does not decode throws `INTERNAL`. */
export function decodeEvent(
  channel: ChannelSpec,
  frame: PushFrame,
): { case: string; value: unknown } | undefined {
  const event = channel.events[frame.eventType];
  if (event === undefined) {
    return undefined;
  }
  return { case: event.case, value: decode(event.schema, frame.payload) };
}
