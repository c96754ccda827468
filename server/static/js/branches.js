// The branches of a conversation, loaded with js/turns.js (before any message shows): the
// actions of each message. A message with alternatives (earlier versions of an edited question,
// other answers to a question) shows "‹ 2/3 ›": switching asks the server to show that branch
// (POST .../branch) and draws what it answers; "Delete this version" removes a message and all
// under it (DELETE .../messages/{id}). While a reply runs in the conversation both wait: the
// reply belongs to the branch on show, which stays on screen until it ends.

import { $, h, icon, announce } from "./dom.js";
import { api } from "./api.js";
import { confirm } from "./sidebar.js";
import * as chat from "./chat.js";

// The versions' styles come with this module, not with the first load.
const sheet = h("link", { rel: "stylesheet", href: "/static/branches.css" });
await new Promise((resolve) => {
  sheet.addEventListener("load", resolve);
  sheet.addEventListener("error", resolve); // unstyled is still usable
  document.head.append(sheet);
});

// Copying a selection with formulas in it copies their LaTeX ($...$, $$...$$ on a line of
// its own), as the reply's Copy does, not the glyphs the browser lays out one a line. A
// selection that starts or ends inside a formula takes the whole formula.
const mathOf = (n) => (n.nodeType === 1 ? n : n.parentElement)?.closest("#messages math");
document.addEventListener("copy", (event) => {
  const sel = getSelection();
  if (!sel.rangeCount || sel.isCollapsed) return;
  const range = sel.getRangeAt(0).cloneRange();
  const first = mathOf(range.startContainer), last = mathOf(range.endContainer);
  if (first) range.setStartBefore(first);
  if (last) range.setEndAfter(last);
  const part = range.cloneContents();
  if (!part.querySelector("math")) return;
  for (const m of part.querySelectorAll("math")) {
    const tex = m.querySelector("annotation")?.textContent ?? m.textContent;
    m.replaceWith(m.getAttribute("display") === "block" ? `$$${tex}$$` : `$${tex}$`);
  }
  const box = h("div", { class: "offscreen", "aria-hidden": "true" }, part);
  document.body.append(box); // laid out, so innerText keeps the paragraphs' line breaks
  event.clipboardData.setData("text/plain", box.innerText);
  box.remove();
  event.preventDefault();
});

/** A switch or a delete is on its way: one at a time, and Send waits. */
export let moving = false;

/**
 * The actions of each message on screen: Edit on every question and Regenerate on every reply
 * (both start a branch), "‹ 2/3 ›" and "Delete this version" on a message with versions. While
 * a reply runs here, only the arrows show, disabled.
 */
export function actions() {
  const { msgs } = chat;
  for (const b of $("messages").querySelectorAll("[data-act=edit],[data-act=regen],[data-act=drop],.versions")) b.remove();
  const u = chat.lastUser();
  const last = msgs[msgs.length - 1];
  const idle = chat.convId != null && !chat.liveHere() && u >= 0 && msgs[u].id != null;
  msgs.forEach((m, i) => {
    if (idle && m.id != null && m.status !== "failed") m.acts.append(m.role === "user" // failed: Retry
      ? chat.button("edit", i === u ? "Edit and resend your last message" : "Edit this message", "edit", "Edit")
      : chat.button("regen", m === last ? "Regenerate the last reply" : "Regenerate this reply", "refresh", "Regenerate"));
    versions(m, !idle);
  });
  if (idle && last.role === "user") last.acts.append(chat.button("regen", "Get a reply to this message", "refresh", "Get reply"));
  for (const m of msgs) summarised(m);
}

/** Under a message up to which older turns were summarised: the summary the model is sent
 * instead of them, collapsed (plain text). */
function summarised(m) {
  if (!m.summary || m.sumEl?.isConnected) return;
  m.sumEl = h("details", { class: "summary" },
    h("summary", null, "Earlier turns, summarised for the model"), h("p", null, m.summary.content));
  m.el.append(m.sumEl);
}

/** "‹ 2/3 ›" in front of the message's meta line, and "Delete this version", when it has siblings. */
function versions(m, busy) {
  const ids = m.siblings;
  const at = ids ? ids.indexOf(m.id) : -1;
  if (at < 0 || ids.length < 2) return;
  const off = busy || moving;
  const arrow = (act, label, by) => h("button", { type: "button", class: "act ver", "data-act": act,
    "aria-label": label, title: label, disabled: off || !ids[at + by] }, icon(act));
  m.meta.prepend(h("span", { class: "versions", role: "group", "aria-label": `Version ${at + 1} of ${ids.length}` },
    arrow("prev", "Previous version", -1), h("span", { class: "count" }, `${at + 1}/${ids.length}`),
    arrow("next", "Next version", 1)));
  if (!busy) m.acts.append(chat.button("drop", "Delete this version", "trash", "Delete"));
}

$("messages").addEventListener("click", (event) => {
  const b = event.target.closest("button[data-act]");
  const m = b && chat.msgs.find((x) => x.el.contains(b));
  if (!m) return;
  if (b.dataset.act === "drop") drop(m);
  else if (b.classList.contains("ver")) step(m, b.dataset.act === "prev" ? -1 : 1);
});

/** The conversation to show for a link to message `mid`: on another branch, that branch is
 * asked for first (not while a reply runs there: it belongs to the branch on show). */
export async function reveal(conv, mid, signal) {
  if (mid == null || conv.messages.some((x) => x.id === mid) || chat.lives.has(conv.id) || conv.running_turn_id) return conv;
  return api("POST", `/api/conversations/${conv.id}/branch?render=html`, { message_id: mid }, { signal })
    .catch((err) => { if (err.name === "AbortError") throw err; return conv; }); // gone: as it is
}

/** Show the previous (-1) or next (1) version of message `m`, with the branch under it. */
function step(m, by) {
  const to = m.siblings?.[m.siblings.indexOf(m.id) + by];
  if (to == null) return;
  const call = (id) => api("POST", `/api/conversations/${id}/branch?render=html`, { message_id: to });
  move(m, by < 0 ? "prev" : "next", call, "");
}

/** Delete message `m` (a version) and everything under it, after asking. */
async function drop(m) {
  const what = m.role === "user" ? "this version of your message" : "this version of the reply";
  if (!(await confirm(`Delete ${what} and everything after it? This cannot be undone.`))) {
    m.el.querySelector("[data-act=drop]")?.focus();
    return;
  }
  move(m, "prev", (id) => api("DELETE", `/api/conversations/${id}/messages/${m.id}?render=html`), "Version deleted.");
}

/**
 * Ask the server (`call`), then draw the conversation it answers with, keeping the message in
 * `m`'s place where it was on screen, and the focus on its versions (`act`: the arrow).
 */
async function move(m, act, call, said) {
  const id = chat.convId;
  const index = chat.msgs.indexOf(m);
  if (moving || id == null || index < 0 || chat.liveHere()) return;
  const top = m.el.getBoundingClientRect().top;
  moving = true;
  chat.refreshActions(); // the arrows wait for the answer
  let conv;
  try {
    conv = await call(id);
  } catch (err) {
    if (err.status === 404) { chat.open(id, null, true); return; } // gone meanwhile: read it again
    if (err.status !== 401) announce(`That did not work. Try again. (${err.message})`);
    return;
  } finally {
    moving = false;
    if (!conv) chat.refreshActions();
  }
  if (chat.convId !== id || chat.liveHere()) return; // the reader went elsewhere meanwhile
  history.replaceState(null, "", `#/c/${id}`); // a reload shows this branch, not a search hit's
  chat.fill(conv);
  const here = chat.msgs[Math.min(index, chat.msgs.length - 1)];
  if (!here) { chat.toBottom(); return; }
  const scroller = here.el.closest(".scroller");
  scroller.scrollTop += here.el.getBoundingClientRect().top - top;
  const arrows = [...here.meta.querySelectorAll(".ver")];
  const focus = arrows.find((b) => b.dataset.act === act && !b.disabled) ?? arrows.find((b) => !b.disabled) ?? here.el;
  focus.focus({ preventScroll: true });
  announce(said || `Version ${here.siblings ? here.siblings.indexOf(here.id) + 1 : 1} of ${here.siblings?.length ?? 1}.`);
}

/** After an edit or a regenerate: read the conversation's versions again (the ids are the server's). */
export async function sync(id) {
  let conv;
  try {
    conv = await api("GET", `/api/conversations/${id}`, undefined, { quiet: true });
  } catch {
    return; // the counts stay as they were; the next load has them right
  }
  if (chat.convId !== id || chat.liveHere()) return;
  chat.msgs.forEach((m, i) => {
    const x = conv.messages[i];
    if (m.id == null && x?.role === m.role) { m.id = x.id; m.el.dataset.id = x.id; } // e.g. a failed reply
    if (x?.id === m.id) m.siblings = x.siblings;
  });
  chat.refreshActions();
}
