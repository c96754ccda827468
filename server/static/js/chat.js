// The chat pane: the messages of one conversation, the composer and the streaming reply.

import { $, h, icon, announce, copyWith } from "./dom.js";
import { api, streamChat } from "./api.js";
import * as sidebar from "./sidebar.js";

const list = $("messages");
const scroller = $("scroller");
const empty = $("empty");
const title = $("title");
const form = $("composer");
const input = $("input");
const sendButton = $("send");
const stopButton = $("stop");
const jump = $("jump");

let convId = null; // the conversation on screen (null: a new chat)
let loaded = false;
let msgs = []; // { id, role, content, status, html, usage, el, body, meta, acts }
let loading = null; // AbortController of the conversation being fetched
let live = null; // the reply being generated: { convId, user, reply, controller, frame, ended }
let stick = true; // follow new text: true while the reader is at the bottom
let models = null; // js/models.js, after sign-in: the model picker, model errors in words
let convModel = null; // the model of the conversation on screen (null: the default)
const byElement = new WeakMap();

export const current = () => convId;

function setTitle(text) {
  title.textContent = text;
  document.title = `${text} · chatgate`;
}

// ---- rendering

function button(act, label, name, text) {
  return h("button", { type: "button", class: "act", "data-act": act, "aria-label": label, title: label },
    icon(name), h("span", { class: "lbl" }, text));
}

function renderBody(m) {
  if (m.role === "assistant" && m.html != null) {
    // The only innerHTML in this client: `html` was rendered from Markdown by the server
    // (markdown-it-py, raw HTML disabled) and then sanitised with nh3's allow-list.
    m.body.innerHTML = m.html;
    for (const pre of m.body.querySelectorAll("pre")) {
      const lang = /language-(\S+)/.exec(pre.firstElementChild?.className || "");
      const wrap = h("div", { class: "code" });
      pre.before(wrap);
      wrap.append(h("div", { class: "code-head" }, h("span", null, lang ? lang[1] : "text"),
        button("code", "Copy code", "copy", "Copy code")), pre);
    }
  } else {
    m.body.textContent = m.content; // user messages and streamed text: plain text only
  }
  m.el.classList.toggle("plain", m.role === "user" || m.html == null);
}

const STATUS = { incomplete: "Incomplete: stopped before the end", error: "Interrupted by an error" };

function renderMeta(m) {
  m.acts = h("span", { class: "acts" });
  if (m.content) m.acts.append(button("copy", m.role === "user" ? "Copy message" : "Copy reply as Markdown", "copy", "Copy"));
  const usage = m.usage && h("span", { class: "usage", title: "Token usage" },
    `${m.usage.prompt_tokens ?? "?"} in · ${m.usage.completion_tokens ?? "?"} out tokens`);
  const badge = STATUS[m.status] && h("span", { class: `badge ${m.status}` }, STATUS[m.status]);
  const cut = m.finish === "length" && h("span", { class: "badge" }, "Cut short at the length limit");
  const by = m.model && models?.named && h("span", { class: "by" }, m.model);
  m.meta.replaceChildren(...[badge, cut, m.acts, by, usage].filter(Boolean));
}

function messageElement(m) {
  m.body = h("div", { class: "body" });
  m.meta = h("div", { class: "meta" });
  m.el = h("li", { class: `msg ${m.role}`, tabindex: "-1" },
    h("h2", { class: "sr-only" }, m.role === "user" ? "You said" : "The assistant said"), m.body, m.meta);
  if (m.id != null) m.el.dataset.id = m.id;
  byElement.set(m.el, m);
  renderBody(m);
  renderMeta(m);
  return m.el;
}

function add(m) {
  list.append(messageElement(m));
  msgs.push(m);
  empty.hidden = true;
  return m;
}

function clear() {
  convModel = null;
  models?.show(null);
  msgs = [];
  list.replaceChildren();
  empty.hidden = false;
  stick = true;
  jump.hidden = true;
}

const lastUser = () => { for (let i = msgs.length - 1; i >= 0; i--) if (msgs[i].role === "user") return i; return -1; };

/** Offer "edit" on the last user message and "regenerate" on the last message, when idle. */
function refreshActions() {
  for (const b of list.querySelectorAll("[data-act=edit],[data-act=regen]")) b.remove();
  const u = msgs[lastUser()];
  if (live || convId == null || !u || u.id == null) return;
  u.acts.append(button("edit", "Edit and resend your last message", "edit", "Edit"));
  const last = msgs[msgs.length - 1];
  if (last.status !== "failed") last.acts.append(last.role === "user"
    ? button("regen", "Get a reply to this message", "refresh", "Get reply")
    : button("regen", "Regenerate the last reply", "refresh", "Regenerate"));
}

// ---- scrolling

function toBottom() {
  scroller.scrollTop = scroller.scrollHeight;
  stick = true;
  jump.hidden = true;
}

function measure() {
  stick = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 48;
  jump.hidden = stick;
}
scroller.addEventListener("scroll", measure, { passive: true });

jump.addEventListener("click", () => { toBottom(); input.focus(); });

function focusMessage(id) {
  const m = msgs.find((x) => x.id === id);
  if (!m) { toBottom(); return; }
  m.el.scrollIntoView({ block: "center" });
  m.el.classList.remove("hit");
  void m.el.offsetWidth; // restart the highlight animation
  m.el.classList.add("hit");
  m.el.focus({ preventScroll: true });
  measure();
}

// ---- navigation

function attachLive() { // the running reply belongs to the conversation just shown
  if (!live) return;
  if (live.convId == null) add(live.user);
  if (!msgs.includes(live.reply)) { list.append(live.reply.el); msgs.push(live.reply); }
  empty.hidden = true;
}

/** Show the empty "new chat" view. */
export function openNew() {
  loading?.abort();
  loading = null;
  convId = null;
  loaded = true;
  clear();
  setTitle("New chat");
  if (live && live.convId == null) attachLive();
  refreshActions();
}

/** Show conversation `id` (fetched with server-rendered HTML), optionally at message `mid`. */
export async function open(id, mid = null, force = false) {
  if (id === convId && loaded && !force) {
    if (mid != null) focusMessage(mid);
    return;
  }
  loading?.abort();
  const controller = (loading = new AbortController());
  convId = id;
  loaded = false;
  clear();
  empty.hidden = true;
  setTitle(sidebar.titleOf(id) || "Loading…");
  list.setAttribute("aria-busy", "true");
  try {
    const conv = await api("GET", `/api/conversations/${id}?render=html`, undefined, { signal: controller.signal });
    if (controller !== loading) return;
    setTitle(conv.title);
    convModel = conv.model;
    models?.show(convModel, conv.messages);
    for (const m of conv.messages) add({ ...m });
    if (live && live.convId === id) attachLive();
    loaded = true;
    empty.hidden = msgs.length > 0;
    refreshActions();
    if (mid != null) focusMessage(mid); else toBottom();
  } catch (err) {
    if (err.name === "AbortError" || controller !== loading) return;
    if (err.status === 401) return; // the login form is up; the router reopens after login
    setTitle(err.status === 404 ? "Conversation not found" : "Could not load the conversation");
    list.replaceChildren(h("li", { class: "notice" }, err.status === 404
      ? "This conversation does not exist or was deleted." : err.message));
  } finally {
    if (controller === loading) { list.removeAttribute("aria-busy"); loading = null; }
  }
}

/** Use the model picker module; replies name their model when there are several. */
export function useModels(m) {
  (models = m).show(convModel, msgs);
  for (const x of msgs) if (x !== live?.reply) renderMeta(x);
  refreshActions();
}

/** Forget everything on screen (logout or another user). */
export function reset() {
  live?.controller.abort();
  loading?.abort();
  loading = null;
  convId = null;
  loaded = false;
  clear();
  setTitle("New chat");
  input.value = "";
  autosize();
}

document.addEventListener("conv-renamed", (e) => { if (e.detail.id === convId) setTitle(e.detail.title); });
document.addEventListener("conv-deleted", (e) => { if (e.detail.id === convId) location.hash = "#/"; });

// ---- sending and streaming

/** The server's title for a first message (server/chat.py title_from), to show it at once. */
function titleFrom(message, limit = 60) {
  const line = message.trim().split("\n", 1)[0].split(/\s+/).filter(Boolean).join(" ");
  const chars = Array.from(line);
  if (chars.length <= limit) return line || "New chat";
  const cut = chars.slice(0, limit).join("");
  const space = cut.lastIndexOf(" ");
  return (space > 0 ? cut.slice(0, space) : cut) + "…";
}

function setBusy(busy) {
  sendButton.disabled = busy;
  stopButton.hidden = !busy;
  form.classList.toggle("busy", busy);
  form.setAttribute("aria-busy", String(busy));
}

function paint() { // at most once per animation frame, and only the streaming message
  if (!live) return;
  live.frame = 0;
  live.reply.text.data = live.reply.content;
  if (stick && live.reply.el.isConnected) toBottom();
}

function pendingBody(reply, note) {
  reply.note = h("span", { class: "queue" }, note);
  reply.body.replaceChildren(h("span", { class: "typing", "aria-hidden": "true" }, h("i"), h("i"), h("i")), reply.note);
}

function adopt(id, text) { // a new chat got its conversation id from the server
  live && (live.convId = id);
  if (convId == null && (!live || live.user.el.isConnected)) {
    convId = id;
    loaded = true;
    history.replaceState(null, "", `#/c/${id}`);
    setTitle(titleFrom(text));
    sidebar.setActive(id);
  }
  sidebar.touch(id, titleFrom(text));
}

function showError(m, message, retryAfter, retry) {
  m.status = "failed"; // shown by the box below, not by a badge
  m.el.classList.remove("pending");
  if (m.text) m.text.data = m.content;
  else m.body.replaceChildren();
  renderMeta(m);
  const again = h("button", { type: "button", class: "btn small", "data-act": "retry" }, "Retry");
  m.retry = () => { if (!live && !again.disabled) retry(); };
  m.body.after(h("div", { class: "failure" }, h("span", null, message), again));
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
  announce(`The reply failed: ${message}`);
}

/** Run one turn: "new" (send text), "regen" (re-ask the last message) or "edit" (replace it). */
async function turn(kind, text = "") {
  if (live) return;
  const target = convId;
  const body = { stream: true, render: "html" };
  if (target != null) body.conversation_id = target;
  const model = models?.picked();
  if (model) body.model = model; // kept by the conversation
  let user;
  if (kind === "new") {
    body.message = text;
    user = add({ id: null, role: "user", content: text, status: "complete" });
  } else {
    const i = lastUser();
    if (i < 0 || target == null) return;
    user = msgs[i];
    for (const m of msgs.splice(i + 1)) m.el.remove();
    if (kind === "edit") {
      body.edit_message_id = user.id;
      body.message = text;
      user.content = text;
      renderBody(user);
      renderMeta(user);
    } else {
      body.regenerate = true;
    }
  }
  const reply = add({ id: null, role: "assistant", content: "", status: "pending" });
  reply.el.classList.add("pending");
  reply.el.setAttribute("aria-busy", "true");
  pendingBody(reply, "Waiting for the model…");
  const controller = new AbortController();
  live = { convId: target, user, reply, controller, frame: 0, ended: false, started: false };
  const mine = live;
  setBusy(true);
  refreshActions();
  toBottom();
  announce("The assistant is replying.");
  const regenerate = () => turn("regen");
  try {
    await streamChat(body, {
      meta(d) {
        mine.started = true;
        user.id = d.user_message_id;
        user.el.dataset.id = d.user_message_id;
        if (target == null) adopt(d.conversation_id, text);
        else sidebar.touch(target, title.textContent);
      },
      queued(d) {
        if (reply.status !== "pending") return;
        reply.note.textContent = d.position > 0
          ? `${d.position} request${d.position === 1 ? "" : "s"} ahead of you` : "You are next in line";
      },
      message(d) {
        if (reply.status === "pending") {
          reply.status = "streaming";
          reply.el.classList.replace("pending", "streaming");
          reply.text = document.createTextNode("");
          reply.body.replaceChildren(reply.text);
        }
        reply.content += d.delta;
        if (!mine.frame) mine.frame = requestAnimationFrame(paint);
      },
      done(d) {
        mine.ended = true;
        Object.assign(reply, { id: d.message_id, status: "complete", html: d.html ?? null,
          usage: d.usage, finish: d.finish_reason, model });
        reply.el.dataset.id = d.message_id;
        reply.el.classList.remove("pending");
        renderBody(reply);
        renderMeta(reply);
        announce("The reply is complete.");
      },
      error(d) {
        mine.ended = true;
        const e = d.error || {};
        showError(reply, e.message || "The reply failed.", 0, regenerate);
      },
    }, controller.signal);
    if (!mine.ended) showError(reply, "The connection was lost before the reply finished.", 0, regenerate);
  } catch (err) {
    if (err.name === "AbortError") {
      reply.status = "incomplete";
      reply.el.classList.remove("pending");
      if (reply.text) reply.text.data = reply.content;
      else reply.body.replaceChildren(h("span", { class: "muted" }, "Stopped before any text arrived."));
      renderMeta(reply);
      announce("The reply was stopped.");
    } else if (err.status === 401 && !mine.started) {
      // Nothing was stored: take the turn back and keep the text as the draft.
      reply.el.remove();
      msgs.splice(msgs.indexOf(reply), 1);
      if (kind === "new") {
        user.el.remove();
        msgs.splice(msgs.indexOf(user), 1);
        if (!input.value) { input.value = text; autosize(); }
      }
      empty.hidden = msgs.length > 0;
    } else {
      const d = err.detail || {};
      if (d.conversation_id != null && target == null) adopt(d.conversation_id, text);
      if (d.user_message_id != null) {
        user.id = d.user_message_id;
        user.el.dataset.id = d.user_message_id;
      }
      // Once the message is stored, Retry asks for a reply again: the text is never sent twice.
      const retry = mine.started || d.user_message_id != null ? regenerate : kind !== "new"
        ? () => turn(kind, text)
        : () => {
          for (const m of [user, reply]) { m.el.remove(); msgs.splice(msgs.indexOf(m), 1); }
          turn("new", text);
        };
      showError(reply, err.status === undefined ? "The connection was lost before the reply finished."
        : models?.said(err, model) ?? err.message, err.retryAfter, retry);
    }
  } finally {
    cancelAnimationFrame(mine.frame);
    reply.el.classList.remove("streaming");
    reply.el.removeAttribute("aria-busy");
    live = null;
    setBusy(false);
    refreshActions();
    if (stick && reply.el.isConnected) toBottom();
    const focused = document.activeElement;
    if (!focused || focused === document.body || focused === stopButton || focused === sendButton
        || focused === input) input.focus();
  }
}

/** Stop the running reply (Esc or the Stop button); focus goes back to the input. */
export function stop() {
  if (!live) return false;
  live.controller.abort();
  input.focus();
  return true;
}

function startEdit(m) {
  const box = h("textarea", { class: "edit-input", "aria-label": "Edit your message", rows: "3" });
  box.value = m.content;
  const cancel = h("button", { type: "button", class: "btn small" }, "Cancel");
  const editor = h("form", { class: "edit" }, box,
    h("div", { class: "row" }, cancel, h("button", { type: "submit", class: "btn small primary" }, "Save & send")));
  const close = () => { editor.remove(); m.body.hidden = false; m.meta.hidden = false; };
  m.body.hidden = true;
  m.meta.hidden = true;
  m.body.after(editor);
  box.focus();
  editor.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = box.value.trim();
    close();
    if (text && text !== m.content) turn("edit", text);
    else m.el.querySelector("[data-act=edit]")?.focus();
  });
  cancel.addEventListener("click", () => { close(); m.el.querySelector("[data-act=edit]")?.focus(); });
  box.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); editor.requestSubmit(); }
    if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); cancel.click(); }
  });
}

// One listener for every message button.
list.addEventListener("click", (event) => {
  const b = event.target.closest("button[data-act]");
  if (!b) return;
  const m = byElement.get(b.closest("li.msg"));
  if (!m) return;
  switch (b.dataset.act) {
    case "copy": copyWith(b, m.content); break;
    case "code": copyWith(b, b.closest(".code").querySelector("pre").textContent); break;
    case "regen": turn("regen"); break;
    case "edit": startEdit(m); break;
    case "retry": m.retry?.(); break;
  }
});

// ---- the composer

function autosize() {
  input.style.height = "auto"; // CSSOM, not a style attribute in markup: allowed by the CSP
  input.style.height = `${Math.min(input.scrollHeight, 240)}px`;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text || live) return;
  input.value = "";
  autosize();
  turn("new", text);
});
input.addEventListener("input", autosize);
input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});
stopButton.addEventListener("click", stop);
