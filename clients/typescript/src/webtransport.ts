/**
 * Opening WebTransport sessions to a qrpc server from a browser page.
 */
import type { Session, SessionFactory } from "./client.js";

/** SHA-256 hashes of the certificates a server may present (`serverCertificateHashes`), or
 * where to fetch them: a function, called before every attempt, so a reconnecting client
 * picks up the server's rotation. */
export type CertificateHashes = readonly Uint8Array[] | (() => Promise<readonly Uint8Array[]>);

/** How to open sessions. */
export interface WebTransportOptions {
  /** Certificates trusted by hash (a server with a short-lived certificate publishes them);
   * without it, the browser's usual certificate checks apply. */
  readonly certificateHashes?: CertificateHashes;
}

/**
 * A {@link SessionFactory} for `new Client(...)`: each call opens a WebTransport session to
 * `url` (`https://host:port/path`) and resolves once it is ready.
 */
export function webTransportSession(url: string, options: WebTransportOptions = {}): SessionFactory {
  return async () => {
    const hashes = options.certificateHashes;
    const list = typeof hashes === "function" ? await hashes() : hashes;
    const init: WebTransportOptions_ =
      list === undefined
        ? {}
        : {
            serverCertificateHashes: list.map((value) => ({
              algorithm: "sha-256",
              value: value.slice().buffer,
            })),
          };
    const transport = new WebTransport(url, init);
    await transport.ready;
    return transport as unknown as Session;
  };
}

type WebTransportOptions_ = ConstructorParameters<typeof WebTransport>[1];
