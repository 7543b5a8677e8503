/**
 * qrpc for TypeScript. This release holds the wire codec (docs/wire-protocol.md): the three
 * frame kinds, exact and incremental decoding with the payload limit checked on the header.
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
