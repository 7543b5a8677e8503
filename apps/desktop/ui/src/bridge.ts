// The window's only way to the messenger: the desktop app's commands (apps/desktop/src/
// commands.rs) and its two event channels. `TauriBridge` is the real one; the tests use a
// fake with the same shape.

import { invoke } from "@tauri-apps/api/core";
import { listen, type UnlistenFn } from "@tauri-apps/api/event";

export interface Settings {
  servers: string[];
  pin: string;
  user: string;
  device: string;
}

export interface Me {
  user: string;
  device: string;
  servers: string[];
}

export type SendState =
  | { state: "queued" }
  | { state: "sending" }
  | { state: "sent" }
  | { state: "failed"; recoverable: boolean; reason: string }
  | { state: "received" };

export interface Attachment {
  name: string;
  size: number;
  mime: string;
}

export interface Message {
  id: string;
  conversation: string;
  sender: string;
  body: string;
  replyTo: string | null;
  sentAtMs: number;
  receivedAtMs: number;
  outgoing: boolean;
  state: SendState;
  edited: boolean;
  deleted: boolean;
  reactions: [string, string][];
  readBy: string[];
  attachment: Attachment | null;
}

export interface Conversation {
  id: string;
  kind: "direct" | "group";
  name: string;
  members: string[];
  unread: number;
  last: Message | null;
}

export interface Request {
  conversation: Conversation;
  inviter: string;
}

export type Connection =
  | { state: "connected" }
  | { state: "catchingUp" }
  | { state: "offline"; reason: string }
  | { state: "sessionEnded"; reason: string };

export interface Overview {
  me: Me;
  connection: Connection;
  requests: number;
  outbox: number;
  maxAttachmentBytes: number;
}

export interface Device {
  id: string;
  label: string;
  createdAtMs: number;
  hasKeys: boolean;
  thisDevice: boolean;
}

export interface SafetyNumber {
  device: string;
  number: string;
}

export type Event =
  | { type: "message"; message: Message }
  | { type: "conversationChanged"; conversation: string }
  | { type: "request"; request: Request }
  | { type: "sendState"; id: string; conversation: string; state: SendState }
  | { type: "typing"; conversation: string; user: string }
  | { type: "connection"; connection: Connection }
  | { type: "keyTransparencyAlarm"; device: string; reason: string }
  | { type: "safetyNumberChanged"; user: string; device: string }
  | { type: "undecryptable"; reason: string }
  | { type: "resync" };

export interface Progress {
  transfer: string;
  done: number;
  total: number;
}

export interface SignIn {
  settings: Settings;
  password: string;
  passphrase: string;
  register: boolean;
  invite: string | null;
}

/** A failed command, as the app reports it. */
export interface CommandError {
  kind: "invalid" | "signedOut" | "wrongPassphrase" | "notFound" | "failed";
  message: string;
  retryable: boolean;
}

/** The sentence to show for anything a command threw. */
export function errorMessage(err: unknown): string {
  if (typeof err === "object" && err !== null && "message" in err) {
    return String((err as { message: unknown }).message);
  }
  return String(err);
}

/** Whether `err` is the app's `kind` of failure. */
export function isError(err: unknown, kind: CommandError["kind"]): boolean {
  return typeof err === "object" && err !== null && (err as CommandError).kind === kind;
}

export interface Bridge {
  savedSettings(): Promise<Settings | null>;
  signIn(request: SignIn): Promise<Me>;
  unlock(passphrase: string): Promise<Me>;
  signOut(): Promise<void>;
  overview(): Promise<Overview>;
  securityWarnings(): Promise<Event[]>;
  conversations(): Promise<Conversation[]>;
  conversation(id: string): Promise<Conversation>;
  requests(): Promise<Request[]>;
  answerRequest(conversation: string, accept: boolean): Promise<Conversation | null>;
  messages(conversation: string, limit: number, before?: string): Promise<Message[]>;
  sendText(conversation: string, body: string, replyTo: string | null): Promise<Message>;
  editMessage(conversation: string, message: string, body: string): Promise<void>;
  deleteMessage(conversation: string, message: string): Promise<void>;
  react(conversation: string, message: string, emoji: string, remove: boolean): Promise<void>;
  markRead(conversation: string): Promise<number>;
  typing(conversation: string): Promise<void>;
  sendAttachment(
    conversation: string,
    file: { name: string; mime: string; bytes: Uint8Array },
    caption: string,
    transfer: string,
  ): Promise<Message>;
  downloadAttachment(message: string, transfer: string): Promise<string>;
  startDirect(user: string): Promise<Conversation>;
  createGroup(name: string, members: string[]): Promise<Conversation>;
  invite(conversation: string, user: string): Promise<void>;
  removeMember(conversation: string, user: string): Promise<void>;
  leave(conversation: string): Promise<void>;
  rename(conversation: string, name: string): Promise<void>;
  devices(): Promise<Device[]>;
  safetyNumbers(user: string): Promise<SafetyNumber[]>;
  onEvent(handler: (event: Event) => void): Promise<() => void>;
  onProgress(handler: (progress: Progress) => void): Promise<() => void>;
}

/** A header value that is ASCII whatever the names in it: JSON with every other character
 * escaped. */
function asciiJson(value: unknown): string {
  return JSON.stringify(value).replace(
    /[\u007f-\uffff]/g,
    (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"),
  );
}

export class TauriBridge implements Bridge {
  savedSettings() {
    return invoke<Settings | null>("saved_settings");
  }
  signIn(request: SignIn) {
    return invoke<Me>("sign_in", { request });
  }
  unlock(passphrase: string) {
    return invoke<Me>("unlock", { passphrase });
  }
  signOut() {
    return invoke<void>("sign_out");
  }
  overview() {
    return invoke<Overview>("overview");
  }
  securityWarnings() {
    return invoke<Event[]>("security_warnings");
  }
  conversations() {
    return invoke<Conversation[]>("conversations");
  }
  conversation(id: string) {
    return invoke<Conversation>("conversation", { conversation: id });
  }
  requests() {
    return invoke<Request[]>("requests");
  }
  answerRequest(conversation: string, accept: boolean) {
    return invoke<Conversation | null>("answer_request", { conversation, accept });
  }
  messages(conversation: string, limit: number, before?: string) {
    return invoke<Message[]>("messages", { conversation, limit, before: before ?? null });
  }
  sendText(conversation: string, body: string, replyTo: string | null) {
    return invoke<Message>("send_text", { conversation, body, replyTo });
  }
  editMessage(conversation: string, message: string, body: string) {
    return invoke<void>("edit_message", { conversation, message, body });
  }
  deleteMessage(conversation: string, message: string) {
    return invoke<void>("delete_message", { conversation, message });
  }
  react(conversation: string, message: string, emoji: string, remove: boolean) {
    return invoke<void>("react", { conversation, message, emoji, remove });
  }
  markRead(conversation: string) {
    return invoke<number>("mark_read", { conversation });
  }
  typing(conversation: string) {
    return invoke<void>("typing", { conversation });
  }
  sendAttachment(
    conversation: string,
    file: { name: string; mime: string; bytes: Uint8Array },
    caption: string,
    transfer: string,
  ) {
    const meta = { conversation, name: file.name, mime: file.mime, caption, transfer };
    return invoke<Message>("send_attachment", file.bytes, {
      headers: { "x-qpq-attachment": asciiJson(meta) },
    });
  }
  downloadAttachment(message: string, transfer: string) {
    return invoke<string>("download_attachment", { message, transfer });
  }
  startDirect(user: string) {
    return invoke<Conversation>("start_direct", { user });
  }
  createGroup(name: string, members: string[]) {
    return invoke<Conversation>("create_group", { name, members });
  }
  invite(conversation: string, user: string) {
    return invoke<void>("invite", { conversation, user });
  }
  removeMember(conversation: string, user: string) {
    return invoke<void>("remove_member", { conversation, user });
  }
  leave(conversation: string) {
    return invoke<void>("leave", { conversation });
  }
  rename(conversation: string, name: string) {
    return invoke<void>("rename", { conversation, name });
  }
  devices() {
    return invoke<Device[]>("devices");
  }
  safetyNumbers(user: string) {
    return invoke<SafetyNumber[]>("safety_numbers", { user });
  }
  async onEvent(handler: (event: Event) => void): Promise<UnlistenFn> {
    return listen<Event>("qpq://event", (e) => handler(e.payload));
  }
  async onProgress(handler: (progress: Progress) => void): Promise<UnlistenFn> {
    return listen<Progress>("qpq://progress", (e) => handler(e.payload));
  }
}

export { asciiJson };
