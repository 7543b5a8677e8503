// The window's state, and what it does with the bridge: no messaging logic of its own (the
// SDK behind the bridge has it all), only what to show and when to ask again.

import {
  errorMessage,
  isError,
  type Bridge,
  type Connection,
  type Conversation,
  type Device,
  type Event,
  type Me,
  type Message,
  type Request,
  type SafetyNumber,
  type Settings,
  type SignIn,
} from "./bridge";

export type Phase = "loading" | "firstRun" | "locked" | "ready";

export interface Alarm {
  device: string;
  reason: string;
}

export interface Transfer {
  id: string;
  label: string;
  done: number;
  total: number;
}

export type Dialog =
  | { kind: "newChat" }
  | { kind: "group"; conversation: string }
  | { kind: "devices"; devices: Device[] | null }
  | { kind: "safety"; user: string; numbers: SafetyNumber[] | null }
  | { kind: "help" };

export interface State {
  phase: Phase;
  settings: Settings | null;
  me: Me | null;
  connection: Connection;
  conversations: Conversation[];
  requests: Request[];
  selected: string | null;
  messages: Message[];
  /** Whether older messages may exist before the first loaded one. */
  moreBefore: boolean;
  typing: Map<string, string>;
  replyTo: Message | null;
  editing: Message | null;
  alarms: Alarm[];
  notices: string[];
  error: string | null;
  busy: boolean;
  transfers: Transfer[];
  saved: string[];
  dialog: Dialog | null;
}

const PAGE = 100;
/** How long a typing notice shows without a new one. */
const TYPING_MS = 5000;

let transferCount = 0;

export class Model {
  state: State = {
    phase: "loading",
    settings: null,
    me: null,
    connection: { state: "offline", reason: "not signed in" },
    conversations: [],
    requests: [],
    selected: null,
    messages: [],
    moreBefore: false,
    typing: new Map(),
    replyTo: null,
    editing: null,
    alarms: [],
    notices: [],
    error: null,
    busy: false,
    transfers: [],
    saved: [],
    dialog: null,
  };

  private listeners = new Set<() => void>();
  private pending = 0;
  private idleWaiters: (() => void)[] = [];
  private unlisten: (() => void)[] = [];
  private typingTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private refreshing: Promise<void> | null = null;
  private refreshAgain = false;

  constructor(private bridge: Bridge) {}

  /** Calls `listener` after every change. */
  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Resolves once every operation started so far has finished (for tests). */
  idle(): Promise<void> {
    if (this.pending === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private set(patch: Partial<State>) {
    this.state = { ...this.state, ...patch };
    for (const listener of this.listeners) listener();
  }

  /** Runs `work`, showing its error (if any) to the person instead of losing it. */
  private async run<T>(work: () => Promise<T>): Promise<T | undefined> {
    this.pending++;
    try {
      return await work();
    } catch (err) {
      this.set({ error: errorMessage(err) });
      return undefined;
    } finally {
      this.pending--;
      if (this.pending === 0) {
        const waiters = this.idleWaiters;
        this.idleWaiters = [];
        for (const w of waiters) w();
      }
    }
  }

  dismissError() {
    this.set({ error: null });
  }

  /** First screen: the sign-in form, or the passphrase for the remembered account. */
  start() {
    return this.run(async () => {
      const settings = await this.bridge.savedSettings();
      this.set({ settings, phase: settings ? "locked" : "firstRun" });
    });
  }

  /** Back to the sign-in form (another account, or a session the server ended). */
  useAnotherAccount() {
    this.set({ phase: "firstRun", error: null });
  }

  signIn(request: SignIn) {
    return this.run(async () => {
      this.set({ busy: true, error: null });
      try {
        const me = await this.bridge.signIn(request);
        await this.opened(me, request.settings);
      } finally {
        this.set({ busy: false });
      }
    });
  }

  unlock(passphrase: string) {
    return this.run(async () => {
      this.set({ busy: true, error: null });
      try {
        const me = await this.bridge.unlock(passphrase);
        await this.opened(me, this.state.settings);
      } catch (err) {
        if (isError(err, "signedOut")) {
          // The server ended the session: sign in again with the remembered settings.
          this.set({
            phase: "firstRun",
            error: "Your session has ended. Sign in again with your password.",
          });
          return;
        }
        throw err;
      } finally {
        this.set({ busy: false });
      }
    });
  }

  signOut() {
    return this.run(async () => {
      for (const u of this.unlisten) u();
      this.unlisten = [];
      await this.bridge.signOut();
      this.set({
        phase: "firstRun",
        me: null,
        conversations: [],
        requests: [],
        selected: null,
        messages: [],
        dialog: null,
      });
    });
  }

  private async opened(me: Me, settings: Settings | null) {
    this.unlisten.push(await this.bridge.onEvent((e) => this.onEvent(e)));
    this.unlisten.push(
      await this.bridge.onProgress((p) =>
        this.set({
          transfers: this.state.transfers.map((t) =>
            t.id === p.transfer ? { ...t, done: p.done, total: p.total } : t,
          ),
        }),
      ),
    );
    this.set({ me, settings, phase: "ready" });
    const overview = await this.bridge.overview();
    this.set({ connection: overview.connection });
    await this.refresh();
  }

  /** Reloads the conversation list and the requests; calls that overlap run once more at
   * the end instead of racing. */
  refresh(): Promise<void> {
    if (this.refreshing) {
      this.refreshAgain = true;
      return this.refreshing;
    }
    this.refreshing = (async () => {
      do {
        this.refreshAgain = false;
        await this.run(async () => {
          const [conversations, requests] = await Promise.all([
            this.bridge.conversations(),
            this.bridge.requests(),
          ]);
          conversations.sort((a, b) => (b.last?.sentAtMs ?? 0) - (a.last?.sentAtMs ?? 0));
          this.set({ conversations, requests });
        });
      } while (this.refreshAgain);
      this.refreshing = null;
    })();
    return this.refreshing;
  }

  /** The conversation shown, if any. */
  current(): Conversation | undefined {
    return this.state.conversations.find((c) => c.id === this.state.selected);
  }

  select(id: string | null) {
    this.set({ selected: id, messages: [], replyTo: null, editing: null, moreBefore: false });
    if (id === null) return Promise.resolve();
    return this.run(async () => {
      await this.loadMessages(id);
      await this.markRead(id);
    });
  }

  /** Selects the conversation `step` places down (or up) the list. */
  selectNext(step: 1 | -1) {
    const list = this.state.conversations;
    if (!list.length) return;
    const at = list.findIndex((c) => c.id === this.state.selected);
    const next = list[(at + step + list.length) % list.length];
    if (next) void this.select(next.id);
  }

  private async loadMessages(id: string) {
    const messages = await this.bridge.messages(id, PAGE);
    if (this.state.selected === id) {
      this.set({ messages, moreBefore: messages.length === PAGE });
    }
  }

  loadOlder() {
    const id = this.state.selected;
    const first = this.state.messages[0];
    if (!id || !first) return Promise.resolve();
    return this.run(async () => {
      const older = await this.bridge.messages(id, PAGE, first.id);
      if (this.state.selected === id) {
        this.set({
          messages: [...older, ...this.state.messages],
          moreBefore: older.length === PAGE,
        });
      }
    });
  }

  private async markRead(id: string) {
    const entry = this.state.conversations.find((c) => c.id === id);
    const unreadHere = this.state.messages.some(
      (m) => !m.outgoing && !m.deleted && !m.readBy.includes(this.state.me?.user ?? ""),
    );
    if ((entry?.unread ?? 0) > 0 || unreadHere) {
      await this.bridge.markRead(id);
      await this.refresh();
    }
  }

  private onEvent(e: Event) {
    switch (e.type) {
      case "message": {
        const m = e.message;
        if (m.conversation === this.state.selected) {
          this.upsert(m);
          if (!m.outgoing) void this.run(() => this.markRead(m.conversation));
        }
        this.clearTyping(m.conversation);
        void this.refresh();
        break;
      }
      case "conversationChanged":
        void this.refresh();
        if (e.conversation === this.state.selected) {
          void this.run(() => this.loadMessages(e.conversation));
        }
        break;
      case "request":
        void this.refresh();
        break;
      case "sendState":
        if (e.conversation === this.state.selected) {
          this.set({
            messages: this.state.messages.map((m) =>
              m.id === e.id ? { ...m, state: e.state } : m,
            ),
          });
        }
        break;
      case "typing": {
        const typing = new Map(this.state.typing);
        typing.set(e.conversation, e.user);
        this.set({ typing });
        clearTimeout(this.typingTimers.get(e.conversation));
        this.typingTimers.set(
          e.conversation,
          setTimeout(() => this.clearTyping(e.conversation), TYPING_MS),
        );
        break;
      }
      case "connection":
        this.set({ connection: e.connection });
        break;
      case "keyTransparencyAlarm":
        this.set({ alarms: [...this.state.alarms, { device: e.device, reason: e.reason }] });
        break;
      case "safetyNumberChanged":
        this.set({
          notices: [
            ...this.state.notices,
            `The safety number with ${e.user} changed (device ${e.device}). Compare it again before you share anything sensitive.`,
          ],
        });
        break;
      case "undecryptable":
        this.set({
          notices: [...this.state.notices, `A message could not be decrypted: ${e.reason}`],
        });
        break;
      case "resync":
        void this.refresh();
        if (this.state.selected) {
          const id = this.state.selected;
          void this.run(() => this.loadMessages(id));
        }
        break;
    }
  }

  private upsert(m: Message) {
    const messages = this.state.messages;
    const at = messages.findIndex((x) => x.id === m.id);
    this.set({
      messages: at < 0 ? [...messages, m] : messages.map((x, i) => (i === at ? m : x)),
    });
  }

  private clearTyping(conversation: string) {
    if (!this.state.typing.has(conversation)) return;
    const typing = new Map(this.state.typing);
    typing.delete(conversation);
    this.set({ typing });
  }

  acknowledgeAlarm() {
    this.set({ alarms: this.state.alarms.slice(1) });
  }

  dismissNotice(index: number) {
    this.set({ notices: this.state.notices.filter((_, i) => i !== index) });
  }

  setReplyTo(m: Message | null) {
    this.set({ replyTo: m, editing: null });
  }

  setEditing(m: Message | null) {
    this.set({ editing: m, replyTo: null });
  }

  /** The composer's text: an edit of the message being edited, a reply, or a new message.
   * Resolves to whether it was taken (the composer keeps the draft otherwise). */
  async send(text: string): Promise<boolean> {
    const id = this.state.selected;
    const body = text.trim();
    if (!id || !body) return false;
    const { editing, replyTo } = this.state;
    const taken = await this.run(async () => {
      if (editing) {
        await this.bridge.editMessage(id, editing.id, body);
        this.set({ editing: null });
        await this.loadMessages(id);
        return true;
      }
      const sent = await this.bridge.sendText(id, body, replyTo?.id ?? null);
      this.set({ replyTo: null });
      if (this.state.selected === id) this.upsert(sent);
      await this.refresh();
      return true;
    });
    return taken ?? false;
  }

  /** The newest message of this user here, for ArrowUp in an empty composer. */
  lastOwn(): Message | undefined {
    return [...this.state.messages]
      .reverse()
      .find((m) => m.outgoing && !m.deleted && !m.attachment);
  }

  remove(m: Message) {
    return this.run(async () => {
      await this.bridge.deleteMessage(m.conversation, m.id);
      await this.loadMessages(m.conversation);
    });
  }

  toggleReaction(m: Message, emoji: string) {
    const me = this.state.me?.user ?? "";
    const mine = m.reactions.some(([u, e]) => u === me && e === emoji);
    return this.run(async () => {
      await this.bridge.react(m.conversation, m.id, emoji, mine);
      await this.loadMessages(m.conversation);
    });
  }

  typing() {
    const id = this.state.selected;
    if (!id) return;
    // A live hint only: a failure is not worth an error.
    this.bridge.typing(id).catch(() => undefined);
  }

  attach(file: { name: string; mime: string; bytes: Uint8Array }, caption: string) {
    const id = this.state.selected;
    if (!id) return Promise.resolve();
    const transfer: Transfer = {
      id: `up-${++transferCount}`,
      label: `Uploading ${file.name}`,
      done: 0,
      total: file.bytes.length,
    };
    this.set({ transfers: [...this.state.transfers, transfer] });
    return this.run(async () => {
      try {
        const sent = await this.bridge.sendAttachment(id, file, caption, transfer.id);
        if (this.state.selected === id) this.upsert(sent);
        await this.refresh();
      } finally {
        this.set({ transfers: this.state.transfers.filter((t) => t.id !== transfer.id) });
      }
    });
  }

  download(m: Message) {
    const transfer: Transfer = {
      id: `down-${++transferCount}`,
      label: `Downloading ${m.attachment?.name ?? "file"}`,
      done: 0,
      total: m.attachment?.size ?? 0,
    };
    this.set({ transfers: [...this.state.transfers, transfer] });
    return this.run(async () => {
      try {
        const path = await this.bridge.downloadAttachment(m.id, transfer.id);
        this.set({ saved: [...this.state.saved, path] });
      } finally {
        this.set({ transfers: this.state.transfers.filter((t) => t.id !== transfer.id) });
      }
    });
  }

  answer(request: Request, accept: boolean) {
    return this.run(async () => {
      const c = await this.bridge.answerRequest(request.conversation.id, accept);
      await this.refresh();
      if (c) await this.select(c.id);
    });
  }

  openDialog(dialog: Dialog) {
    this.set({ dialog });
    if (dialog.kind === "devices") {
      void this.run(async () => {
        const devices = await this.bridge.devices();
        if (this.state.dialog?.kind === "devices") this.set({ dialog: { kind: "devices", devices } });
      });
    }
    if (dialog.kind === "safety") {
      void this.run(async () => {
        const numbers = await this.bridge.safetyNumbers(dialog.user);
        if (this.state.dialog?.kind === "safety") {
          this.set({ dialog: { kind: "safety", user: dialog.user, numbers } });
        }
      });
    }
  }

  closeDialog() {
    this.set({ dialog: null });
  }

  startDirect(user: string) {
    return this.run(async () => {
      const c = await this.bridge.startDirect(user);
      this.set({ dialog: null });
      await this.refresh();
      await this.select(c.id);
    });
  }

  createGroup(name: string, members: string[]) {
    return this.run(async () => {
      const c = await this.bridge.createGroup(name, members);
      this.set({ dialog: null });
      await this.refresh();
      await this.select(c.id);
    });
  }

  /** A group change (invite, remove, rename), then the list again. */
  changeGroup(change: (bridge: Bridge, conversation: string) => Promise<void>) {
    const id = this.state.selected;
    if (!id) return Promise.resolve();
    return this.run(async () => {
      await change(this.bridge, id);
      await this.refresh();
    });
  }

  leave() {
    const id = this.state.selected;
    if (!id) return Promise.resolve();
    return this.run(async () => {
      await this.bridge.leave(id);
      this.set({ dialog: null, selected: null, messages: [] });
      await this.refresh();
    });
  }
}
