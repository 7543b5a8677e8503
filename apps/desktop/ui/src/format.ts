// How values read in the window: names, times, sizes, delivery states.

import type { Conversation, Message, SendState } from "./bridge";

/** The user part of `user/device`. */
export function userOf(sender: string): string {
  const slash = sender.indexOf("/");
  return slash < 0 ? sender : sender.slice(0, slash);
}

/** A conversation's title: the group's name, or the other members of a direct one. */
export function titleOf(c: Conversation, me: string): string {
  if (c.kind === "group") return c.name || "Unnamed group";
  const others = c.members.filter((m) => m !== me);
  return others.length ? others.join(", ") : me;
}

/** Hours and minutes today, the date otherwise. */
export function timeOf(ms: number, now: number = Date.now()): string {
  const at = new Date(ms);
  const today = new Date(now);
  const sameDay =
    at.getFullYear() === today.getFullYear() &&
    at.getMonth() === today.getMonth() &&
    at.getDate() === today.getDate();
  return sameDay
    ? at.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" })
    : at.toLocaleDateString(undefined, { day: "numeric", month: "short" });
}

/** A byte count for people. */
export function sizeOf(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

/** What an outgoing message's state reads as, and its tone. */
export function stateOf(
  message: Pick<Message, "state" | "readBy" | "outgoing">,
): { label: string; tone: "quiet" | "ok" | "warn" | "bad" } | null {
  if (!message.outgoing) return null;
  const s: SendState = message.state;
  switch (s.state) {
    case "queued":
      return { label: "Queued", tone: "quiet" };
    case "sending":
      return { label: "Sending…", tone: "quiet" };
    case "sent":
      return message.readBy.length
        ? { label: `Read by ${message.readBy.join(", ")}`, tone: "ok" }
        : { label: "Sent", tone: "ok" };
    case "failed":
      return {
        label: s.recoverable ? `Retrying: ${s.reason}` : `Failed: ${s.reason}`,
        tone: s.recoverable ? "warn" : "bad",
      };
    default:
      return null;
  }
}

/** Reactions grouped by emoji, in the order first seen. */
export function reactionsOf(
  reactions: [string, string][],
): { emoji: string; users: string[] }[] {
  const groups = new Map<string, string[]>();
  for (const [user, emoji] of reactions) {
    const users = groups.get(emoji) ?? [];
    users.push(user);
    groups.set(emoji, users);
  }
  return [...groups].map(([emoji, users]) => ({ emoji, users }));
}
