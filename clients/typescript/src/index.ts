/**
 * qrpc for TypeScript: the wire codec (docs/wire-protocol.md) and a client over a
 * WebTransport session (or anything shaped like one).
 */
export {
  DEFAULT_MAX_PAYLOAD,
  FrameError,
  FrameReader,
  PUSH_HEADER_LEN,
  REQUEST_HEADER_LEN,
  RESPONSE_HEADER_LEN,
  decodePush,
  decodeRequest,
  decodeResponse,
  encodePush,
  encodeRequest,
  encodeResponse,
} from "./frame.js";
export type { FrameErrorKind, PushFrame, RequestFrame, ResponseFrame } from "./frame.js";
export { Client, Code, QrpcError } from "./client.js";
export type { BidiStream, CallOptions, ClientOptions, Session } from "./client.js";
export { decodeCallExtension, decodeErrorStatus, encodeCallExtension } from "./pb.js";
export type { CallExtension, ErrorStatus } from "./pb.js";
export type { SessionFactory } from "./client.js";
export {
  bidiCall,
  clientStreamingCall,
  decodeEvent,
  serverStreamingCall,
  unaryCall,
} from "./typed.js";
export type { CallKind, ChannelSpec, Messages, MethodSpec } from "./typed.js";
export { webTransportSession } from "./webtransport.js";
export type { CertificateHashes, WebTransportOptions } from "./webtransport.js";
