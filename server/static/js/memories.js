// The memories section of the account page (js/account.js imports it): short facts added to the
// system prompt of every turn. List, add, edit, switch on and off, delete, and accept or reject
// the ones suggested from the user's chats (/api/memories). Every value goes in as text.

import { h, announce } from "./dom.js";
import { api } from "./api.js";
import { confirm } from "./sidebar.js";

let items = []; // the memories, newest first
let generation = 0; // bumped on reset so late answers for a previous user are dropped

function sentence(err) {
  if (!err.status) return "The server could not be reached. Check the connection and try again.";
  const text = err.message.replace(/'content'/g, "the memory");
  return `${text[0].toUpperCase()}${text.slice(1)}${/[.!?]$/.test(text) ? "" : "."}`;
}

const input = h("input", { id: "memory-new", maxlength: "500", autocomplete: "off", required: true,
  placeholder: "e.g. I write Python 3.12", "aria-describedby": "memories-hint" });
const addError = h("p", { class: "form-error", role: "alert" });
const form = h("form", { class: "copy-row memory-add" },
  h("label", { for: "memory-new", class: "sr-only" }, "New memory"), input,
  h("button", { type: "submit", class: "btn primary" }, "Add"));
const status = h("p", { class: "status", "aria-live": "polite" });
const proposedTitle = h("h3", { id: "memories-proposed-title" }, "Suggested from your chats");
const proposed = h("ul", { class: "memory-list", "aria-labelledby": "memories-proposed-title" });
const proposedBox = h("div", { class: "proposed", hidden: true }, proposedTitle,
  h("p", { class: "hint" }, "Nothing is remembered until you accept it."), proposed);
const listTitle = h("h3", { id: "memories-list-title", class: "sr-only" }, "Your memories");
const list = h("ul", { class: "memory-list", "aria-labelledby": "memories-list-title" });

/** The section, placed by the account page. */
export const section = h("section", { "aria-labelledby": "memories-title" },
  h("h2", { id: "memories-title", tabindex: "-1" }, "Memories"),
  h("p", { class: "hint", id: "memories-hint" }, "Short facts the model is told on every turn, such as "
    + "“answer in Spanish”. The newest come first when they do not all fit. One switched off is kept but not used."),
  form, addError, proposedBox, status, listTitle, list);

function row(m) {
  const text = h("p", { class: "memory-text" }, m.content);
  const li = h("li", { class: "memory", "data-id": m.id }, text);
  if (m.state === "proposed") {
    li.append(h("div", { class: "row" },
      h("button", { type: "button", class: "btn small", "data-act": "accept", "aria-label": `Accept “${m.content}”` }, "Accept"),
      h("button", { type: "button", class: "btn small", "data-act": "reject", "aria-label": `Reject “${m.content}”` }, "Reject")));
    return li;
  }
  if (!m.enabled) li.classList.add("off");
  const toggle = h("input", { type: "checkbox", "data-act": "toggle", checked: m.enabled, "aria-label": `Use “${m.content}”` });
  li.append(h("div", { class: "row" },
    h("label", { class: "switch-label" }, toggle, h("span", { "aria-hidden": "true" }, m.enabled ? "On" : "Off")),
    h("button", { type: "button", class: "btn small", "data-act": "edit", "aria-label": `Edit “${m.content}”` }, "Edit"),
    h("button", { type: "button", class: "btn small", "data-act": "delete", "aria-label": `Delete “${m.content}”` }, "Delete")));
  return li;
}

function render() {
  const active = items.filter((m) => m.state !== "proposed");
  const waiting = items.filter((m) => m.state === "proposed");
  list.replaceChildren(...active.map(row));
  proposed.replaceChildren(...waiting.map(row));
  proposedBox.hidden = !waiting.length;
  status.textContent = active.length ? "" : "No memories yet.";
}

/** Read the memories (never rejects: a failure is said in the section). */
export async function load(signal) {
  const mine = generation;
  const controls = [input, form.querySelector("button")];
  for (const el of controls) el.disabled = true; // until the list is in (it would replace an addition)
  try {
    const { memories } = await api("GET", "/api/memories", undefined, { signal });
    if (mine !== generation) return;
    items = memories;
    render();
    for (const el of controls) el.disabled = false;
  } catch (err) {
    if (mine !== generation || err.name === "AbortError" || err.status === 401) return;
    status.textContent = `Your memories could not be loaded. ${sentence(err)}`;
  }
}

/** Forget everything shown (logout or a different user). */
export function reset() {
  generation += 1;
  items = [];
  list.replaceChildren();
  proposed.replaceChildren();
  proposedBox.hidden = true;
  status.textContent = addError.textContent = "";
  form.reset();
}

function replace(memory) {
  items = items.map((m) => (m.id === memory.id ? memory : m));
  render();
}

/** Run a change; a refusal shows under the row. The answer, or undefined when it failed. */
async function change(li, what, call) {
  li.querySelector(".form-error")?.remove();
  const mine = generation;
  try {
    return await call();
  } catch (err) {
    if (mine === generation && err.status !== 401) {
      li.append(h("p", { class: "form-error", role: "alert" }, `The memory was not ${what}. ${sentence(err)}`));
    }
    return undefined;
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  addError.textContent = "";
  input.value = input.value.trim();
  if (!form.reportValidity()) return;
  const mine = generation;
  try {
    const memory = await api("POST", "/api/memories", { content: input.value });
    if (mine !== generation) return;
    items.unshift(memory);
    render();
    form.reset();
    announce("Memory added.");
    input.focus();
  } catch (err) {
    if (mine === generation && err.status !== 401) addError.textContent = `The memory was not added. ${sentence(err)}`;
  }
});

function edit(li, m) {
  const field = h("input", { class: "memory-edit", maxlength: "500", required: true, "aria-label": "Memory" });
  field.value = m.content;
  const save = h("button", { type: "submit", class: "btn small primary" }, "Save");
  const cancel = h("button", { type: "button", class: "btn small" }, "Cancel");
  const editor = h("form", { class: "copy-row" }, field, save, cancel);
  li.replaceChildren(editor);
  field.focus();
  const done = () => { render(); list.querySelector(`[data-id="${m.id}"] [data-act=edit]`)?.focus(); };
  cancel.addEventListener("click", done);
  field.addEventListener("keydown", (event) => {
    if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); done(); }
  });
  editor.addEventListener("submit", async (event) => {
    event.preventDefault();
    field.value = field.value.trim();
    if (!editor.reportValidity()) return;
    if (field.value === m.content) { done(); return; }
    save.disabled = true;
    const memory = await change(li, "saved", () => api("PATCH", `/api/memories/${m.id}`, { content: field.value }));
    save.disabled = false;
    if (!memory) return;
    replace(memory);
    announce("Memory saved.");
    list.querySelector(`[data-id="${m.id}"] [data-act=edit]`)?.focus();
  });
}

async function act(event) {
  const button = event.target.closest("[data-act]");
  if (!button || button.dataset.act === "toggle" && event.type === "click") return;
  const li = button.closest("li");
  const m = items.find((x) => x.id === Number(li.dataset.id));
  if (!m) return;
  const act = button.dataset.act;
  if (act === "edit") { edit(li, m); return; }
  if (act === "toggle") {
    const memory = await change(li, "changed", () => api("PATCH", `/api/memories/${m.id}`, { enabled: button.checked }));
    if (!memory) { button.checked = m.enabled; return; }
    replace(memory);
    list.querySelector(`[data-id="${m.id}"] [data-act=toggle]`)?.focus();
    announce(memory.enabled ? "Memory switched on." : "Memory switched off: kept, but not used.");
    return;
  }
  if (act === "accept") {
    const memory = await change(li, "accepted", () => api("POST", `/api/memories/${m.id}/accept`));
    if (!memory) return;
    replace(memory);
    announce("Memory accepted.");
    (proposed.querySelector("button") ?? list.querySelector(`[data-id="${m.id}"] [data-act=edit]`))?.focus();
    return;
  }
  // delete or reject: both remove it for good
  if (act === "delete" && !(await confirm(`Delete the memory “${m.content}”?`, "Delete"))) return;
  const gone = await change(li, act === "delete" ? "deleted" : "rejected", async () => {
    try { await api("DELETE", `/api/memories/${m.id}`); } catch (err) { if (err.status !== 404) throw err; }
    return true;
  });
  if (!gone) return;
  const ul = li.parentElement;
  const next = (li.nextElementSibling ?? li.previousElementSibling)?.dataset.id;
  items = items.filter((x) => x !== m);
  render();
  announce(act === "delete" ? "Memory deleted." : "Suggestion rejected.");
  (next && ul?.querySelector(`[data-id="${next}"] button`) || input).focus();
}

for (const ul of [list, proposed]) {
  ul.addEventListener("click", act);
  ul.addEventListener("change", act);
}
