// The window against a fake of the app's commands: what it shows for each message state,
// the key-transparency alarm, errors, requests, events and the keyboard.

import { render } from "preact";
import { act } from "preact/test-utils";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { App } from "../src/app";
import { Model } from "../src/model";
import { FakeBridge, conversation, message } from "./fake";

let root: HTMLElement;

beforeEach(() => {
  root = document.createElement("div");
  document.body.appendChild(root);
});

afterEach(() => {
  render(null, root);
  root.remove();
});

/** Renders the window and lets every started operation finish. */
async function mount(bridge: FakeBridge): Promise<Model> {
  const model = new Model(bridge);
  await act(async () => {
    render(<App model={model} />, root);
  });
  await settle(model);
  return model;
}

async function settle(model: Model) {
  await act(async () => {
    await model.idle();
  });
  // Work started by what just finished (a refresh after an event, say).
  await act(async () => {
    await model.idle();
  });
}

function $(selector: string): HTMLElement {
  const found = root.querySelector<HTMLElement>(selector);
  if (!found) throw new Error(`no ${selector} in: ${root.innerHTML.slice(0, 500)}`);
  return found;
}

function $$(selector: string): HTMLElement[] {
  return [...root.querySelectorAll<HTMLElement>(selector)];
}

function type(selector: string, value: string) {
  const field = $(selector) as HTMLInputElement;
  field.value = value;
  field.dispatchEvent(new Event("input", { bubbles: true }));
}

async function submit(model: Model, selector: string) {
  await act(async () => {
    $(selector).dispatchEvent(new Event("submit", { bubbles: true, cancelable: true }));
  });
  await settle(model);
}

async function click(model: Model, el: HTMLElement) {
  await act(async () => {
    el.click();
  });
  await settle(model);
}

/** Signed in with one direct conversation holding `messages`, open. */
async function openConversation(bridge: FakeBridge, messages = [message()]) {
  bridge.list = [conversation({ last: messages[messages.length - 1] ?? null })];
  bridge.history.set("c1", messages);
  const model = await mount(bridge);
  type("input[name=passphrase]", "local passphrase");
  await submit(model, "[data-testid=unlock]");
  await click(model, $("[data-testid=conversation]"));
  return model;
}

describe("first run and unlock", () => {
  it("asks for the server, the account and a passphrase, and shows a failure without losing the form", async () => {
    const bridge = new FakeBridge();
    bridge.settings = null;
    const model = await mount(bridge);
    expect($("[data-testid=first-run]")).toBeTruthy();
    type("textarea[name=servers]", "10.0.0.1:7443\n10.0.0.2:7443");
    type("input[name=pin]", "cd".repeat(32));
    type("input[name=user]", "bob@chat.example");
    type("input[name=password]", "pw");
    type("input[name=passphrase]", "local");
    bridge.failNext("signIn", {
      kind: "failed",
      message: "server: AlreadyExists: the user name is taken",
      retryable: false,
    });
    await submit(model, "[data-testid=first-run]");

    expect($("[data-testid=error]").textContent).toContain("the user name is taken");
    expect(($("input[name=user]") as HTMLInputElement).value).toBe("bob@chat.example");
    const [request] = bridge.callsOf("signIn")[0] as [Record<string, unknown>];
    expect(request).toMatchObject({
      settings: {
        servers: ["10.0.0.1:7443", "10.0.0.2:7443"],
        pin: "cd".repeat(32),
        user: "bob@chat.example",
        device: "desktop",
      },
      password: "pw",
      passphrase: "local",
      register: true,
      invite: null,
    });

    await submit(model, "[data-testid=first-run]");
    expect(root.querySelector("[data-testid=first-run]")).toBeNull();
    expect($("[data-testid=connection]").textContent).toBe("Connected");
  });

  it("says when the passphrase is wrong, and sends an ended session back to sign-in", async () => {
    const bridge = new FakeBridge();
    const model = await mount(bridge);
    expect($("[data-testid=unlock]").textContent).toContain("Welcome back, bob");
    bridge.failNext("unlock", {
      kind: "wrongPassphrase",
      message: "the local store cannot be opened with this key (wrong passphrase?)",
      retryable: false,
    });
    type("input[name=passphrase]", "wrong");
    await submit(model, "[data-testid=unlock]");
    expect($("[data-testid=error]").textContent).toContain("wrong passphrase");

    bridge.failNext("unlock", { kind: "signedOut", message: "sign in first", retryable: false });
    await submit(model, "[data-testid=unlock]");
    expect($("[data-testid=first-run]")).toBeTruthy();
    expect($("[data-testid=error]").textContent).toContain("session has ended");
    // The remembered settings fill the form.
    expect(($("input[name=user]") as HTMLInputElement).value).toBe("bob");
  });
});

describe("messages", () => {
  it("shows each delivery state of an outgoing message, and nothing for incoming ones", async () => {
    const out = (id: string, state: Parameters<typeof message>[0]) =>
      message({ id, outgoing: true, sender: "bob/desktop", body: id, ...state });
    const bridge = new FakeBridge();
    await openConversation(bridge, [
      message({ id: "in", body: "incoming" }),
      out("queued", { state: { state: "queued" } }),
      out("sending", { state: { state: "sending" } }),
      out("sent", { state: { state: "sent" } }),
      out("read", { state: { state: "sent" }, readBy: ["alice"] }),
      out("retrying", { state: { state: "failed", recoverable: true, reason: "server busy" } }),
      out("failed", { state: { state: "failed", recoverable: false, reason: "alice left" } }),
    ]);
    const rows = $$("[data-testid=message]");
    const label = (i: number) => rows[i]?.querySelector("[data-testid=state]");
    expect(rows).toHaveLength(7);
    expect(label(0)).toBeNull();
    expect(label(1)?.textContent).toBe("Queued");
    expect(label(2)?.textContent).toBe("Sending…");
    expect(label(3)?.textContent).toBe("Sent");
    expect(label(4)?.textContent).toBe("Read by alice");
    expect(label(5)?.textContent).toBe("Retrying: server busy");
    expect(label(5)?.className).toContain("warn");
    expect(label(6)?.textContent).toBe("Failed: alice left");
    expect(label(6)?.className).toContain("bad");
  });

  it("shows replies, edits, deletions, reactions and attachments", async () => {
    const bridge = new FakeBridge();
    await openConversation(bridge, [
      message({ id: "first", body: "lunch?" }),
      message({ id: "reply", body: "yes", replyTo: "first", outgoing: true, sender: "bob/desktop", state: { state: "sent" } }),
      message({ id: "edited", body: "at noon", edited: true }),
      message({ id: "gone", body: "", deleted: true }),
      message({ id: "liked", body: "see you", reactions: [["alice", "👍"], ["bob", "👍"], ["alice", "🎉"]] }),
      message({ id: "file", body: "the menu", attachment: { name: "menu.pdf", size: 3 * 1024 * 1024, mime: "application/pdf" } }),
      message({ id: "orphan", body: "re: old", replyTo: "not-loaded" }),
    ]);
    const rows = $$("[data-testid=message]");
    expect(rows[1]?.querySelector("[data-testid=quote]")?.textContent).toBe("alice lunch?");
    expect(rows[2]?.textContent).toContain("edited");
    expect(rows[3]?.textContent).toContain("This message was deleted");
    expect(rows[3]?.querySelector("[data-testid=body]")).toBeNull();
    const reactions = [...(rows[4]?.querySelectorAll(".reaction") ?? [])].map((r) => r.textContent);
    expect(reactions).toEqual(["👍 2", "🎉 1"]);
    expect(rows[4]?.querySelector(".reaction.mine")?.textContent).toBe("👍 2");
    expect(rows[5]?.textContent).toContain("menu.pdf");
    expect(rows[5]?.textContent).toContain("3.0 MiB");
    expect(rows[6]?.querySelector("[data-testid=quote]")?.textContent).toContain("earlier message");
  });

  it("renders text from other people as text, never as markup", async () => {
    const bridge = new FakeBridge();
    await openConversation(bridge, [
      message({ body: '<img src=x onerror="window.pwned=1"><b>bold</b>', sender: "<i>mallory</i>/x" }),
    ]);
    const row = $("[data-testid=message]");
    expect(row.querySelector("img, b, i")).toBeNull();
    expect(row.querySelector("[data-testid=body]")?.textContent).toBe(
      '<img src=x onerror="window.pwned=1"><b>bold</b>',
    );
  });

  it("follows events: a new message in the open conversation is read at once, a state moves on", async () => {
    const bridge = new FakeBridge();
    const model = await openConversation(bridge);
    const readsBefore = bridge.callsOf("markRead").length;
    await act(async () => {
      bridge.emit({ type: "message", message: message({ id: "m2", body: "are you there?" }) });
    });
    await settle(model);
    expect($$("[data-testid=message]").map((m) => m.querySelector("[data-testid=body]")?.textContent)).toEqual([
      "hello",
      "are you there?",
    ]);
    expect(bridge.callsOf("markRead").length).toBe(readsBefore + 1);

    await act(async () => type("[data-testid=composer]", "yes!"));
    await submit(model, ".composer");
    const sent = bridge.callsOf("sendText")[0];
    expect(sent).toEqual(["c1", "yes!", null]);
    const mine = $$("[data-testid=message]").at(-1);
    expect(mine?.querySelector("[data-testid=state]")?.textContent).toBe("Queued");
    // The event names the message by id: the one just sent.
    const sentId = (bridge.history.get("c1") ?? []).at(-1)?.id ?? "";
    await act(async () => {
      bridge.emit({ type: "sendState", id: sentId, conversation: "c1", state: { state: "sent" } });
    });
    expect($$("[data-testid=message]").at(-1)?.querySelector("[data-testid=state]")?.textContent).toBe("Sent");
  });

  it("keeps the newest state when the events of a sent message overtake the answer to sending it", async () => {
    const bridge = new FakeBridge();
    const model = await openConversation(bridge);
    bridge.statesBeforeAnswer = ["sending", "sent"];
    await act(async () => type("[data-testid=composer]", "fast server"));
    await submit(model, ".composer");
    const mine = $$("[data-testid=message]").at(-1);
    expect(mine?.querySelector("[data-testid=body]")?.textContent).toBe("fast server");
    expect(mine?.querySelector("[data-testid=state]")?.textContent).toBe("Sent");
  });

  it("reads again only the list entry an event names, and drops one that is gone", async () => {
    const bridge = new FakeBridge();
    const model = await openConversation(bridge);
    bridge.list.push(conversation({ id: "c2", members: ["bob", "carol"] }));
    await model.refresh();
    const listReads = bridge.callsOf("conversations").length;
    bridge.list = bridge.list.map((c) => (c.id === "c2" ? { ...c, unread: 3 } : c));
    await act(async () => {
      bridge.emit({ type: "message", message: message({ id: "y", conversation: "c2", body: "hi" }) });
    });
    await settle(model);
    expect(bridge.callsOf("conversations").length).toBe(listReads);
    expect(bridge.callsOf("conversation")).toEqual([["c2"]]);
    const carol = $$("[data-testid=conversation]").find((c) => c.textContent?.includes("carol"));
    expect(carol?.querySelector("[data-testid=unread]")?.textContent).toBe("3");

    bridge.list = bridge.list.filter((c) => c.id !== "c2");
    await act(async () => {
      bridge.emit({ type: "conversationChanged", conversation: "c2" });
    });
    await settle(model);
    expect($$("[data-testid=conversation]").map((c) => c.textContent)).not.toContain(expect.stringContaining("carol"));
    expect(root.querySelector("[data-testid=error]")).toBeNull();
  });

  it("shows an unread count for other conversations and a typing line", async () => {
    const bridge = new FakeBridge();
    const model = await openConversation(bridge);
    bridge.list.push(conversation({ id: "c2", members: ["bob", "carol"], unread: 2, last: message({ id: "x", conversation: "c2", sender: "carol/p", body: "ping", sentAtMs: Date.now() }) }));
    await act(async () => {
      bridge.emit({ type: "message", message: message({ id: "x", conversation: "c2", body: "ping" }) });
      bridge.emit({ type: "typing", conversation: "c1", user: "alice/laptop" });
    });
    await settle(model);
    const carol = $$("[data-testid=conversation]").find((c) => c.textContent?.includes("carol"));
    expect(carol?.querySelector("[data-testid=unread]")?.textContent).toBe("2");
    expect($(".typing").textContent).toBe("alice is typing…");
  });

  it("shows a command's error to the person, and the draft is not lost from the conversation", async () => {
    const bridge = new FakeBridge();
    const model = await openConversation(bridge);
    bridge.failNext("sendText", {
      kind: "failed",
      message: "the outbox is full (10000 undelivered items); try again once it drains",
      retryable: true,
    });
    await act(async () => type("[data-testid=composer]", "hello?"));
    await submit(model, ".composer");
    expect($("[data-testid=error]").textContent).toContain("the outbox is full");
    expect(($("[data-testid=composer]") as HTMLTextAreaElement).value).toBe("hello?");
    await click(model, $("[data-testid=error] button"));
    expect(root.querySelector("[data-testid=error]")).toBeNull();
  });
});

describe("safety", () => {
  it("raises the key-transparency alarm as a banner that stays until acknowledged", async () => {
    const bridge = new FakeBridge();
    const model = await openConversation(bridge);
    await act(async () => {
      bridge.emit({ type: "keyTransparencyAlarm", device: "alice/laptop", reason: "the log head is inconsistent" });
      bridge.emit({ type: "connection", connection: { state: "offline", reason: "network down" } });
      bridge.emit({ type: "message", message: message({ id: "m9", body: "later" }) });
    });
    await settle(model);
    const banner = $("[data-testid=kt-alarm]");
    expect(banner.getAttribute("role")).toBe("alert");
    expect(banner.textContent).toContain("alice/laptop");
    expect(banner.textContent).toContain("the log head is inconsistent");
    expect($("[data-testid=connection]").textContent).toBe("Offline: network down");
    // Escape closes dialogs, not the alarm.
    await act(async () => {
      window.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape" }));
    });
    expect(root.querySelector("[data-testid=kt-alarm]")).not.toBeNull();
    await click(model, $("[data-testid=kt-alarm] button"));
    expect(root.querySelector("[data-testid=kt-alarm]")).toBeNull();
  });

  it("shows the alarms and safety-number changes whose events it missed, once, until acknowledged", async () => {
    const bridge = new FakeBridge();
    const alarm = { type: "keyTransparencyAlarm", device: "carol/pc", reason: "not in the log" } as const;
    // One event arrives while the account opens; one was reported before the window listened.
    bridge.duringUnlock = [{ type: "safetyNumberChanged", user: "erin", device: "phone" }];
    bridge.warnings = [alarm, { type: "safetyNumberChanged", user: "dave", device: "tablet" }, alarm];
    const model = await openConversation(bridge);
    expect($$("[data-testid=kt-alarm]")).toHaveLength(1);
    expect($("[data-testid=kt-alarm]").textContent).toContain("carol/pc");
    const notices = $$(".banner.notice").map((n) => n.textContent);
    expect(notices).toHaveLength(2);
    expect(notices.join()).toContain("erin");
    expect(notices.join()).toContain("dave");

    await click(model, $("[data-testid=kt-alarm] button"));
    await act(async () => {
      bridge.emit({ type: "resync" });
    });
    await settle(model);
    // Caught up again after falling behind: the acknowledged alarm stays acknowledged.
    expect(bridge.callsOf("securityWarnings").length).toBe(2);
    expect(root.querySelector("[data-testid=kt-alarm]")).toBeNull();
  });

  it("keeps one alarm banner per device, forgets nothing of an account at sign-out, and leaves dismissed notices dismissed", async () => {
    const bridge = new FakeBridge();
    const model = await openConversation(bridge);
    await act(async () => {
      bridge.emit({ type: "keyTransparencyAlarm", device: "eve/x", reason: "first" });
      bridge.emit({ type: "keyTransparencyAlarm", device: "eve/x", reason: "second" });
      bridge.emit({ type: "safetyNumberChanged", user: "dave", device: "tablet" });
    });
    await settle(model);
    expect($$("[data-testid=kt-alarm]")).toHaveLength(1);
    expect($("[data-testid=kt-alarm]").textContent).toContain("second");

    bridge.warnings = [{ type: "safetyNumberChanged", user: "dave", device: "tablet" }];
    await click(model, $(".banner.notice button"));
    await act(async () => {
      bridge.emit({ type: "resync" });
    });
    await settle(model);
    expect($$(".banner.notice")).toHaveLength(0);

    await click(model, $$(".sidebar footer button")[0] as HTMLElement);
    expect($("[data-testid=first-run]")).toBeTruthy();
    bridge.warnings = [];
    type("input[name=password]", "pw");
    type("input[name=passphrase]", "p");
    await submit(model, "[data-testid=first-run]");
    expect(root.querySelector("[data-testid=kt-alarm]")).toBeNull();
  });

  it("counts undecryptable messages in one notice instead of burying the window", async () => {
    const bridge = new FakeBridge();
    const model = await openConversation(bridge);
    await act(async () => {
      for (let i = 0; i < 50; i++) bridge.emit({ type: "undecryptable", reason: `bad ${i}` });
    });
    await settle(model);
    const notices = $$(".banner.notice");
    expect(notices).toHaveLength(1);
    expect(notices[0]?.textContent).toContain("50 messages could not be decrypted");
    expect(notices[0]?.textContent).toContain("bad 49");
  });

  it("shows the safety numbers of a direct conversation's other member", async () => {
    const bridge = new FakeBridge();
    bridge.numbers = [{ device: "alice/laptop", number: "12345 67890 12345" }];
    const model = await openConversation(bridge);
    const button = $$(".conversation header button").find((b) => b.textContent === "Safety number");
    await click(model, button as HTMLElement);
    expect(bridge.callsOf("safetyNumbers")).toEqual([["alice"]]);
    expect($("[role=dialog]").textContent).toContain("12345 67890 12345");
  });
});

describe("files", () => {
  it("refuses a file above the limit before reading or sending it", async () => {
    const bridge = new FakeBridge();
    const model = await openConversation(bridge);
    await act(async () => {
      await model.attach({ name: "big.iso", mime: "", bytes: new Uint8Array(1001) }, "");
    });
    expect($("[data-testid=error]").textContent).toContain("too large");
    expect(bridge.callsOf("sendAttachment")).toHaveLength(0);
    await act(async () => {
      await model.attach({ name: "small.txt", mime: "text/plain", bytes: new Uint8Array(1000) }, "");
    });
    await settle(model);
    expect(bridge.callsOf("sendAttachment")).toHaveLength(1);
  });
});

describe("requests, groups and the keyboard", () => {
  it("orders conversations by when their last message arrived here, not by the sender's clock", async () => {
    const bridge = new FakeBridge();
    const future = message({ id: "f", conversation: "c1", sentAtMs: Date.UTC(2099, 0, 1), receivedAtMs: 1000 });
    const recent = message({ id: "r", conversation: "c2", sentAtMs: 2000, receivedAtMs: 2000 });
    bridge.list = [
      conversation({ id: "c1", members: ["bob", "mallory"], last: future }),
      conversation({ id: "c2", members: ["bob", "carol"], last: recent }),
    ];
    const model = await mount(bridge);
    type("input[name=passphrase]", "p");
    await submit(model, "[data-testid=unlock]");
    const names = $$("[data-testid=conversation] .name").map((n) => n.textContent);
    expect(names).toEqual(["carol", "mallory"]);
  });

  it("accepts a message request and opens its conversation", async () => {
    const bridge = new FakeBridge();
    const model = await mount(bridge);
    type("input[name=passphrase]", "p");
    await submit(model, "[data-testid=unlock]");
    const invited = conversation({ id: "r1", kind: "group", name: "climbing", members: ["bob", "dave", "erin"] });
    bridge.pending = [{ conversation: invited, inviter: "dave" }];
    bridge.history.set("r1", [message({ id: "w", conversation: "r1", sender: "dave/p", body: "welcome" })]);
    await act(async () => {
      bridge.emit({ type: "request", request: { conversation: invited, inviter: "dave" } });
    });
    await settle(model);
    expect($("[data-testid=request]").textContent).toContain("dave invites you to the group climbing");
    await click(model, $("[data-testid=request] button.primary"));
    expect(bridge.callsOf("answerRequest")).toEqual([["r1", true]]);
    expect(root.querySelector("[data-testid=request]")).toBeNull();
    expect($("[data-testid=conversation-title]").textContent).toBe("climbing");
    expect($("[data-testid=message]").textContent).toContain("welcome");
  });

  it("creates a group from the new-chat dialog opened with Ctrl+N", async () => {
    const bridge = new FakeBridge();
    const model = await openConversation(bridge);
    await act(async () => {
      window.dispatchEvent(new KeyboardEvent("keydown", { key: "n", ctrlKey: true }));
    });
    const tabs = $$("[data-testid=new-chat-form] [role=tab]");
    await click(model, tabs[1] as HTMLElement);
    type("[data-testid=new-chat-form] input[name=name]", "trip");
    type("[data-testid=new-chat-form] input[name=members]", "carol dave@b.example");
    await submit(model, "[data-testid=new-chat-form]");
    expect(bridge.callsOf("createGroup")).toEqual([["trip", ["carol", "dave@b.example"]]]);
    expect($("[data-testid=conversation-title]").textContent).toBe("trip");
  });

  it("moves between conversations with Alt+arrows and cancels a reply with Escape", async () => {
    const bridge = new FakeBridge();
    const model = await openConversation(bridge);
    bridge.list.push(conversation({ id: "c2", members: ["bob", "carol"] }));
    await model.refresh();
    await act(async () => {
      window.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowDown", altKey: true }));
    });
    await settle(model);
    expect(model.state.selected).toBe("c2");
    await act(async () => {
      window.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowUp", altKey: true }));
    });
    await settle(model);
    expect(model.state.selected).toBe("c1");

    await click(model, $("[data-testid=message] [aria-label=Reply]"));
    expect($("[data-testid=composer-context]").textContent).toContain("Replying to alice");
    await act(async () => {
      window.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape" }));
    });
    expect(root.querySelector("[data-testid=composer-context]")).toBeNull();
  });
});
