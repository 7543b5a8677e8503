/**
 * The page in a real browser: Debian's Chromium, headless, driven by playwright-core, opens
 * the example page, connects to the qrpc server over WebTransport with the published
 * certificate hashes, and uses every call kind, push events (stream and datagram),
 * cancellation and the server's refusals.
 *
 * Needs the example server built (`cargo build -p qrpc-examples --bin browser`) and the page
 * built (`npm run build`); `CHROMIUM` names the browser (default `/usr/bin/chromium`).
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { after, before, test } from "node:test";
import { createInterface } from "node:readline";

import { type Browser, type Page, chromium } from "playwright-core";

const repo = resolve(import.meta.dirname, "../../../..");
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const server = process.env.QRPC_BROWSER_EXAMPLE ?? resolve(repo, "target/debug/browser");

const examples: ChildProcess[] = [];
let browser: Browser | undefined;
let page: Page;

/** Starts the example server on free ports and returns the page's address. */
async function startExample(extra: string[] = []): Promise<string> {
  assert.ok(existsSync(server), `build the example first: cargo build -p qrpc-examples --bin browser (${server})`);
  const child = spawn(server, ["--http", "127.0.0.1:0", "--quic", "127.0.0.1:0", ...extra], {
    cwd: repo,
    stdio: ["ignore", "pipe", "inherit"],
  });
  examples.push(child);
  const lines = createInterface({ input: child.stdout! });
  const exited = once(child, "exit").then(([code]) => {
    throw new Error(`the example server exited (${String(code)})`);
  });
  const found = (async () => {
    for await (const line of lines) {
      const match = /^page (\S+)$/.exec(line);
      if (match?.[1] !== undefined) {
        return match[1];
      }
    }
    throw new Error("the example server printed no page address");
  })();
  return Promise.race([found, exited]);
}

before(async () => {
  const url = await startExample();
  browser = await chromium.launch({
    executablePath,
    // As root Chromium needs --no-sandbox; nothing here reaches beyond loopback.
    args: ["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
  });
  page = await browser.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") {
      console.error(`page: ${message.text()}`);
    }
  });
  await page.goto(url);
  await page.waitForFunction("globalThis.demoReady === true || globalThis.demoError !== undefined", undefined, {
    timeout: 30_000,
  });
  const error = await page.evaluate("globalThis.demoError");
  assert.equal(error, undefined, `the page could not connect: ${String(error)}`);
});

after(async () => {
  await browser?.close();
  for (const child of examples) {
    child.kill("SIGTERM");
  }
});

/** Evaluates `script` (an async function body using `demo`) in the page. */
function run<T>(script: string): Promise<T> {
  return page.evaluate(`(async (demo) => { ${script} })(globalThis.demo)`) as Promise<T>;
}

test("the page is a secure context with WebTransport", async () => {
  assert.equal(await page.evaluate("isSecureContext && typeof WebTransport"), "function");
});

test("unary, server-streaming, client-streaming and bidi calls", async () => {
  assert.equal(await run<string>(`return (await demo.echo.say({ text: "hi from chromium" })).text;`), "hi from chromium");
  assert.deepEqual(
    await run<number[]>(`
      const out = [];
      for await (const r of demo.echo.repeat({ text: "x", count: 3 })) out.push(r.index);
      return out;`),
    [0, 1, 2],
  );
  assert.equal(
    await run<string>(`return String((await demo.echo.sum([1n, 2n, 3n, 4n].map((value) => ({ value })))).value);`),
    "10",
  );
  assert.deepEqual(
    await run<string[]>(`
      const out = [];
      for await (const n of demo.echo.double([1n, 2n, 3n].map((value) => ({ value })))) out.push(String(n.value));
      return out;`),
    ["2", "4", "6"],
  );
});

test("push events arrive on the push stream and datagrams", async () => {
  const seen = await run<{ kind: string; unreliable: boolean }[]>(`
    await demo.room.join({ name: "ada" });
    await demo.room.post({ text: "hello" });
    await demo.room.typing({});
    const want = ["joined", "posted", "typing"];
    for (let i = 0; i < 500 && !want.every((k) => demo.events.some((e) => e.kind === k)); i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    return demo.events.map((e) => ({ kind: e.kind, unreliable: e.unreliable }));`);
  assert.deepEqual(seen.find((e) => e.kind === "joined"), { kind: "joined", unreliable: false });
  assert.deepEqual(seen.find((e) => e.kind === "posted"), { kind: "posted", unreliable: false });
  // The typing channel is unreliable: its event came in a datagram.
  assert.deepEqual(seen.find((e) => e.kind === "typing"), { kind: "typing", unreliable: true });
});

test("a cancelled call stops the server's handler", async () => {
  const result = await run<{ code: number; waiting: string; cancelled: string }>(`
    const stats = () => demo.echo.waitStats({});
    const before = await stats();
    const abort = new AbortController();
    const call = demo.echo.wait({ value: 60000n }, { signal: abort.signal }).then(
      () => -1,
      (e) => e.code,
    );
    // Cancel once the server runs the handler.
    for (let i = 0; i < 500 && (await stats()).waiting === 0n; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    abort.abort();
    const code = await call;
    let after = await stats();
    for (let i = 0; i < 500 && after.cancelled === before.cancelled; i++) {
      await new Promise((r) => setTimeout(r, 10));
      after = await stats();
    }
    return { code, waiting: String(after.waiting), cancelled: String(after.cancelled - before.cancelled) };`);
  assert.deepEqual(result, { code: 1, waiting: "0", cancelled: "1" });
});

test("a call with a deadline ends with DEADLINE_EXCEEDED and its handler is dropped", async () => {
  const result = await run<{ code: number; cancelled: string; said: string }>(`
    const before = await demo.echo.waitStats({});
    const code = await demo.echo.wait({ value: 60000n }, { timeoutMs: 300 }).then(() => -1, (e) => e.code);
    let after = await demo.echo.waitStats({});
    for (let i = 0; i < 500 && after.cancelled === before.cancelled; i++) {
      await new Promise((r) => setTimeout(r, 10));
      after = await demo.echo.waitStats({});
    }
    // A call with a deadline and metadata (the call extension, probed once) that finishes.
    const said = (await demo.echo.say({ text: "with metadata" }, { timeoutMs: 5000, metadata: { "x-tenant": "blue" } })).text;
    return { code, cancelled: String(after.cancelled - before.cancelled), said };`);
  // DEADLINE_EXCEEDED, and the server no longer runs the handler.
  assert.deepEqual(result, { code: 4, cancelled: "1", said: "with metadata" });
});

test("unauthenticated and rate-limited calls get the native statuses", async () => {
  const codes = await run<{ post: number; pings: number[] }>(`
    const other = demo.newClient();
    const post = await other.room.post({ text: "who am I?" }).then(() => 0, (e) => e.code);
    const pings = [];
    for (let i = 0; i < 25; i++) {
      pings.push(await other.echo.ping({}).then(() => 0, (e) => e.code));
    }
    other.client.close();
    return { post, pings };`);
  assert.equal(codes.post, 16, "UNAUTHENTICATED");
  // The example allows 20 pings a minute per caller.
  assert.deepEqual(codes.pings.slice(0, 20), Array(20).fill(0));
  assert.ok(codes.pings.slice(20).every((c) => c === 8), `RESOURCE_EXHAUSTED: ${codes.pings.join(",")}`);
});

test("a server that asks every connection for a client certificate still serves pages", async () => {
  // quicproquo's servers offer the request for federation peers; a page has no certificate.
  const url = await startExample(["--ask-client-certificates"]);
  const other = await browser!.newPage();
  try {
    await other.goto(url);
    await other.waitForFunction("globalThis.demoReady === true || globalThis.demoError !== undefined", undefined, {
      timeout: 30_000,
    });
    assert.equal(await other.evaluate("globalThis.demoError"), undefined);
    const text = await other.evaluate(`globalThis.demo.echo.say({ text: "no certificate" }).then((r) => r.text)`);
    assert.equal(text, "no certificate");
  } finally {
    await other.close();
  }
});
