/**
 * The echo and chat examples in a page: typed clients generated from the same .proto files
 * as the Rust code, over one WebTransport session to the qrpc server.
 */
import { Client, Code, QrpcError, type PushFrame, webTransportSession } from "../../src/index.js";
import { EchoClient } from "../gen/echo/v1/echo_qrpc.js";
import { RoomClient, decodeRoomEvent, decodeTypingEvent } from "../gen/chat/v1/chat_qrpc.js";

/** What the example server publishes at /config.json. */
interface Config {
  readonly url: string;
  readonly certificateHashes: readonly string[];
  readonly pingsPerMinute: number;
}

async function config(): Promise<Config> {
  const response = await fetch("/config.json", { cache: "no-store" });
  return (await response.json()) as Config;
}

function unhex(text: string): Uint8Array {
  const bytes = new Uint8Array(text.length / 2);
  for (let i = 0; i < bytes.length; i += 1) {
    bytes[i] = Number.parseInt(text.slice(i * 2, i * 2 + 2), 16);
  }
  return bytes;
}

/** A seen push event, for the page and for tests. */
interface Seen {
  readonly kind: string;
  readonly value: unknown;
  readonly unreliable: boolean;
}

const settings = await config();
/** Sessions trust the server's short-lived certificate by hash, fetched again on reconnect. */
const sessions = webTransportSession(settings.url, {
  certificateHashes: async () => (await config()).certificateHashes.map(unhex),
});
const client = new Client(sessions);
const echo = new EchoClient(client);
const room = new RoomClient(client);
const events: Seen[] = [];

const $ = <T extends HTMLElement>(id: string): T => {
  const element = document.getElementById(id);
  if (element === null) {
    throw new Error(`no #${id}`);
  }
  return element as T;
};

function log(target: string, line: string): void {
  const box = $(target);
  box.textContent += `${line}\n`;
  box.scrollTop = box.scrollHeight;
}

function failure(e: unknown): string {
  return e instanceof QrpcError ? `${e.name} ${e.code}: ${e.message}` : String(e);
}

/** Runs `action`, logging its result or its error. */
function on(id: string, target: string, action: () => Promise<string>): void {
  $(id).addEventListener("click", () => {
    action().then(
      (line) => log(target, line),
      (e: unknown) => log(target, failure(e)),
    );
  });
}

function received(frame: PushFrame): void {
  const event = decodeRoomEvent(frame) ?? decodeTypingEvent(frame);
  if (event === undefined) {
    return;
  }
  events.push({ kind: event.case, value: event.value, unreliable: frame.unreliable === true });
  switch (event.case) {
    case "posted":
      log("chat", `${event.value.from}: ${event.value.text}`);
      break;
    case "joined":
      log("chat", `${event.value.name} joined`);
      break;
    case "typing":
      $("typing").textContent = `${event.value.name} is typing…`;
      break;
  }
}

void (async () => {
  for await (const frame of client.pushes()) {
    received(frame);
  }
})();

const text = (): string => $<HTMLInputElement>("text").value;
on("say", "log", async () => `Say → ${(await echo.say({ text: text() })).text}`);
on("repeat", "log", async () => {
  const indexes: number[] = [];
  for await (const reply of echo.repeat({ text: text(), count: 3 })) {
    indexes.push(reply.index);
  }
  return `Repeat → ${indexes.join(", ")}`;
});
on("sum", "log", async () => `Sum → ${(await echo.sum([1n, 2n, 3n, 4n].map((value) => ({ value })))).value}`);
on("double", "log", async () => {
  const doubled: bigint[] = [];
  for await (const n of echo.double([1n, 2n, 3n].map((value) => ({ value })))) {
    doubled.push(n.value);
  }
  return `Double → ${doubled.join(", ")}`;
});
let waiting: AbortController | undefined;
on("wait", "log", async () => {
  waiting = new AbortController();
  $<HTMLButtonElement>("cancel").disabled = false;
  try {
    await echo.wait({ value: 60_000n }, { signal: waiting.signal });
    return "Wait → done";
  } finally {
    $<HTMLButtonElement>("cancel").disabled = true;
  }
});
$("cancel").addEventListener("click", () => waiting?.abort());
on("ping", "log", async () => {
  await echo.ping({});
  return `Ping → ok (at most ${settings.pingsPerMinute} a minute)`;
});
on("join", "chat", async () => {
  await room.join({ name: $<HTMLInputElement>("name").value });
  return "joined";
});
on("post", "chat", async () => {
  const box = $<HTMLInputElement>("message");
  await room.post({ text: box.value });
  box.value = "";
  return "posted";
});
$("message").addEventListener("input", () => {
  room.typing({}).catch(() => {});
});

/** For tests driving the page (and for the curious, in the console). */
Object.assign(globalThis, {
  demo: {
    client,
    echo,
    room,
    events,
    Code,
    QrpcError,
    /** Another client, with its own session. */
    newClient: () => {
      const other = new Client(sessions);
      return { client: other, echo: new EchoClient(other), room: new RoomClient(other) };
    },
  },
});

try {
  await echo.say({ text: "ready" });
  $("status").textContent = `open to ${settings.url}`;
  Object.assign(globalThis, { demoReady: true });
} catch (e) {
  $("status").textContent = `failed: ${failure(e)}`;
  Object.assign(globalThis, { demoError: failure(e) });
}
