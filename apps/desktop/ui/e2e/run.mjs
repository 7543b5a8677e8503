// The desktop app end to end, in a real window: a real qpq-server, the `qpq` CLI as the other
// person, and the app driven through WebDriver (tauri-driver in front of WebKitWebDriver)
// under Xvfb. The app signs up as bob; alice, on the CLI, sends him a message; the window
// shows it; bob replies from the window; alice's CLI receives the reply. A screenshot of the
// window is saved as the test's artefact.
//
// Waits are for events: the CLI's own commands wait for delivery, and the window is watched
// with a MutationObserver inside the page (WebDriver's asynchronous script), bounded by
// WebDriver's script timeout.
//
// Needs: target/debug/{qpq-desktop,qpq-server,qpq} built (qpq-desktop with the
// custom-protocol feature, after `npm run build`), tauri-driver and WebKitWebDriver, Xvfb.
// .ci/run builds and runs it; see docs/desktop.md.

import { spawn, execFile } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createServer } from "node:net";
import { once } from "node:events";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../../..");
const target = process.env.CARGO_TARGET_DIR ?? join(root, "target");
const bin = (name) => join(target, "debug", name);
const artefacts = resolve(process.env.QPQ_DESKTOP_ARTEFACTS ?? join(target, "desktop-e2e"));
const STEP_MS = 60_000;

const children = [];
const work = mkdtempSync(join(tmpdir(), "qpq-desktop-e2e-"));

function log(line) {
  process.stdout.write(`e2e: ${line}\n`);
}

/** Starts a long-running process; resolves once `ready` matches a line of its output. */
function start(command, args, { env = {}, ready, name }) {
  const child = spawn(command, args, {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let output = "";
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${name} did not start within ${STEP_MS} ms:\n${output}`)),
      STEP_MS,
    );
    if (!ready) {
      clearTimeout(timer);
      resolvePromise({ child, match: null, output: () => output });
    }
    const onData = (chunk) => {
      output += chunk;
      const match = ready && output.match(ready);
      if (match) {
        clearTimeout(timer);
        resolvePromise({ child, match, output: () => output });
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code}) before it was ready:\n${output}`));
    });
  });
}

/** Runs the CLI as alice; `input` goes to its standard input. */
function qpq(args, { input = "", server, pin, dir }) {
  return new Promise((resolvePromise, reject) => {
    const child = execFile(
      bin("qpq"),
      ["--server", server, "--pin", pin, "--data-dir", dir, ...args],
      { env: { ...process.env, QPQ_PASSPHRASE: "alice's local passphrase" }, timeout: STEP_MS },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`qpq ${args.join(" ")} failed: ${err.message}\n${stdout}${stderr}`));
        else resolvePromise(stdout);
      },
    );
    child.stdin.end(input);
  });
}

function freePort() {
  return new Promise((resolvePromise) => {
    const probe = createServer();
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolvePromise(port));
    });
  });
}

/** A minimal WebDriver client (W3C protocol, what tauri-driver speaks). */
class WebDriver {
  constructor(url) {
    this.url = url;
  }
  async call(method, path, body) {
    const res = await fetch(`${this.url}${path}`, {
      signal: AbortSignal.timeout(STEP_MS + 10_000),
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await res.json();
    if (!res.ok || (json.value && json.value.error)) {
      throw new Error(`WebDriver ${method} ${path}: ${JSON.stringify(json.value ?? json)}`);
    }
    return json.value;
  }
  async open(application) {
    const session = await this.call("POST", "/session", {
      capabilities: { alwaysMatch: { "tauri:options": { application } } },
    });
    this.session = `/session/${session.sessionId}`;
    await this.call("POST", `${this.session}/timeouts`, { script: STEP_MS, implicit: 0 });
  }
  close() {
    return this.session ? this.call("DELETE", this.session).catch(() => undefined) : undefined;
  }
  /** Runs `body` in the page as an async function of `args`; returns its result. */
  script(body, ...args) {
    return this.call("POST", `${this.session}/execute/async`, {
      script: `const done = arguments[arguments.length - 1];
        (async (...args) => { ${body} })(...Array.from(arguments).slice(0, -1))
          .then((value) => done({ ok: value }), (err) => done({ err: String(err) }));`,
      args,
    }).then((r) => {
      if (r && "err" in r) throw new Error(r.err);
      return r?.ok;
    });
  }
  /** Waits until `selector` matches an element whose text contains `text` (if given),
   * watching the page's mutations; returns the element's text. */
  waitFor(selector, text = "") {
    return this.script(
      `const [selector, text, limit] = args;
       const find = () => [...document.querySelectorAll(selector)]
         .find((e) => e.textContent.includes(text));
       const found = find();
       if (found) return found.textContent;
       return await new Promise((resolve, reject) => {
         const observer = new MutationObserver(() => {
           const e = find();
           if (e) { observer.disconnect(); clearTimeout(deadline); resolve(e.textContent); }
         });
         // A deadline, not a pause: the observer answers as soon as the element appears.
         const deadline = setTimeout(() => {
           observer.disconnect();
           reject(new Error("not there after " + limit + " ms; the window shows: " + document.body.innerText.slice(0, 2000)));
         }, limit);
         observer.observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
       });`,
      selector,
      text,
      STEP_MS - 5_000,
    ).catch((err) => {
      throw new Error(`waiting for ${selector} ${text ? `with "${text}"` : ""}: ${err.message}`);
    });
  }
  async element(selector) {
    const found = await this.call("POST", `${this.session}/element`, {
      using: "css selector",
      value: selector,
    });
    return Object.values(found)[0];
  }
  async type(selector, text) {
    const id = await this.element(selector);
    await this.call("POST", `${this.session}/element/${id}/value`, { text });
  }
  async click(selector) {
    const id = await this.element(selector);
    await this.call("POST", `${this.session}/element/${id}/click`, {});
  }
}

/** Saves a PNG of the X display the window is on. (WebKitWebDriver's own screenshot command
 * does not answer under Xvfb, so the X server is asked: xwd, then netpbm.) */
function screenshot(display, path) {
  return new Promise((resolvePromise, reject) => {
    execFile(
      "sh",
      ["-c", 'xwd -root -silent -display "$1" | xwdtopnm 2>/dev/null | pnmtopng > "$2"', "sh", display, path],
      { timeout: STEP_MS },
      (err, _stdout, stderr) => (err ? reject(new Error(`screenshot: ${err.message} ${stderr}`)) : resolvePromise()),
    );
  });
}

async function main() {
  for (const name of ["qpq-desktop", "qpq-server", "qpq"]) {
    if (!existsSync(bin(name))) throw new Error(`${bin(name)} is missing: build it first (docs/desktop.md)`);
  }
  mkdirSync(artefacts, { recursive: true });

  // The server, on a port of its choosing.
  const server = await start(
    bin("qpq-server"),
    ["--listen", "127.0.0.1:0", "--data-dir", join(work, "server")],
    { name: "qpq-server", ready: /certificate sha256: ([0-9a-f:]+)/, env: { QPQ_LOG: "warn" } },
  );
  const address = server.output().match(/listening on (\S+)/)[1];
  const pin = server.match[1];
  log(`server at ${address}`);

  // Alice, on the CLI.
  const alice = { server: address, pin, dir: join(work, "alice") };
  await qpq(["register", "alice"], { ...alice, input: "alice password\nalice password\n" });
  await qpq(["login", "alice"], { ...alice, input: "alice password\n" });
  log("alice registered and logged in on the CLI");

  // The window, under Xvfb unless a display is given.
  let display = process.env.DISPLAY;
  if (!process.env.QPQ_E2E_USE_DISPLAY || !display) {
    const xvfb = await start("Xvfb", ["-displayfd", "1", "-screen", "0", "1000x700x24", "-nolisten", "tcp"], {
      name: "Xvfb",
      ready: /^(\d+)\s*$/m,
    });
    display = `:${xvfb.match[1]}`;
  }
  const driverPort = await freePort();
  const nativePort = await freePort();
  // tauri-driver prints nothing when it starts cleanly: it is ready when its port answers.
  const tauriDriver = start("tauri-driver", ["--port", String(driverPort), "--native-port", String(nativePort)], {
    name: "tauri-driver",
    env: {
      DISPLAY: display,
      WEBKIT_DISABLE_DMABUF_RENDERER: "1",
      QPQ_DESKTOP_DIR: join(work, "desktop"),
      QPQ_LOG: "info",
    },
  });
  tauriDriver.catch((err) => log(String(err.message)));
  const driver = new WebDriver(`http://127.0.0.1:${driverPort}`);
  // tauri-driver starts WebKitWebDriver on the native port and forwards the session request
  // to it: both must answer first, or the request is cut.
  await waitForPort(driverPort);
  await waitForPort(nativePort);
  try {
    await driver.open(bin("qpq-desktop"));
  } catch (err) {
    const { output } = await tauriDriver;
    throw new Error(`${err.message}\ntauri-driver said:\n${output()}`);
  }
  try {
    await run(driver, alice, display);
  } catch (err) {
    await screenshot(display, join(artefacts, "failure.png")).catch(() => undefined);
    throw err;
  } finally {
    await driver.close();
  }
}

/** Resolves once something accepts connections on `port`, by connecting (not by waiting). */
async function waitForPort(port) {
  const deadline = Date.now() + STEP_MS;
  for (;;) {
    try {
      const socket = (await import("node:net")).connect(port, "127.0.0.1");
      await once(socket, "connect");
      socket.destroy();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`nothing answers on port ${port}: ${err}`);
      // The connection was refused at once: try again on the next turn of the event loop.
      await new Promise((r) => setImmediate(r));
    }
  }
}

async function run(driver, alice, display) {
  // First run: bob creates his account from the window.
  await driver.waitFor("[data-testid=first-run]");
  await driver.type("textarea[name=servers]", alice.server);
  await driver.type("input[name=pin]", alice.pin);
  await driver.type("input[name=user]", "bob");
  await driver.type("input[name=password]", "bob's password");
  await driver.type("input[name=passphrase]", "bob's local passphrase");
  await driver.click("[data-testid=sign-in]");
  await driver.waitFor("[data-testid=connection]", "Connected");
  log("bob signed up in the window");

  // Alice writes to bob from the CLI; `qpq send` waits until the server took it.
  await qpq(["send", "bob", "Hi Bob, this is Alice on the command line"], alice);
  log("alice sent her message from the CLI");
  // Alice is new to bob: her conversation arrives as a message request, with her message
  // held until he accepts.
  await driver.waitFor("[data-testid=request]", "alice");
  await driver.click("[data-testid=request] button.primary");
  await driver.waitFor("[data-testid=message]", "Hi Bob, this is Alice on the command line");
  log("the window shows alice's message");

  // Bob replies from the window and sees it delivered.
  await driver.type("[data-testid=composer]", "Hello Alice! Replying from the desktop app.");
  await driver.click("[data-testid=send]");
  await driver.waitFor("[data-testid=message][data-state=sent]", "Replying from the desktop app");
  log("bob's reply was delivered");
  // The screenshot reads the X server, which the web view paints after the page changed: wait
  // for two frames, so that the change has been painted.
  await driver.script("await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));");
  await screenshot(display, join(artefacts, "window.png"));

  // A small window shows one pane at a time: the conversation, with a way back to the list.
  await driver.call("POST", `${driver.session}/window/rect`, { width: 420, height: 700 });
  await driver.script(
    `const back = document.querySelector(".back");
     if (!back || getComputedStyle(back).display === "none") {
       await new Promise((resolve, reject) => {
         const deadline = setTimeout(() => reject(new Error("the narrow layout did not apply")), ${STEP_MS - 5_000});
         addEventListener("resize", function check() {
           if (getComputedStyle(back).display !== "none") {
             clearTimeout(deadline);
             removeEventListener("resize", check);
             resolve();
           }
         });
       });
     }
     if (getComputedStyle(document.querySelector(".sidebar")).display !== "none") {
       throw new Error("the list still shows beside the conversation in a narrow window");
     }
     const pane = document.querySelector(".pane.conversation");
     if (!pane || pane.getBoundingClientRect().width < 300 || !pane.textContent.includes("Replying from the desktop app")) {
       throw new Error("the conversation does not fill the narrow window");
     }
     await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));`,
  );
  await screenshot(display, join(artefacts, "window-narrow.png"));
  log("a narrow window shows the conversation alone");

  // Alice's CLI receives it.
  const read = await qpq(["read", "--json"], alice);
  const bodies = read
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l));
  const reply = bodies.find((m) => m.body === "Hello Alice! Replying from the desktop app.");
  if (!reply) throw new Error(`alice's CLI did not receive the reply; it printed:\n${read}`);
  if (!String(reply.sender).startsWith("bob")) throw new Error(`the reply came from ${reply.sender}`);
  log(`alice's CLI received the reply from ${reply.sender}`);
  log(`screenshot: ${join(artefacts, "window.png")}`);
}

main()
  .then(() => {
    log("passed");
  })
  .catch((err) => {
    console.error(`e2e: FAILED: ${err.stack ?? err}`);
    process.exitCode = 1;
  })
  .finally(() => {
    for (const child of children) child.kill("SIGTERM");
    rmSync(work, { recursive: true, force: true });
  });
