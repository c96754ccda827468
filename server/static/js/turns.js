// The turns: one running reply per conversation, streamed from POST /api/chat and, after a
// dropped connection or a reload, followed again with GET /api/turns/{id}/events. Closing the
// page only detaches; Stop asks the server (POST /api/turns/{id}/stop). Loaded after sign-in.

import { $, h, announce } from "./dom.js";
import { api, streamChat } from "./api.js";
import * as sidebar from "./sidebar.js";
import * as chat from "./chat.js";
import * as branches from "./branches.js";

const input = $("input");
const STALL_MS = 10_000; // no event for this long: say that we are still waiting
const RETRIES = 6; // re-attach tries in a row after a dropped connection
const gone = new Set(); // turns the server no longer follows (404): their stored message stands
// js/settings.js: the settings its panel holds for a new chat, sent with the first turn (the
// conversation is made with them, in the same transaction); told once a conversation has them.
let firstSettings = null;

/** js/settings.js hands in `held()` (settings, or null) and `taken(settings)`. */
export function useFirstSettings(s) { firstSettings = s; }

// Errors in words for people (what happened, what to do); the server's own text stays under "Details".
const WORDS = {
  queue_full: "The server's queue is full right now. Wait a moment, then retry.",
  too_many_queued: "You already have several replies waiting. Wait for one to finish, then retry.",
  shutting_down: "The server is restarting. Retry in a moment.",
  workers_down: "The server cannot reach its models right now. Retry in a moment.",
  busy: "The server is busy right now. Retry in a moment.",
  database_busy: "The server is busy right now. Retry in a moment.",
  rate_limited: "You are sending faster than your limit allows. Wait a moment, then retry.",
  quota_exceeded: "You have used up your token budget for this month. Ask an administrator for more.",
  storage_quota_exceeded: "Your storage is full. Delete some conversations, then retry.",
  too_many_conversations: "You have too many conversations. Delete some, then retry.",
  upstream_timeout: "The model took too long to answer. Retry, perhaps with a shorter message.",
  upstream_rejected: "The model refused this request. Try a shorter message or start a new chat.",
  upstream_unavailable: "The model stopped answering before the reply was finished. Retry in a moment.",
  payload_too_large: "The message is too long. Shorten it and send it again.",
  network: "The connection to the server was lost. Check your connection, then retry.",
};

/** A failure in words: a sentence for people first, the technical detail after it. */
export function words(e, model) {
  const said = chat.models?.said({ code: e.code || "" }, model);
  return said ?? WORDS[e.code] ?? (e.status >= 500 || !e.status || !e.code
    ? "Something went wrong on the server. Retry in a moment."
    : "The request was refused. Retry, or start a new chat.");
}

/** A finished message as stored: a failed turn gets its error and Retry back after a reload
 * (Retry asks its question again, on a new branch when the reply is not the last). */
export function stored(m) {
  if (m.status !== "error") return;
  const e = m.error || {};
  showError(m, words(e), e, 0, () => turn("regen", "", m), true);
}

function showError(m, message, e, retryAfter, retry, quiet = false) {
  m.status = "failed"; // shown by the box below, not by a badge
  m.el.classList.remove("pending");
  if (m.text) m.text.data = m.content.slice(m.upto ?? 0); // after a rendered part, if any
  else if (!m.content) m.body.replaceChildren();
  chat.renderMeta(m);
  m.el.querySelector(".failure")?.remove();
  const again = h("button", { type: "button", class: "btn small", "data-act": "retry" }, "Retry");
  m.retry = () => { if (!chat.lives.has(chat.convId ?? "new") && !again.disabled) retry(); };
  const detail = [e.code, e.message].filter(Boolean).join(": ");
  m.body.after(h("div", { class: "failure" }, h("span", null, message), again,
    detail && h("details", null, h("summary", null, "Details"), h("code", null, detail))));
  if (retryAfter > 0) { // honour Retry-After: the button wakes up when the server said so
    let left = Math.ceil(retryAfter);
    again.disabled = true;
    const tick = () => {
      again.textContent = left > 0 ? `Retry in ${left} s` : "Retry";
      again.disabled = left > 0;
      if (left-- > 0) setTimeout(tick, 1000);
    };
    tick();
  }
  if (!quiet) announce(`The reply failed. ${message}`);
}

// ---- one running reply

const here = (l) => l.reply.el.isConnected;

function paint(l) { // at most once per animation frame, and only the streaming message
  l.frame = 0;
  l.reply.text.data = l.reply.content.slice(l.reply.upto ?? 0); // after the rendered part
  if (chat.stick && here(l)) chat.toBottom();
}

function pendingBody(reply, note) {
  reply.note = h("span", { class: "queue" }, note);
  reply.body.replaceChildren(h("span", { class: "typing", "aria-hidden": "true" }, h("i"), h("i"), h("i")), reply.note);
}

function begin(key, user, reply) {
  reply.el.classList.add("pending");
  reply.el.setAttribute("aria-busy", "true");
  pendingBody(reply, "Waiting for the model…");
  const l = { convId: key === "new" ? null : key, user, reply, controller: new AbortController(),
    frame: 0, ended: false, turnId: null, lastId: null, stopping: false, seen: performance.now() };
  l.watch = setInterval(() => stall(l), 1000);
  chat.lives.set(key, l);
  if (l.convId != null) sidebar.setRunning(l.convId, true);
  if (chat.liveHere() === l) { chat.showBusy(); chat.refreshActions(); }
  return l;
}

function stall(l) { // a reply that goes quiet says so instead of a silent spinner
  const quiet = performance.now() - l.seen > STALL_MS;
  if (quiet === !!l.stall) return;
  if (quiet) {
    l.stall = h("p", { class: "stall", role: "status" },
      l.reply.status === "pending" ? "Still waiting for the model. It may be busy; the reply will appear here."
        : "The model has paused. Still waiting for the rest of the reply…");
    l.reply.body.after(l.stall);
  } else {
    l.stall.remove();
    l.stall = null;
  }
}

function handlers(l, text) {
  const { user, reply } = l;
  const seen = (id) => {
    l.seen = performance.now();
    if (id != null) l.lastId = id;
    stall(l);
  };
  return {
    meta(d, id) {
      seen(id);
      l.turnId = d.turn_id ?? l.turnId;
      l.model ??= d.model;
      if (d.user_message_id != null && user) {
        const old = user.id;
        user.id = d.user_message_id;
        user.el.dataset.id = d.user_message_id;
        if (l.kind === "edit" && old != null && old !== user.id) { // a new version beside the old
          user.siblings = [...(user.siblings ?? [old]), user.id];
          if (here(l)) chat.refreshActions();
        }
      }
      if (l.convId == null) adopt(l, d.conversation_id, text);
      else sidebar.touch(l.convId);
      if (l.stopping) stop(l, true); // Stop was pressed before the turn had an id
    },
    queued(d) {
      seen();
      if (reply.status !== "pending") return;
      reply.note.textContent = d.position > 0
        ? `${d.position} request${d.position === 1 ? "" : "s"} ahead of you` : "You are next in line";
    },
    message(d, id) {
      seen(id);
      if (reply.status === "pending") {
        reply.status = "streaming";
        reply.el.classList.replace("pending", "streaming");
        reply.text = document.createTextNode("");
        reply.body.replaceChildren(reply.text);
      }
      reply.content += d.delta;
      if (!l.frame) l.frame = requestAnimationFrame(() => paint(l));
    },
    render(d) { // the text so far, rendered by the server (about once a second)
      if (reply.status !== "streaming" || !(d.upto <= reply.content.length)) return;
      reply.html = d.html;
      chat.renderBody(reply); // the server's sanitised HTML, as for a stored reply
      reply.upto = d.upto;
      reply.text = document.createTextNode(reply.content.slice(d.upto));
      reply.body.append(reply.text); // what came after it, as text until the next render
    },
    done(d, id) {
      seen(id);
      l.ended = true;
      reply.upto = 0;
      const status = d.status ?? (l.stopping && !["stop", "length"].includes(d.finish_reason) ? "incomplete" : "complete");
      Object.assign(reply, { id: d.message_id, status, html: d.html ?? null, usage: d.usage,
        finish: d.finish_reason, model: l.model ?? d.model });
      if (d.message_id != null) reply.el.dataset.id = d.message_id;
      if (l.firstTitle && status === "complete") awaitTitle(l.convId, l.firstTitle);
      reply.el.classList.remove("pending");
      if (status === "incomplete" && reply.html == null && !reply.content) {
        reply.body.replaceChildren(h("span", { class: "muted" }, "Stopped before any text arrived."));
      } else chat.renderBody(reply);
      chat.renderMeta(reply);
      if (here(l)) announce(status === "incomplete" ? "The reply was stopped." : "The reply is complete.");
    },
    error(d, id) {
      seen(id);
      l.ended = true;
      const e = d.error || {};
      if (l.stopping) { stopped(l); return; }
      showError(reply, words(e, l.model), e, 0, () => turn("regen", "", user));
    },
  };
}

// The server's title for a first message (title_from in server/services/chat.py), shown at
// once: the first line of text without Markdown's marks ("# Plan" -> "Plan"), cut at a word.
const BLOCK_MARKS = /^(?:\s*(?:#{1,6}(?=\s)|>|[-*+](?=\s)|\d{1,9}[.)](?=\s)))+\s*/;
const INLINE_MARKS = /\*\*|__|~~|`+|(?<![\w*])\*(?=\S)|(?<=\S)\*(?![\w*])/g;

function titleFrom(message, limit = 60) {
  const lines = message.trim().split("\n").filter((ln) => ln.trim() && !/^\s*(```|~~~)/.test(ln));
  const first = lines.length ? lines[0].replace(BLOCK_MARKS, "").replace(INLINE_MARKS, "") : "";
  const line = first.split(/\s+/).filter(Boolean).join(" ");
  const chars = Array.from(line);
  if (chars.length <= limit) return line || "New chat";
  const cut = chars.slice(0, limit).join("");
  const space = cut.lastIndexOf(" ");
  return (space > 0 ? cut.slice(0, space) : cut) + "…";
}

// A new conversation's title is generated on the server after its first reply, by a
// background job that takes a moment (docs/web-client.md): look for it twice, then stop.
const TITLE_LOOKS_MS = [2500, 6000];

function awaitTitle(id, first) {
  let looks = 0;
  const look = async () => {
    try {
      const page = await api("GET", "/api/conversations?limit=5", undefined, { quiet: true });
      const c = page.conversations.find((x) => x.id === id);
      if (c && c.title !== first) { sidebar.retitle(id, c.title); return; }
    } catch { /* signed out or offline: the list shows it when next loaded */ }
    if (++looks < TITLE_LOOKS_MS.length) setTimeout(look, TITLE_LOOKS_MS[looks]);
  };
  setTimeout(look, TITLE_LOOKS_MS[0]);
}

function adopt(l, id, text) { // a new chat got its conversation id from the server
  if (l.settings) firstSettings?.taken(l.settings); // the conversation holds them now
  const title = titleFrom(text);
  l.firstTitle = title; // its first reply may bring a generated title
  chat.lives.delete("new");
  l.convId = id;
  chat.lives.set(id, l);
  sidebar.touch(id, title);
  sidebar.setRunning(id, true);
  if (chat.convId == null && l.user.el.isConnected) chat.named(id, title);
}

function stopped(l) { // ended by Stop: keep what arrived, marked incomplete
  l.ended = true;
  const { reply } = l;
  reply.status = "incomplete";
  reply.el.classList.remove("pending");
  if (reply.text) reply.text.data = reply.content.slice(reply.upto ?? 0);
  else reply.body.replaceChildren(h("span", { class: "muted" }, "Stopped before any text arrived."));
  chat.renderMeta(reply);
  if (here(l)) announce("The reply was stopped.");
}

function end(l) {
  cancelAnimationFrame(l.frame);
  clearInterval(l.watch);
  l.stall?.remove();
  const { reply } = l;
  if (reply.text && reply.status === "streaming") reply.text.data = reply.content.slice(reply.upto ?? 0);
  reply.el.classList.remove("streaming", "pending");
  reply.el.removeAttribute("aria-busy");
  const key = l.convId ?? "new";
  if (chat.lives.get(key) === l) chat.lives.delete(key);
  if (l.convId != null) sidebar.setRunning(l.convId, false);
  chat.showBusy();
  chat.refreshActions();
  if (!here(l)) return; // another conversation is on screen; this one reloads when opened
  if (l.reload) { chat.open(l.convId, null, true); return; }
  if (l.kind !== "new") branches.sync(l.convId); // the versions an edit or a regenerate made (or one followed after a reload)
  if (chat.stick) chat.toBottom();
  const focused = document.activeElement;
  if (!focused || focused === document.body || focused === $("stop") || focused === $("send")
      || focused === input) input.focus();
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/**
 * Read the turn to its end: `first` opens the stream; a dropped connection re-attaches with the
 * last event id; a turn the server no longer knows is read back from the stored conversation.
 */
async function run(l, first, failed) {
  let tries = 0;
  let open = first;
  try {
    for (;;) {
      const before = l.lastId;
      try {
        await open();
        if (l.ended) return;
      } catch (err) {
        if (err.name === "AbortError") return; // detached on purpose (logout, another user)
        if (l.turnId == null || err.status === 401) { failed(err); return; }
        if (err.status === 404) { // the stored message is the truth
          gone.add(l.turnId);
          l.ended = l.reload = true;
          return;
        }
      }
      if (l.turnId == null) { failed({ status: 0, code: "network" }); return; }
      tries = l.lastId !== before ? 1 : tries + 1;
      if (tries > RETRIES) {
        showError(l.reply, words({ code: "network" }), {}, 0, () => { l.reload = true; end(l); });
        return;
      }
      await sleep(Math.min(400 * tries, 3000));
      if (l.controller.signal.aborted) return;
      open = () => streamChat(null, handlers(l, ""), l.controller.signal, l.turnId, l.lastId);
    }
  } finally {
    end(l);
  }
}

/**
 * Run one turn: "new" (send text), "regen" (answer again the question `m`, or the question of
 * reply `m`; default: the last question) or "edit" (a new version of user message `m`). Edit
 * and regen start a branch: what followed `m` leaves the view and stays on the old branch.
 */
export async function turn(kind, text = "", m = null) {
  const target = chat.convId;
  if (chat.lives.has(target ?? "new") || branches.moving) return; // moving: the branch on show changes
  const body = { stream: true, render: "html" };
  if (target != null) body.conversation_id = target;
  const model = chat.models?.picked();
  if (model) body.model = model; // kept by the conversation
  const own = target == null && kind === "new" ? firstSettings?.held() : null;
  if (own) body.settings = own; // a new chat's: stored with the conversation the turn makes
  const { msgs } = chat;
  let user;
  if (kind === "new") {
    body.message = text;
    user = chat.add({ id: null, role: "user", content: text, status: "complete" });
  } else {
    let i = m ? msgs.indexOf(m) : chat.lastUser();
    if (m?.role === "assistant") i -= 1; // its question
    if (i < 0 || msgs[i].role !== "user" || target == null) return;
    user = msgs[i];
    for (const x of msgs.splice(i + 1)) x.el.remove();
    if (kind === "edit") {
      body.edit_message_id = user.id;
      body.message = text;
      user.content = text;
      chat.renderBody(user);
      chat.renderMeta(user);
    } else {
      body.regenerate = true;
      if (user.id != null) body.message_id = user.id;
    }
  }
  const reply = chat.add({ id: null, role: "assistant", content: "", status: "pending" });
  const l = begin(target ?? "new", user, reply);
  l.model = model;
  l.kind = kind;
  l.settings = own;
  chat.toBottom();
  announce("The assistant is replying.");
  await run(l, () => streamChat(body, handlers(l, text), l.controller.signal), (err) => {
    if (err.status === 401) { // nothing was stored: take the turn back, the text as the draft
      const drop = kind === "new" ? [user, reply] : [reply];
      for (const m of drop) { m.el.remove(); if (chat.msgs.includes(m)) chat.msgs.splice(chat.msgs.indexOf(m), 1); }
      if (kind === "new" && !input.value) { input.value = text; chat.autosize(); }
      return;
    }
    const d = err.detail || {};
    if (d.conversation_id != null && l.convId == null) adopt(l, d.conversation_id, text);
    if (d.user_message_id != null) {
      user.id = d.user_message_id;
      user.el.dataset.id = d.user_message_id;
    }
    // Once the message is stored, Retry asks for a reply again: the text is never sent twice.
    const retry = d.user_message_id != null ? () => turn("regen", "", user) : kind !== "new"
      ? () => turn(kind, text, user)
      : () => {
        for (const m of [user, reply]) { m.el.remove(); chat.msgs.splice(chat.msgs.indexOf(m), 1); }
        turn("new", text);
      };
    showError(reply, words(err, model), err.detail || {}, err.retryAfter, retry);
  });
}

/** Follow a reply that runs on the server (after a reload, or started in another tab). */
export function follow(id, turnId) {
  if (chat.lives.has(id) || gone.has(turnId)) return;
  const user = chat.msgs[chat.lastUser()];
  const reply = chat.add({ id: null, role: "assistant", content: "", status: "pending" });
  const l = begin(id, user, reply);
  l.turnId = turnId;
  run(l, () => streamChat(null, handlers(l, ""), l.controller.signal, turnId, null), () => {
    l.reload = true;
  });
}

/** Stop a running reply: the server aborts the generation and stores what it has. */
export function stop(l, now = false) {
  if (l.ended || (l.stopping && !now)) return;
  l.stopping = true;
  if (l.turnId == null) return; // asked again as soon as the turn has an id (meta)
  api("POST", `/api/turns/${encodeURIComponent(l.turnId)}/stop`, {}).then((r) => {
    if (r && r.stopped === false) l.stopping = false; // it had already ended: its end stands
  }, () => { l.stopping = false; });
}
