// The window: the sign-in form, the passphrase prompt, and the messenger itself.

import { useEffect, useRef, useState } from "preact/hooks";
import type { Message, Request, Settings } from "./bridge";
import { reactionsOf, sizeOf, stateOf, timeOf, titleOf, userOf } from "./format";
import { Icon } from "./icons";
import { Model, type State } from "./model";

const QUICK_REACTIONS = ["👍", "❤️", "😂", "😮", "😢", "🙏"];

/** Re-renders on every change of the model. */
function useModel(model: Model): State {
  const [, setVersion] = useState(0);
  useEffect(() => model.subscribe(() => setVersion((v) => v + 1)), [model]);
  return model.state;
}

export function App({ model }: { model: Model }) {
  const state = useModel(model);
  useEffect(() => {
    void model.start();
  }, [model]);
  switch (state.phase) {
    case "loading":
      return <div class="center muted">Starting…</div>;
    case "firstRun":
      return <FirstRun model={model} state={state} />;
    case "locked":
      return <Unlock model={model} state={state} />;
    case "ready":
      return <Messenger model={model} state={state} />;
  }
}

function ErrorLine({ model, state }: { model: Model; state: State }) {
  if (!state.error) return null;
  return (
    <div class="error" role="alert" data-testid="error">
      <span>{state.error}</span>
      <button class="link" onClick={() => model.dismissError()} aria-label="Dismiss">
        <Icon name="close" />
      </button>
    </div>
  );
}

function FirstRun({ model, state }: { model: Model; state: State }) {
  const saved: Settings | null = state.settings;
  const [register, setRegister] = useState(!saved);
  const submit = (e: SubmitEvent) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    const field = (name: string) => String(form.get(name) ?? "");
    void model.signIn({
      settings: {
        servers: field("servers").split(/[\s,]+/).filter(Boolean),
        pin: field("pin"),
        user: field("user"),
        device: field("device"),
      },
      password: field("password"),
      passphrase: field("passphrase"),
      register,
      invite: register ? field("invite") || null : null,
    });
  };
  return (
    <main class="card-page">
      <form class="card" onSubmit={submit} data-testid="first-run">
        <h1>quicproquo</h1>
        <p class="muted">End-to-end encrypted messages. Your server's operator can't read them.</p>
        <div class="tabs" role="tablist">
          <button
            type="button"
            role="tab"
            aria-selected={register}
            onClick={() => setRegister(true)}
          >
            Create account
          </button>
          <button
            type="button"
            role="tab"
            aria-selected={!register}
            onClick={() => setRegister(false)}
            data-testid="tab-sign-in"
          >
            Sign in
          </button>
        </div>
        <label>
          Server addresses <small class="muted">(host:port, one per line; the first is tried first)</small>
          <textarea name="servers" rows={2} required defaultValue={saved?.servers.join("\n") ?? ""} />
        </label>
        <label>
          Server key pin <small class="muted">(the SHA-256 qpq-server prints at start)</small>
          <input name="pin" required autocomplete="off" spellcheck={false} defaultValue={saved?.pin ?? ""} />
        </label>
        <div class="row">
          <label>
            User name <small class="muted">(name, or name@domain elsewhere)</small>
            <input name="user" required autocomplete="username" defaultValue={saved?.user ?? ""} />
          </label>
          <label>
            This device
            <input name="device" defaultValue={saved?.device ?? "desktop"} />
          </label>
        </div>
        <label>
          Password
          <input
            name="password"
            type="password"
            required
            autocomplete={register ? "new-password" : "current-password"}
          />
        </label>
        {register && (
          <label>
            Invitation code <small class="muted">(if your server asks for one)</small>
            <input name="invite" autocomplete="off" />
          </label>
        )}
        <label>
          Passphrase for this computer{" "}
          <small class="muted">(encrypts your messages on disk; asked at every start)</small>
          <input name="passphrase" type="password" required autocomplete="new-password" />
        </label>
        <ErrorLine model={model} state={state} />
        <button class="primary" type="submit" disabled={state.busy} data-testid="sign-in">
          {state.busy ? "Connecting…" : register ? "Create account" : "Sign in"}
        </button>
      </form>
    </main>
  );
}

function Unlock({ model, state }: { model: Model; state: State }) {
  const submit = (e: SubmitEvent) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    void model.unlock(String(form.get("passphrase") ?? ""));
  };
  return (
    <main class="card-page">
      <form class="card" onSubmit={submit} data-testid="unlock">
        <h1>Welcome back, {state.settings?.user}</h1>
        <label>
          Passphrase
          <input name="passphrase" type="password" required autofocus autocomplete="current-password" />
        </label>
        <ErrorLine model={model} state={state} />
        <button class="primary" type="submit" disabled={state.busy}>
          {state.busy ? "Unlocking…" : "Unlock"}
        </button>
        <button type="button" class="link" onClick={() => model.useAnotherAccount()}>
          Sign in to another account
        </button>
      </form>
    </main>
  );
}

function Messenger({ model, state }: { model: Model; state: State }) {
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      if (e.altKey && e.key === "ArrowDown") {
        e.preventDefault();
        model.selectNext(1);
      } else if (e.altKey && e.key === "ArrowUp") {
        e.preventDefault();
        model.selectNext(-1);
      } else if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "n") {
        e.preventDefault();
        model.openDialog({ kind: "newChat" });
      } else if (e.key === "F1" || ((e.ctrlKey || e.metaKey) && e.key === "/")) {
        e.preventDefault();
        model.openDialog({ kind: "help" });
      } else if (e.key === "Escape") {
        if (state.dialog) model.closeDialog();
        else if (state.replyTo || state.editing) model.setReplyTo(null);
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [model, state.dialog, state.replyTo, state.editing]);

  const current = model.current();
  return (
    <div class={`shell ${current ? "has-selection" : ""}`}>
      <Banners model={model} state={state} />
      <div class="panes">
        <Sidebar model={model} state={state} />
        {current ? (
          <ConversationPane model={model} state={state} />
        ) : (
          <section class="pane empty muted">
            <p>Pick a conversation, or start one with Ctrl+N.</p>
          </section>
        )}
      </div>
      {state.dialog && <DialogView model={model} state={state} />}
    </div>
  );
}

function Banners({ model, state }: { model: Model; state: State }) {
  const alarm = state.alarms[0];
  return (
    <>
      {alarm && (
        <div class="banner alarm" role="alert" data-testid="kt-alarm">
          <span>
            <strong>Key transparency alarm.</strong> The server showed a key for the device{" "}
            <q>
              <bdi>{alarm.device}</bdi>
            </q>{" "}
            that its public log does not back. The key was not used. Someone may be trying to read
            this contact's messages: compare safety numbers in person before you trust this
            conversation. What failed:{" "}
            <q>
              <bdi>{alarm.reason}</bdi>
            </q>
          </span>
          <button onClick={() => model.acknowledgeAlarm()}>I understand</button>
        </div>
      )}
      {state.notices.map((notice, i) => (
        <div class="banner notice" role="status" key={notice}>
          {notice}
          <button class="link" onClick={() => model.dismissNotice(i)} aria-label="Dismiss">
            <Icon name="close" />
          </button>
        </div>
      ))}
      {state.phase === "ready" && <ErrorLine model={model} state={state} />}
    </>
  );
}

function ConnectionPill({ state }: { state: State }) {
  const c = state.connection;
  const [label, tone] =
    c.state === "connected"
      ? ["Connected", "ok"]
      : c.state === "catchingUp"
        ? ["Catching up…", "warn"]
        : c.state === "sessionEnded"
          ? [`Signed out: ${c.reason}`, "bad"]
          : [`Offline: ${c.reason}`, "bad"];
  return (
    <span class={`pill ${tone}`} data-testid="connection" title={label}>
      {label}
    </span>
  );
}

function Sidebar({ model, state }: { model: Model; state: State }) {
  const me = state.me?.user ?? "";
  return (
    <nav class="sidebar" aria-label="Conversations">
      <header>
        <div class="who">
          <strong>{me}</strong>
          <ConnectionPill state={state} />
        </div>
        <div class="actions">
          <button onClick={() => model.openDialog({ kind: "newChat" })} title="New chat (Ctrl+N)" aria-label="New chat" data-testid="new-chat">
            <Icon name="plus" />
          </button>
          <button onClick={() => model.openDialog({ kind: "devices", devices: null })} title="Devices" aria-label="Devices">
            <Icon name="gear" />
          </button>
          <button onClick={() => model.openDialog({ kind: "help" })} title="Keyboard shortcuts (F1)" aria-label="Keyboard shortcuts">
            <Icon name="help" />
          </button>
        </div>
      </header>
      {state.requests.length > 0 && (
        <section class="requests" aria-label="Message requests">
          <h2>Message requests</h2>
          {state.requests.map((r) => (
            <RequestItem key={r.conversation.id} model={model} request={r} me={me} />
          ))}
        </section>
      )}
      <ul class="list" data-testid="conversations">
        {state.conversations.map((c) => (
          <li key={c.id}>
            <button
              class={`entry ${c.id === state.selected ? "selected" : ""}`}
              onClick={() => model.select(c.id)}
              data-testid="conversation"
            >
              <span class={`avatar ${c.kind}`} aria-hidden="true">
                {c.kind === "group" ? <Icon name="group" /> : [...titleOf(c, me)][0]?.toUpperCase()}
              </span>
              <span class="entry-text">
                <span class="entry-title">
                  <span class="name">
                    <bdi>{titleOf(c, me)}</bdi>
                    {c.kind === "group" && <span class="kind muted small"> · group</span>}
                  </span>
                  {c.last && <span class="time muted">{timeOf(c.last.sentAtMs)}</span>}
                </span>
                <span class="preview muted">
                  {state.typing.has(c.id)
                    ? `${userOf(state.typing.get(c.id) ?? "")} is typing…`
                    : c.last
                      ? preview(c.last)
                      : c.kind === "group"
                        ? `${c.members.length} members`
                        : "No messages yet"}
                </span>
              </span>
              {c.unread > 0 && (
                <span class="badge" data-testid="unread" aria-label={`${c.unread} unread`}>
                  {c.unread}
                </span>
              )}
            </button>
          </li>
        ))}
      </ul>
      <footer>
        <button class="link" onClick={() => model.signOut()}>
          Sign out
        </button>
      </footer>
    </nav>
  );
}

function preview(m: Message): string {
  if (m.deleted) return "Message deleted";
  const text = m.attachment ? `File: ${m.attachment.name}${m.body ? ` — ${m.body}` : ""}` : m.body;
  return `${m.outgoing ? "You: " : ""}${text}`;
}

function RequestItem({ model, request, me }: { model: Model; request: Request; me: string }) {
  const c = request.conversation;
  return (
    <div class="request" data-testid="request">
      <div>
        <strong>
          <bdi>{request.inviter}</bdi>
        </strong>{" "}
        invites you to{" "}
        {c.kind === "group" ? (
          <>
            the group{" "}
            <em>
              <bdi>{c.name}</bdi>
            </em>
          </>
        ) : (
          "a direct conversation"
        )}
        <div class="muted small">
          <bdi>{c.members.filter((m) => m !== me).join(", ")}</bdi>
        </div>
      </div>
      <div class="actions">
        <button class="primary" onClick={() => model.answer(request, true)}>
          Accept
        </button>
        <button onClick={() => model.answer(request, false)}>Decline</button>
      </div>
    </div>
  );
}

function ConversationPane({ model, state }: { model: Model; state: State }) {
  const c = model.current();
  const me = state.me?.user ?? "";
  const list = useRef<HTMLDivElement>(null);
  const count = state.messages.length;
  useEffect(() => {
    const el = list.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [state.selected, count]);
  if (!c) return null;
  const byId = new Map(state.messages.map((m) => [m.id, m]));
  const typing = state.typing.get(c.id);
  const other = c.kind === "direct" ? c.members.find((m) => m !== me) : undefined;
  return (
    <section class="pane conversation" aria-label={titleOf(c, me)}>
      <header>
        <button class="back" onClick={() => model.select(null)} aria-label="Back to conversations">
          <Icon name="back" />
        </button>
        <div class="title">
          <h2 data-testid="conversation-title">{titleOf(c, me)}</h2>
          <span class="muted small">
            {c.kind === "group" ? `${c.members.length} members` : "Direct conversation"}
          </span>
        </div>
        {other && (
          <button onClick={() => model.openDialog({ kind: "safety", user: other, numbers: null })}>
            Safety number
          </button>
        )}
        {c.kind === "group" && (
          <button onClick={() => model.openDialog({ kind: "group", conversation: c.id })}>
            Group
          </button>
        )}
      </header>
      <div class="messages" ref={list} data-testid="messages">
        {state.moreBefore && (
          <button class="link older" onClick={() => model.loadOlder()}>
            Load older messages
          </button>
        )}
        {state.messages.map((m) => (
          <MessageItem key={m.id} model={model} message={m} replied={m.replyTo ? byId.get(m.replyTo) : undefined} me={me} />
        ))}
      </div>
      <div class="typing muted small" aria-live="polite">
        {typing ? `${userOf(typing)} is typing…` : ""}
      </div>
      {state.transfers.map((t) => (
        <div class="transfer" key={t.id} data-testid="transfer">
          <span class="small">{t.label}</span>
          <progress max={Math.max(t.total, 1)} value={t.done} />
        </div>
      ))}
      {state.saved.length > 0 && (
        <div class="muted small saved">Saved to {state.saved[state.saved.length - 1]}</div>
      )}
      <Composer model={model} state={state} />
    </section>
  );
}

function MessageItem({
  model,
  message: m,
  replied,
  me,
}: {
  model: Model;
  message: Message;
  replied: Message | undefined;
  me: string;
}) {
  const status = stateOf(m);
  return (
    <article class={`message ${m.outgoing ? "out" : "in"}`} data-testid="message" data-state={m.state.state}>
      <div class="bubble">
        {!m.outgoing && (
          <div class="sender">
            <bdi>{userOf(m.sender)}</bdi>
          </div>
        )}
        {m.replyTo && (
          <blockquote class="quote" data-testid="quote">
            {replied ? (
              <>
                <strong>{userOf(replied.sender)}</strong> {replied.deleted ? "Message deleted" : replied.body}
              </>
            ) : (
              <span class="muted">A reply to an earlier message</span>
            )}
          </blockquote>
        )}
        {m.deleted ? (
          <p class="body muted deleted">This message was deleted</p>
        ) : (
          <>
            {m.attachment && (
              <div class="attachment">
                <Icon name="clip" />
                <span class="file-name">
                  <bdi>{m.attachment.name}</bdi>
                </span>
                <span class="muted small">{sizeOf(m.attachment.size)}</span>
                <button onClick={() => model.download(m)}>Download</button>
              </div>
            )}
            {m.body && (
              <p class="body" dir="auto" data-testid="body">
                {m.body}
              </p>
            )}
          </>
        )}
        <div class="meta small">
          <span class="muted">{timeOf(m.sentAtMs)}</span>
          {m.edited && !m.deleted && <span class="muted">edited</span>}
          {status && (
            <span class={`state ${status.tone}`} data-testid="state">
              {status.label}
            </span>
          )}
        </div>
        {m.reactions.length > 0 && (
          <div class="reactions">
            {reactionsOf(m.reactions).map((r) => (
              <button
                key={r.emoji}
                class={`reaction ${r.users.includes(me) ? "mine" : ""}`}
                title={r.users.join(", ")}
                onClick={() => model.toggleReaction(m, r.emoji)}
              >
                {r.emoji} {r.users.length}
              </button>
            ))}
          </div>
        )}
      </div>
      {!m.deleted && (
        <div class="tools" role="toolbar" aria-label="Message actions">
          <button onClick={() => model.setReplyTo(m)} title="Reply" aria-label="Reply">
            <Icon name="reply" />
          </button>
          {QUICK_REACTIONS.slice(0, 3).map((e) => (
            <button key={e} onClick={() => model.toggleReaction(m, e)} title={`React ${e}`}>
              {e}
            </button>
          ))}
          {m.outgoing && !m.attachment && (
            <button onClick={() => model.setEditing(m)} title="Edit" aria-label="Edit">
              <Icon name="edit" />
            </button>
          )}
          {m.outgoing && (
            <button onClick={() => model.remove(m)} title="Delete" aria-label="Delete">
              <Icon name="trash" />
            </button>
          )}
        </div>
      )}
    </article>
  );
}

function Composer({ model, state }: { model: Model; state: State }) {
  const [text, setText] = useState("");
  const input = useRef<HTMLTextAreaElement>(null);
  const file = useRef<HTMLInputElement>(null);
  const lastTyping = useRef(0);
  useEffect(() => {
    if (state.editing) setText(state.editing.body);
    input.current?.focus();
  }, [state.editing, state.replyTo, state.selected]);
  const send = async () => {
    const body = text;
    setText("");
    // A draft that was not taken comes back, unless something new was typed meanwhile.
    if (!(await model.send(body))) setText((now) => now || body);
  };
  const onKey = (e: KeyboardEvent) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      void send();
    } else if (e.key === "ArrowUp" && !text) {
      const own = model.lastOwn();
      if (own) {
        e.preventDefault();
        model.setEditing(own);
      }
    }
  };
  const onInput = (e: Event) => {
    setText((e.currentTarget as HTMLTextAreaElement).value);
    const now = Date.now();
    if (now - lastTyping.current > 3000) {
      lastTyping.current = now;
      model.typing();
    }
  };
  const onFile = async () => {
    const chosen = file.current?.files?.[0];
    if (!chosen) return;
    // Checked before the file is read into memory.
    if (!model.fits(chosen.size)) {
      if (file.current) file.current.value = "";
      return;
    }
    const bytes = new Uint8Array(await chosen.arrayBuffer());
    const caption = text;
    setText("");
    if (file.current) file.current.value = "";
    await model.attach({ name: chosen.name, mime: chosen.type, bytes }, caption);
  };
  const context = state.editing
    ? { label: "Editing your message", text: state.editing.body }
    : state.replyTo
      ? { label: `Replying to ${userOf(state.replyTo.sender)}`, text: state.replyTo.body }
      : null;
  return (
    <form
      class="composer"
      onSubmit={(e) => {
        e.preventDefault();
        void send();
      }}
    >
      {context && (
        <div class="context small" data-testid="composer-context">
          <span>
            <strong>{context.label}</strong> <span class="muted">{context.text}</span>
          </span>
          <button type="button" class="link" onClick={() => model.setReplyTo(null)} aria-label="Cancel">
            <Icon name="close" />
          </button>
        </div>
      )}
      <div class="compose-row">
        <button type="button" onClick={() => file.current?.click()} title="Attach a file" aria-label="Attach a file">
          <Icon name="clip" />
        </button>
        <input type="file" ref={file} hidden onChange={onFile} data-testid="file" />
        <textarea
          ref={input}
          rows={1}
          value={text}
          onInput={onInput}
          onKeyDown={onKey}
          placeholder="Write a message"
          aria-label="Message"
          data-testid="composer"
        />
        <button type="submit" class="primary" disabled={!text.trim()} data-testid="send">
          Send
        </button>
      </div>
    </form>
  );
}

function DialogView({ model, state }: { model: Model; state: State }) {
  const dialog = state.dialog;
  if (!dialog) return null;
  const close = () => model.closeDialog();
  let body;
  switch (dialog.kind) {
    case "newChat":
      body = <NewChat model={model} />;
      break;
    case "group":
      body = <GroupSettings model={model} state={state} />;
      break;
    case "devices":
      body = (
        <>
          <h2>Your devices</h2>
          {dialog.devices === null ? (
            <p class="muted">Loading…</p>
          ) : (
            <ul class="plain">
              {dialog.devices.map((d) => (
                <li key={d.id}>
                  <strong>{d.label || d.id}</strong> {d.thisDevice && <span class="pill ok">this device</span>}
                  <div class="muted small">
                    {d.id} · since {timeOf(d.createdAtMs)} · {d.hasKeys ? "active" : "never signed in"}
                  </div>
                </li>
              ))}
            </ul>
          )}
        </>
      );
      break;
    case "safety":
      body = (
        <>
          <h2>Safety numbers with {dialog.user}</h2>
          <p class="muted small">
            Compare these with {dialog.user} in person or on a call. If they match, nobody sits
            between you.
          </p>
          {dialog.numbers === null ? (
            <p class="muted">Loading…</p>
          ) : (
            dialog.numbers.map((n) => (
              <div key={n.device} class="safety">
                <div class="muted small">{n.device}</div>
                <code>{n.number}</code>
              </div>
            ))
          )}
        </>
      );
      break;
    case "help":
      body = (
        <>
          <h2>Keyboard shortcuts</h2>
          <dl class="keys">
            <dt>Enter</dt>
            <dd>Send</dd>
            <dt>Shift+Enter</dt>
            <dd>New line</dd>
            <dt>↑ in an empty composer</dt>
            <dd>Edit your last message</dd>
            <dt>Alt+↑ / Alt+↓</dt>
            <dd>Previous / next conversation</dd>
            <dt>Ctrl+N</dt>
            <dd>New chat</dd>
            <dt>Esc</dt>
            <dd>Cancel a reply or an edit; close a dialog</dd>
            <dt>F1 or Ctrl+/</dt>
            <dd>This help</dd>
          </dl>
        </>
      );
      break;
  }
  return (
    <div class="overlay" onClick={(e) => e.target === e.currentTarget && close()}>
      <div class="dialog" role="dialog" aria-modal="true">
        {body}
        <ErrorLine model={model} state={state} />
        <div class="dialog-actions">
          <button onClick={close}>Close</button>
        </div>
      </div>
    </div>
  );
}

function NewChat({ model }: { model: Model }) {
  const [group, setGroup] = useState(false);
  const submit = (e: SubmitEvent) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    if (group) {
      const members = String(form.get("members") ?? "").split(/[\s,]+/).filter(Boolean);
      void model.createGroup(String(form.get("name") ?? ""), members);
    } else {
      void model.startDirect(String(form.get("user") ?? ""));
    }
  };
  return (
    <form onSubmit={submit} data-testid="new-chat-form">
      <h2>New chat</h2>
      <div class="tabs" role="tablist">
        <button type="button" role="tab" aria-selected={!group} onClick={() => setGroup(false)}>
          Direct
        </button>
        <button type="button" role="tab" aria-selected={group} onClick={() => setGroup(true)}>
          Group
        </button>
      </div>
      {group ? (
        <>
          <label>
            Group name
            <input name="name" required autofocus />
          </label>
          <label>
            Members <small class="muted">(names or name@domain, separated by spaces)</small>
            <input name="members" required />
          </label>
        </>
      ) : (
        <label>
          User <small class="muted">(name, or name@domain on another server)</small>
          <input name="user" required autofocus />
        </label>
      )}
      <button class="primary" type="submit">
        {group ? "Create group" : "Start chat"}
      </button>
    </form>
  );
}

function GroupSettings({ model, state }: { model: Model; state: State }) {
  const c = model.current();
  const me = state.me?.user ?? "";
  if (!c) return null;
  const onRename = (e: SubmitEvent) => {
    e.preventDefault();
    const name = String(new FormData(e.currentTarget as HTMLFormElement).get("name") ?? "");
    void model.changeGroup((b, id) => b.rename(id, name));
  };
  const onInvite = (e: SubmitEvent) => {
    e.preventDefault();
    const form = e.currentTarget as HTMLFormElement;
    const user = String(new FormData(form).get("user") ?? "");
    form.reset();
    void model.changeGroup((b, id) => b.invite(id, user));
  };
  return (
    <>
      <h2>{c.name || "Group"}</h2>
      <form onSubmit={onRename} class="inline">
        <input name="name" defaultValue={c.name} aria-label="Group name" />
        <button type="submit">Rename</button>
      </form>
      <h3>Members</h3>
      <ul class="plain">
        {c.members.map((m) => (
          <li key={m} class="member">
            <span>{m === me ? `${m} (you)` : m}</span>
            {m !== me && (
              <button class="link" onClick={() => model.changeGroup((b, id) => b.removeMember(id, m))}>
                Remove
              </button>
            )}
          </li>
        ))}
      </ul>
      <form onSubmit={onInvite} class="inline">
        <input name="user" placeholder="name or name@domain" aria-label="User to invite" required />
        <button type="submit">Invite</button>
      </form>
      <button class="danger" onClick={() => model.leave()}>
        Leave group
      </button>
    </>
  );
}
