// A fake of the desktop app's commands: in memory, recording every call, with events the test
// emits by hand. Each method can be made to fail with `failNext`.

import type {
  Bridge,
  CommandError,
  Conversation,
  Device,
  Event,
  Me,
  Message,
  Overview,
  Progress,
  Request,
  SafetyNumber,
  Settings,
  SignIn,
} from "../src/bridge";

export const SETTINGS: Settings = {
  servers: ["127.0.0.1:7443"],
  pin: "ab".repeat(32),
  user: "bob",
  device: "desktop",
};

export function message(overrides: Partial<Message> = {}): Message {
  return {
    id: "m1",
    conversation: "c1",
    sender: "alice/laptop",
    body: "hello",
    replyTo: null,
    sentAtMs: Date.UTC(2026, 11, 7, 10, 30),
    receivedAtMs: Date.UTC(2026, 11, 7, 10, 30),
    outgoing: false,
    state: { state: "received" },
    edited: false,
    deleted: false,
    reactions: [],
    readBy: [],
    attachment: null,
    ...overrides,
  };
}

export function conversation(overrides: Partial<Conversation> = {}): Conversation {
  return {
    id: "c1",
    kind: "direct",
    name: "",
    members: ["alice", "bob"],
    unread: 0,
    last: null,
    ...overrides,
  };
}

export class FakeBridge implements Bridge {
  calls: { name: string; args: unknown[] }[] = [];
  settings: Settings | null = SETTINGS;
  list: Conversation[] = [];
  pending: Request[] = [];
  history = new Map<string, Message[]>();
  devicesList: Device[] = [];
  numbers: SafetyNumber[] = [];
  overviewValue: Overview = {
    me: { user: "bob", device: "desktop", servers: SETTINGS.servers },
    connection: { state: "connected" },
    requests: 0,
    outbox: 0,
    maxAttachmentBytes: 1000,
  };
  warnings: Event[] = [];
  /** Emitted while `unlock` is being answered, as the app does while an account opens. */
  duringUnlock: Event[] = [];
  private failures = new Map<string, CommandError>();
  private eventHandlers: ((e: Event) => void)[] = [];
  private progressHandlers: ((p: Progress) => void)[] = [];

  /** The next call of `name` rejects with `error`. */
  failNext(name: string, error: CommandError) {
    this.failures.set(name, error);
  }

  emit(event: Event) {
    for (const h of this.eventHandlers) h(event);
  }

  progress(p: Progress) {
    for (const h of this.progressHandlers) h(p);
  }

  callsOf(name: string) {
    return this.calls.filter((c) => c.name === name).map((c) => c.args);
  }

  private async call<T>(name: string, args: unknown[], value: () => T): Promise<T> {
    this.calls.push({ name, args });
    const failure = this.failures.get(name);
    if (failure) {
      this.failures.delete(name);
      throw failure;
    }
    return value();
  }

  private me(): Me {
    return this.overviewValue.me;
  }

  savedSettings() {
    return this.call("savedSettings", [], () => this.settings);
  }
  signIn(request: SignIn) {
    return this.call("signIn", [request], () => this.me());
  }
  unlock(passphrase: string) {
    return this.call("unlock", [passphrase], () => {
      for (const e of this.duringUnlock) this.emit(e);
      return this.me();
    });
  }
  signOut() {
    return this.call("signOut", [], () => undefined);
  }
  overview() {
    return this.call("overview", [], () => this.overviewValue);
  }
  securityWarnings() {
    return this.call("securityWarnings", [], () => [...this.warnings]);
  }
  conversations() {
    return this.call("conversations", [], () => this.list.map((c) => ({ ...c })));
  }
  conversation(id: string) {
    return this.call("conversation", [id], () => {
      const found = this.list.find((c) => c.id === id);
      if (!found) {
        const missing: CommandError = { kind: "notFound", message: `not found: conversation ${id}`, retryable: false };
        throw missing;
      }
      return { ...found };
    });
  }
  requests() {
    return this.call("requests", [], () => [...this.pending]);
  }
  answerRequest(conversationId: string, accept: boolean) {
    return this.call("answerRequest", [conversationId, accept], () => {
      const request = this.pending.find((r) => r.conversation.id === conversationId);
      this.pending = this.pending.filter((r) => r !== request);
      if (accept && request) {
        this.list.push(request.conversation);
        return request.conversation;
      }
      return null;
    });
  }
  messages(conversationId: string, limit: number, before?: string) {
    return this.call("messages", [conversationId, limit, before], () => [
      ...(this.history.get(conversationId) ?? []),
    ]);
  }
  /** When set, `sendText` emits the events the app would for the message (its local echo,
   * then `states`) before it answers, as a fast server makes happen. */
  statesBeforeAnswer: ("sending" | "sent")[] | null = null;

  sendText(conversationId: string, body: string, replyTo: string | null) {
    return this.call("sendText", [conversationId, body, replyTo], () => {
      const sent = message({
        id: `sent-${this.calls.length}`,
        conversation: conversationId,
        sender: "bob/desktop",
        body,
        replyTo,
        outgoing: true,
        state: { state: "queued" },
      });
      this.history.set(conversationId, [...(this.history.get(conversationId) ?? []), sent]);
      if (this.statesBeforeAnswer) {
        this.emit({ type: "message", message: sent });
        for (const state of this.statesBeforeAnswer) {
          this.emit({ type: "sendState", id: sent.id, conversation: conversationId, state: { state } });
        }
      }
      return sent;
    });
  }
  editMessage(conversationId: string, id: string, body: string) {
    return this.call("editMessage", [conversationId, id, body], () => undefined);
  }
  deleteMessage(conversationId: string, id: string) {
    return this.call("deleteMessage", [conversationId, id], () => undefined);
  }
  react(conversationId: string, id: string, emoji: string, remove: boolean) {
    return this.call("react", [conversationId, id, emoji, remove], () => undefined);
  }
  markRead(conversationId: string) {
    return this.call("markRead", [conversationId], () => {
      const entry = this.list.find((c) => c.id === conversationId);
      const count = entry?.unread ?? 0;
      if (entry) entry.unread = 0;
      return count;
    });
  }
  typing(conversationId: string) {
    return this.call("typing", [conversationId], () => undefined);
  }
  sendAttachment(
    conversationId: string,
    file: { name: string; mime: string; bytes: Uint8Array },
    caption: string,
    transfer: string,
  ) {
    return this.call("sendAttachment", [conversationId, file, caption, transfer], () =>
      message({
        id: "file-1",
        conversation: conversationId,
        outgoing: true,
        sender: "bob/desktop",
        body: caption,
        state: { state: "queued" },
        attachment: { name: file.name, size: file.bytes.length, mime: file.mime },
      }),
    );
  }
  downloadAttachment(id: string, transfer: string) {
    return this.call("downloadAttachment", [id, transfer], () => `/home/bob/Downloads/${id}`);
  }
  startDirect(user: string) {
    return this.call("startDirect", [user], () => {
      const c = conversation({ id: `dm-${user}`, members: ["bob", user].sort() });
      this.list.push(c);
      return c;
    });
  }
  createGroup(name: string, members: string[]) {
    return this.call("createGroup", [name, members], () => {
      const c = conversation({ id: `g-${name}`, kind: "group", name, members: ["bob", ...members] });
      this.list.push(c);
      return c;
    });
  }
  invite(conversationId: string, user: string) {
    return this.call("invite", [conversationId, user], () => undefined);
  }
  removeMember(conversationId: string, user: string) {
    return this.call("removeMember", [conversationId, user], () => undefined);
  }
  leave(conversationId: string) {
    return this.call("leave", [conversationId], () => {
      this.list = this.list.filter((c) => c.id !== conversationId);
    });
  }
  rename(conversationId: string, name: string) {
    return this.call("rename", [conversationId, name], () => undefined);
  }
  devices() {
    return this.call("devices", [], () => this.devicesList);
  }
  safetyNumbers(user: string) {
    return this.call("safetyNumbers", [user], () => this.numbers);
  }
  async onEvent(handler: (event: Event) => void) {
    this.eventHandlers.push(handler);
    return () => {
      this.eventHandlers = this.eventHandlers.filter((h) => h !== handler);
    };
  }
  async onProgress(handler: (progress: Progress) => void) {
    this.progressHandlers.push(handler);
    return () => {
      this.progressHandlers = this.progressHandlers.filter((h) => h !== handler);
    };
  }
}
