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
  /** The largest file an attachment may carry (from the app). */
  maxAttachmentBytes: number;
}

const PAGE = 100;
/** At most this many notices show at once (the newest). */
const NOTICES_SHOWN = 5;
/** How long a typing notice shows without a new one. */
const TYPING_MS = 5000;

let transferCount = 0;
/** How the notice about undecryptable messages starts. */
const UNDECRYPTABLE = "Undecryptable: ";

/** Newest first by when this device got the last message: a sender's clock cannot pin a
 * conversation to the top. */
function byArrival(conversations: Conversation[]): Conversation[] {
  return [...conversations].sort(
    (a, b) => (b.last?.receivedAtMs ?? 0) - (a.last?.receivedAtMs ?? 0),
  );
}

/** Runs `work` when asked, or once more after the current run when asked again meanwhile: a
 * burst of requests makes one extra run at the end, not one each, and never two at once. */
class Coalesced {
  private running: Promise<void> | null = null;
  private again = false;

  constructor(private work: () => Promise<unknown>) {}

  request(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      try {
        do {
          this.again = false;
          await this.work();
        } while (this.again);
      } finally {
        this.running = null;
      }
    })();
    return this.running;
  }
}

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
    maxAttachmentBytes: Infinity,
  };

  private listeners = new Set<() => void>();
  private pending = 0;
  private idleWaiters: (() => void)[] = [];
  private listening: Promise<void> | null = null;
  private typingTimers = new Map<string, ReturnType<typeof setTimeout>>();
  private lists = new Coalesced(() =>
    this.run(async () => {
      const [conversations, requests] = await Promise.all([
        this.bridge.conversations(),
        this.bridge.requests(),
      ]);
      this.set({ conversations: byArrival(conversations), requests });
    }),
  );
  /** Conversations an event named, whose list entries are read again. */
  private changed = new Set<string>();
  private entries = new Coalesced(() =>
    this.run(async () => {
      while (this.changed.size && this.state.phase === "ready") {
        const ids = [...this.changed];
        this.changed.clear();
        for (const id of ids) {
          let entry: Conversation | null = null;
          try {
            entry = await this.bridge.conversation(id);
          } catch (err) {
            // Left or declined meanwhile: it leaves the list.
            if (!isError(err, "notFound")) throw err;
          }
          const others = this.state.conversations.filter((c) => c.id !== id);
          this.set({ conversations: byArrival(entry ? [...others, entry] : others) });
        }
      }
    }),
  );
  private openMessages = new Coalesced(async () => {
    const id = this.state.selected;
    if (id && this.state.phase === "ready") await this.run(() => this.loadMessages(id));
  });
  /** Alarms the person acknowledged (device and reason), not shown again. */
  private acknowledged = new Set<string>();
  /** Notices the person dismissed, not shown again when the warnings are read anew. */
  private dismissed = new Set<string>();
  private undecryptable = 0;

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

  /** Listens to the app's events, once, before the first account opens: nothing it reports
   * while opening is missed. */
  private listen(): Promise<void> {
    this.listening ??= (async () => {
      await this.bridge.onEvent((e) => this.onEvent(e));
      await this.bridge.onProgress((p) =>
        this.set({
          transfers: this.state.transfers.map((t) =>
            t.id === p.transfer ? { ...t, done: p.done, total: p.total } : t,
          ),
        }),
      );
    })();
    return this.listening;
  }

  signIn(request: SignIn) {
    return this.run(async () => {
      this.set({ busy: true, error: null });
      try {
        await this.listen();
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
        await this.listen();
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
      try {
        await this.bridge.signOut();
      } finally {
        // The app closed the account whatever the server answered; nothing of it stays in
        // the window for the next account.
        this.acknowledged.clear();
        this.dismissed.clear();
        this.undecryptable = 0;
        this.set({
          phase: "firstRun",
          me: null,
          conversations: [],
          requests: [],
          selected: null,
          messages: [],
          dialog: null,
          alarms: [],
          notices: [],
          transfers: [],
          saved: [],
          typing: new Map(),
          replyTo: null,
          editing: null,
        });
      }
    });
  }

  private async opened(me: Me, settings: Settings | null) {
    this.set({ me, settings, phase: "ready" });
    const overview = await this.bridge.overview();
    this.set({ connection: overview.connection, maxAttachmentBytes: overview.maxAttachmentBytes });
    await Promise.all([this.refresh(), this.catchUpWarnings()]);
  }

  /** The alarms and safety-number changes the app kept, in case their events were missed. */
  private async catchUpWarnings() {
    for (const warning of await this.bridge.securityWarnings()) this.onEvent(warning);
  }

  /** Reloads the conversation list and the requests; calls that overlap run once more at
   * the end instead of racing. */
  refresh(): Promise<void> {
    // Events can come while an account opens, before there is a list to read.
    if (this.state.phase !== "ready") return Promise.resolve();
    return this.lists.request();
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

  /** Reloads the open conversation's messages after events, coalesced like `refresh`. */
  private reloadMessages(): Promise<void> {
    return this.openMessages.request();
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

  /** Marks what is unread in a conversation as read; the app counts, and the list is read
   * again only when something was. */
  private async markRead(id: string) {
    if ((await this.bridge.markRead(id)) > 0) await this.updateEntry(id);
  }

  /** Reads one conversation's list entry again (its unread count, last message, name): an
   * event about one conversation costs one entry, not the whole list. */
  private updateEntry(id: string): Promise<void> {
    this.changed.add(id);
    return this.entries.request();
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
        void this.updateEntry(m.conversation);
        break;
      }
      case "conversationChanged":
        void this.updateEntry(e.conversation);
        if (e.conversation === this.state.selected) void this.reloadMessages();
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
      case "keyTransparencyAlarm": {
        // One banner per device (its latest failure): a server inventing failures cannot
        // make the person click through an endless queue.
        const key = `${e.device}\n${e.reason}`;
        if (!this.acknowledged.has(key)) {
          const others = this.state.alarms.filter((a) => a.device !== e.device);
          this.set({ alarms: [...others, { device: e.device, reason: e.reason }] });
        }
        break;
      }
      case "safetyNumberChanged":
        this.notice(
          `The safety number with “${e.user}” changed (device “${e.device}”). Compare it again before you share anything sensitive.`,
        );
        break;
      case "undecryptable": {
        // One notice, counted: a flood of broken messages must not bury the window.
        this.undecryptable++;
        const notices = this.state.notices.filter((n) => !n.startsWith(UNDECRYPTABLE));
        const count = this.undecryptable === 1 ? "A message" : `${this.undecryptable} messages`;
        this.set({ notices: [...notices, `${UNDECRYPTABLE}${count} could not be decrypted and were skipped (the last: “${e.reason}”).`] });
        break;
      }
      case "resync":
        void this.refresh();
        void this.reloadMessages();
        void this.run(() => this.catchUpWarnings());
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

  /** Adds a message a command returned, unless an event brought it already: the events
   * (its local echo, then its states) may have overtaken the command's answer, and are newer
   * than it. */
  private addIfMissing(m: Message) {
    if (!this.state.messages.some((x) => x.id === m.id)) this.upsert(m);
  }

  private clearTyping(conversation: string) {
    if (!this.state.typing.has(conversation)) return;
    const typing = new Map(this.state.typing);
    typing.delete(conversation);
    this.set({ typing });
  }

  private notice(text: string) {
    if (this.state.notices.includes(text) || this.dismissed.has(text)) return;
    this.set({ notices: [...this.state.notices, text].slice(-NOTICES_SHOWN) });
  }

  acknowledgeAlarm() {
    const [first, ...rest] = this.state.alarms;
    if (first) this.acknowledged.add(`${first.device}\n${first.reason}`);
    this.set({ alarms: rest });
  }

  dismissNotice(index: number) {
    const notice = this.state.notices[index];
    if (notice?.startsWith(UNDECRYPTABLE)) this.undecryptable = 0;
    else if (notice) this.dismissed.add(notice);
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
      if (this.state.selected === id) this.addIfMissing(sent);
      await this.updateEntry(id);
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
      await this.reloadMessages();
    });
  }

  toggleReaction(m: Message, emoji: string) {
    const me = this.state.me?.user ?? "";
    const mine = m.reactions.some(([u, e]) => u === me && e === emoji);
    return this.run(async () => {
      await this.bridge.react(m.conversation, m.id, emoji, mine);
      await this.reloadMessages();
    });
  }

  typing() {
    const id = this.state.selected;
    if (!id) return;
    // A live hint only: a failure is not worth an error.
    this.bridge.typing(id).catch(() => undefined);
  }

  /** Whether a file of `size` bytes may be sent; if not, says so to the person. */
  fits(size: number): boolean {
    if (size <= this.state.maxAttachmentBytes) return true;
    this.set({
      error: `That file is too large to send: at most ${Math.floor(this.state.maxAttachmentBytes / (1024 * 1024))} MiB.`,
    });
    return false;
  }

  attach(file: { name: string; mime: string; bytes: Uint8Array }, caption: string) {
    const id = this.state.selected;
    if (!id || !this.fits(file.bytes.length)) return Promise.resolve();
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
        if (this.state.selected === id) this.addIfMissing(sent);
        await this.updateEntry(id);
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
      await this.updateEntry(c.id);
      await this.select(c.id);
    });
  }

  createGroup(name: string, members: string[]) {
    return this.run(async () => {
      const c = await this.bridge.createGroup(name, members);
      this.set({ dialog: null });
      await this.updateEntry(c.id);
      await this.select(c.id);
    });
  }

  /** A group change (invite, remove, rename), then its list entry again. */
  changeGroup(change: (bridge: Bridge, conversation: string) => Promise<void>) {
    const id = this.state.selected;
    if (!id) return Promise.resolve();
    return this.run(async () => {
      await change(this.bridge, id);
      await this.updateEntry(id);
    });
  }

  leave() {
    const id = this.state.selected;
    if (!id) return Promise.resolve();
    return this.run(async () => {
      await this.bridge.leave(id);
      this.set({ dialog: null, selected: null, messages: [] });
      await this.updateEntry(id);
    });
  }
}
