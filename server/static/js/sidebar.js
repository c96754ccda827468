// The conversation list: cursor pages of 50, one request at a time, more on scroll, rows
// appended in fragments, one delegated listener for every row.

import { $, h, icon, announce } from "./dom.js";
import { api } from "./api.js";

const PAGE = 50;
const list = $("conv-list");
const status = $("conv-status");
const sentinel = $("sentinel");
const nav = $("conv-nav");
const rows = new Map(); // id -> { c, li, link, label }
let cursor = null;
let exhausted = false;
let loading = false;
let failed = false;
let active = null;
let generation = 0; // bumped on reset so late answers for a previous user are dropped

const observer = new IntersectionObserver(
  (entries) => { if (entries.some((e) => e.isIntersecting)) loadMore(); },
  { root: $("lists"), rootMargin: "600px 0px" },
);

function emit(name, detail) { document.dispatchEvent(new CustomEvent(name, { detail })); }

function row(c) {
  const label = h("span", { class: "t" }, c.title);
  const link = h("a", { class: "conv-link", href: `#/c/${c.id}` }, label);
  if (c.id === active) link.setAttribute("aria-current", "page");
  const li = h("li", { class: "conv", "data-id": c.id }, link,
    h("button", { type: "button", class: "icon-btn", "data-act": "rename", "aria-label": `Rename “${c.title}”` }, icon("edit")),
    h("button", { type: "button", class: "icon-btn", "data-act": "delete", "aria-label": `Delete “${c.title}”` }, icon("trash")));
  rows.set(c.id, { c, li, link, label });
  if (c.running_turn_id) setRunning(c.id, true);
  return li;
}

/** Mark a conversation whose reply is being written (or clear the mark). */
export function setRunning(id, on) {
  const r = rows.get(id);
  if (!r || r.li.classList.contains("running") === on) return;
  r.li.classList.toggle("running", on);
  if (on) r.link.append(h("span", { class: "run", title: "Replying…" }, h("span", { class: "sr-only" }, "(replying)")));
  else r.link.querySelector(".run")?.remove();
}

function setTitle(r, title) {
  r.c.title = title;
  r.label.textContent = title;
  r.li.querySelector("[data-act=rename]").setAttribute("aria-label", `Rename “${title}”`);
  r.li.querySelector("[data-act=delete]").setAttribute("aria-label", `Delete “${title}”`);
}

function recheck() { // fires the observer again if the end of the list is still in view
  observer.unobserve(sentinel);
  observer.observe(sentinel);
}

/** Fetch the next page unless one is in flight or the list is complete. */
export async function loadMore() {
  if (loading || exhausted || failed) return;
  loading = true;
  const mine = generation;
  status.textContent = "Loading…";
  try {
    const page = await api("GET", `/api/conversations?limit=${PAGE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    if (mine !== generation) return;
    const fragment = document.createDocumentFragment();
    for (const c of page.conversations) if (!rows.has(c.id)) fragment.append(row(c));
    list.append(fragment);
    cursor = page.next_cursor;
    exhausted = !cursor;
    status.textContent = rows.size ? "" : "No conversations yet.";
  } catch (err) {
    if (mine !== generation) return;
    failed = true;
    status.replaceChildren(err.status === 401 ? "" : `Your conversations could not be loaded. (${err.message}) `,
      err.status === 401 ? "" : h("button", { type: "button", class: "link", "data-act": "reload" }, "Try again"));
  } finally {
    if (mine === generation) {
      loading = false;
      if (!failed && !exhausted) recheck();
    }
  }
}

/** Start paging (after sign-in) or pick up again after a failure or a re-login. */
export function resume() {
  failed = false;
  observer.observe(sentinel);
  if (!rows.size) loadMore(); else recheck();
}

/** Forget everything shown (logout or a different user). */
export function reset() {
  generation += 1;
  observer.unobserve(sentinel);
  rows.clear();
  list.replaceChildren();
  status.textContent = "";
  cursor = null;
  exhausted = false;
  loading = false;
  failed = false;
  active = null;
  $("search").value = "";
  document.dispatchEvent(new Event("search-reset"));
}

/** Mark the open conversation. */
export function setActive(id) {
  rows.get(active)?.link.removeAttribute("aria-current");
  active = id;
  rows.get(id)?.link.setAttribute("aria-current", "page");
}

export const titleOf = (id) => rows.get(id)?.c.title;

/** A conversation just had activity: move it (or add it) to the top. */
export function touch(id, title) {
  let r = rows.get(id);
  if (!r) {
    if (!title) return;
    list.prepend(row({ id, title }));
    status.textContent = "";
    return;
  }
  if (list.firstElementChild !== r.li) list.prepend(r.li);
}

/** The server titled a conversation anew (a generated title): show it. */
export function retitle(id, title) {
  const r = rows.get(id);
  if (r && title && title !== r.c.title) { setTitle(r, title); emit("conv-renamed", { id, title }); }
}

/** A yes/no question in a modal dialog. */
export function confirm(text, ok = "Delete") {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

function rename(id, button) {
  const r = rows.get(id);
  const input = h("input", { class: "rename", "aria-label": "Conversation title", maxlength: "200" });
  input.value = r.c.title;
  r.link.hidden = true;
  r.li.prepend(input);
  input.focus();
  input.select();
  let finished = false;
  const finish = async (save) => {
    if (finished) return;
    finished = true;
    const title = input.value.trim();
    input.remove();
    r.link.hidden = false;
    button.focus();
    if (!save || !title || title === r.c.title) return;
    const before = r.c.title;
    setTitle(r, title);
    try {
      const c = await api("PATCH", `/api/conversations/${id}`, { title });
      setTitle(r, c.title);
      emit("conv-renamed", { id, title: c.title });
      announce("Conversation renamed.");
    } catch (err) {
      setTitle(r, before);
      announce(`The conversation was not renamed. Try again. (${err.message})`);
    }
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); finish(true); }
    if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
}

async function remove(id) {
  const r = rows.get(id);
  if (!(await confirm(`Delete “${r.c.title}”? This cannot be undone.`))) return;
  try {
    await api("DELETE", `/api/conversations/${id}`);
  } catch (err) {
    if (err.status !== 404) { announce(`The conversation was not deleted. Try again. (${err.message})`); return; }
  }
  const next = r.li.nextElementSibling || r.li.previousElementSibling;
  r.li.remove();
  rows.delete(id);
  if (!rows.size) status.textContent = "No conversations yet.";
  emit("conv-deleted", { id });
  announce("Conversation deleted.");
  (next ? next.querySelector("a") : $("new-chat")).focus();
  recheck();
}

// One listener for all rows, however many thousand there are.
nav.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-act]");
  if (!button) return;
  const act = button.dataset.act;
  if (act === "reload") { resume(); return; }
  const id = Number(button.closest("li").dataset.id);
  if (act === "rename") rename(id, button);
  else if (act === "delete") remove(id);
});

// The search code loads on the first keystroke in the search box.
$("search").addEventListener("input", () => import("./search.js"), { once: true });
