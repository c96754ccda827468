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

export let convId = null; // the conversation on screen (null: a new chat)
let loaded = false;
export let msgs = []; // { id, role, content, status, html, usage, el, body, meta, acts }
let loading = null; // AbortController of the conversation being fetched
export let stick = true; // follow new text: true while the reader is at the bottom
export let models = null; // js/models.js, after sign-in: the model picker, model errors in words
let convModel = null; // the model of the conversation on screen (null: the default)
const byElement = new WeakMap();

export const current = () => convId;

export function setTitle(text) {
  title.textContent = text;
  document.title = `${text} · chatgate`;
}

// ---- rendering

export function button(act, label, name, text) {
  return h("button", { type: "button", class: "act", "data-act": act, "aria-label": label, title: label },
    icon(name), h("span", { class: "lbl" }, text));
}

export function renderBody(m) {
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

const STATUS = { incomplete: "Incomplete: stopped before the end" };

export function renderMeta(m) {
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

export function add(m) {
  list.append(messageElement(m));
  msgs.push(m);
  empty.hidden = true;
  return m;
}

function clear() {
  form.hidden = false;
  convModel = null;
  models?.show(null);
  msgs = [];
  list.replaceChildren();
  empty.hidden = false;
  stick = true;
  jump.hidden = true;
}

export const lastUser = () => { for (let i = msgs.length - 1; i >= 0; i--) if (msgs[i].role === "user") return i; return -1; };

/** Edit, Regenerate and the versions of each message: js/branches.js, in before any message is. */
export const refreshActions = () => B?.actions();

// ---- scrolling

export function toBottom() {
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

function attachLive(l) { // a reply of this tab still runs in the conversation just shown
  if (l.convId == null) add(l.user);
  if (!msgs.includes(l.reply)) { list.append(l.reply.el); msgs.push(l.reply); }
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
  if (lives.has("new")) attachLive(lives.get("new"));
  showBusy();
  refreshActions();
  input.focus();
}

/** Show conversation `id` (fetched with server-rendered HTML), optionally at message `mid`. */
export async function open(id, mid = null, force = false) {
  if (id === convId && loaded && !force && (mid == null || liveHere() || msgs.some((x) => x.id === mid))) {
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
  showBusy();
  list.setAttribute("aria-busy", "true");
  try {
    const [got] = await Promise.all([
      api("GET", `/api/conversations/${id}?render=html`, undefined, { signal: controller.signal }), turns()]);
    const conv = await B.reveal(got, mid, controller.signal); // a message on another branch: show that one
    if (controller !== loading) return;
    fill(conv);
    loaded = true;
    if (mid != null) focusMessage(mid); else toBottom();
  } catch (err) {
    if (err.name === "AbortError" || controller !== loading) return;
    if (err.status === 401) return; // the login form is up; the router reopens after login
    const gone = err.status === 404;
    setTitle(gone ? "Conversation not found" : "Could not load the conversation");
    form.hidden = gone; // nothing to write to
    list.replaceChildren(h("li", { class: "notice" }, gone
      ? "This conversation does not exist or was deleted. "
      : `It could not be loaded. Check your connection, then reload the page. (${err.message}) `,
    h("a", { href: "#/" }, gone ? "Start a new chat" : "Start a new chat instead")));
  } finally {
    if (controller === loading) { list.removeAttribute("aria-busy"); loading = null; }
  }
}

/** Show conversation `conv` as the server sent it, its running reply included. */
export function fill(conv) {
  clear();
  setTitle(conv.title);
  convModel = conv.model;
  models?.show(convModel, conv.messages);
  for (const m of conv.messages) T.stored(add({ ...m }));
  const l = lives.get(conv.id);
  if (l) attachLive(l);
  else if (conv.running_turn_id) T.follow(conv.id, conv.running_turn_id); // e.g. after a reload
  sidebar.setRunning(conv.id, lives.has(conv.id));
  empty.hidden = msgs.length > 0;
  refreshActions();
}

/** Use the model picker module; replies name their model when there are several. */
export function useModels(m) {
  (models = m).show(convModel, msgs);
  for (const x of msgs) if (![...lives.values()].some((l) => l.reply === x)) renderMeta(x);
  refreshActions();
}

/** Forget everything on screen (logout or another user). */
export function reset() {
  for (const l of lives.values()) l.controller.abort(); // detaches: the server stops them later
  lives.clear();
  loading?.abort();
  loading = null;
  convId = null;
  loaded = false;
  clear();
  setTitle("New chat");
  input.value = "";
  autosize();
  showBusy();
}

document.addEventListener("conv-renamed", (e) => { if (e.detail.id === convId) setTitle(e.detail.title); });
document.addEventListener("conv-deleted", (e) => { if (e.detail.id === convId) location.hash = "#/"; });

// ---- streaming: js/turns.js (loaded after sign-in) runs each turn; one per conversation

/** The running turns: conversation id (or "new" until the server names it) -> its turn. */
export const lives = new Map();
export const liveHere = () => lives.get(convId ?? "new");
let T = null; // js/turns.js once loaded: then a click starts its turn at once, in the same task
let B = null; // js/branches.js: the actions of each message
const turns = async () => { B ??= await import("./branches.js"); return (T ??= await import("./turns.js")); };

/** Send, Stop and the spinner follow the conversation on screen. */
export function showBusy() {
  const busy = !!liveHere() || starting > 0;
  sendButton.disabled = busy;
  stopButton.hidden = !busy;
  form.classList.toggle("busy", busy);
  form.setAttribute("aria-busy", String(busy));
}

/** A new chat on screen got its conversation id from the server. */
export function named(id, text) {
  convId = id;
  loaded = true;
  history.replaceState(null, "", `#/c/${id}`);
  setTitle(text);
  sidebar.setActive(id);
}

let starting = 0; // turns asked for before js/turns.js was in: busy at once all the same

function turn(kind, text, m) {
  if (T) { T.turn(kind, text, m); return; }
  starting += 1;
  showBusy();
  turns().then((t) => { starting -= 1; t.turn(kind, text, m); showBusy(); }, () => {
    starting -= 1;
    showBusy();
    announce("The page could not be loaded. Reload to try again.");
  });
}

/** Stop the reply of the conversation on screen (Esc or the Stop button); focus goes to the input. */
export function stop() {
  const l = liveHere();
  if (!l) return false;
  if (T) T.stop(l); else turns().then((t) => t.stop(l));
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
    if (text && text !== m.content) turn("edit", text, m);
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
    case "regen": turn("regen", "", m); break;
    case "edit": startEdit(m); break;
    case "retry": m.retry?.(); break;
  }
});

// ---- the composer

export function autosize() {
  input.style.height = "auto"; // CSSOM, not a style attribute in markup: allowed by the CSP
  input.style.height = `${Math.min(input.scrollHeight, 240)}px`;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text || liveHere() || starting || B?.moving) return;
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
$("new-chat").addEventListener("click", () => input.focus()); // also when the new chat is on screen already
