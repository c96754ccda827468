// The API keys page (#/keys), loaded on its first visit: the caller's usage, a form that makes
// a key and shows it once, and the list of keys with Revoke. Every value goes in as text.

import { $, h, icon, announce, copyWith } from "./dom.js";
import { api } from "./api.js";
import { confirm } from "./sidebar.js";

// The page's styles come with it, not with the first load; the import finishes once they are in.
const sheet = h("link", { rel: "stylesheet", href: "/static/keys.css" });
await new Promise((resolve) => {
  sheet.addEventListener("load", resolve);
  sheet.addEventListener("error", resolve); // unstyled is still usable
  document.head.append(sheet);
});

const num = new Intl.NumberFormat();
const FIELDS = { name: "the name", rpm: "the requests-per-minute limit",
  tpm: "the tokens-per-minute limit", expires_at: "the expiry date" };

let keys = []; // the caller's keys, newest first, without secrets
let usage = null; // the last answer of GET /api/usage
let loading = null; // AbortController of the page's requests in flight
let generation = 0; // bumped on reset so late answers for a previous user are dropped

/** An API error as a plain sentence, with the server's field names in words. */
function sentence(err) {
  if (!err.status) return "The server could not be reached. Check the connection and try again.";
  const text = err.message.replace(/'(\w+)'/g, (all, f) => FIELDS[f] || all);
  return `${text[0].toUpperCase()}${text.slice(1)}${/[.!?]$/.test(text) ? "" : "."}`;
}

const fact = (term, value) => h("div", null, h("dt", null, term), h("dd", null, value));
const field = (id, label, attrs) => h("div", { class: "field" },
  h("label", { for: id }, label), h("input", { id, name: id, ...attrs }));

function when(value, time = false) {
  const d = new Date(value);
  return h("time", { datetime: d.toISOString() },
    d.toLocaleString(undefined, time ? { dateStyle: "medium", timeStyle: "short" } : { dateStyle: "medium" }));
}

function localDay(d = new Date()) {
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

// ---- the page, built once

const title = h("h1", { class: "title", id: "keys-title", tabindex: "-1" }, "API keys");
const back = h("a", { class: "btn ghost small", href: "#/" }, h("span", { "aria-hidden": "true" }, "←"), "Back to chat");
const stats = h("dl", { class: "stats" });
const usageStatus = h("p", { class: "status", "aria-live": "polite" });
const usageRows = h("tbody");
const byKey = h("table", { class: "usage-table", hidden: true },
  h("caption", null, "Last 30 days by key"),
  h("thead", null, h("tr", null, ...["Used by", "Requests", "Prompt tokens", "Completion tokens"]
    .map((t) => h("th", { scope: "col" }, t)))), usageRows);

const form = h("form", { class: "key-form", id: "key-form" },
  field("key-name", "Name", { required: true, maxlength: "100", autocomplete: "off", placeholder: "e.g. laptop script" }),
  field("key-rpm", "Requests per minute (optional)", { type: "number", min: "1", max: "1000000", step: "1", inputmode: "numeric" }),
  field("key-tpm", "Tokens per minute (optional)", { type: "number", min: "1", max: "1000000000", step: "1", inputmode: "numeric" }),
  field("key-expires", "Expires on (optional)", { type: "date" }),
  h("button", { type: "submit", class: "btn primary" }, "Create key"));
const formError = h("p", { class: "form-error", role: "alert" });

const secretName = h("span");
const secretField = h("input", { id: "new-key", class: "mono", readonly: true, autocomplete: "off", spellcheck: "false" });
const example = h("pre", { class: "mono", id: "key-example" });
const copyKey = h("button", { type: "button", class: "btn", "aria-label": "Copy key" }, icon("copy"), h("span", { class: "lbl" }, "Copy"));
const copyExample = h("button", { type: "button", class: "btn small", "aria-label": "Copy the settings" }, icon("copy"), h("span", { class: "lbl" }, "Copy settings"));
const done = h("button", { type: "button", class: "btn small" }, "Done, I have copied it");
const secret = h("section", { class: "secret", "aria-labelledby": "secret-title", hidden: true },
  h("h3", { id: "secret-title" }, "New key: ", secretName),
  h("p", null, h("strong", null, "Copy it now. You will not see it again: "),
    "the server keeps only a hash of it. If it is lost, revoke it and create another."),
  h("label", { for: "new-key" }, "Your new API key"),
  h("div", { class: "copy-row" }, secretField, copyKey),
  h("p", null, "For OpenAI clients and SDKs, set:"), example,
  h("div", { class: "row" }, copyExample, done));

const listTitle = h("h2", { id: "keys-list-title", tabindex: "-1" }, "Your keys");
const list = h("ul", { class: "key-list", id: "key-list", "aria-labelledby": "keys-list-title" });
const listStatus = h("p", { class: "status", "aria-live": "polite" });

const page = h("main", { class: "page", id: "keys-page", "aria-labelledby": "keys-title", hidden: true },
  h("header", { class: "chat-head" }, back, title),
  h("div", { class: "scroller" }, h("div", { class: "page-body" },
    h("section", { "aria-labelledby": "usage-title" },
      h("h2", { id: "usage-title" }, "Usage"), usageStatus, stats, byKey),
    h("section", { "aria-labelledby": "new-key-title" },
      h("h2", { id: "new-key-title" }, "Create a key"),
      h("p", { class: "hint" }, "Programs use a key with the OpenAI-compatible API at ",
        h("code", null, `${location.origin}/v1`), "."),
      form, formError, secret),
    h("section", { "aria-labelledby": "keys-list-title" }, listTitle, listStatus, list))));
$("chat").after(page);

// ---- rendering

function keyRow(k) {
  const expired = k.expires_at != null && k.expires_at * 1000 <= Date.now();
  const limits = [k.rpm && `${num.format(k.rpm)} requests/min`, k.tpm && `${num.format(k.tpm)} tokens/min`]
    .filter(Boolean).join(", ") || "None";
  return h("li", { class: "key", "data-id": k.id },
    h("div", { class: "key-head" }, h("h3", null, k.name), h("code", null, `cg-${k.prefix}…`),
      expired && h("span", { class: "badge error" }, "Expired")),
    h("dl", null,
      fact("Created", when(k.created_at)),
      fact("Last used", k.last_used_at ? when(k.last_used_at, true) : "Never"),
      fact("Limits", limits),
      fact("Expires", k.expires_at == null ? "Never" : when(k.expires_at * 1000))),
    h("button", { type: "button", class: "btn small", "data-act": "revoke", "aria-label": `Revoke “${k.name}”` }, "Revoke"));
}

function renderList() {
  list.replaceChildren(...keys.map(keyRow));
  listStatus.textContent = keys.length ? "" : "No keys yet.";
}

function renderUsage() {
  if (!usage) return;
  const t = usage.totals;
  stats.replaceChildren(fact("Tokens this month", num.format(usage.month_tokens)),
    fact("Requests, last 30 days", num.format(t.requests)),
    fact("Prompt tokens, last 30 days", num.format(t.prompt_tokens)),
    fact("Completion tokens, last 30 days", num.format(t.completion_tokens)));
  const by = new Map(); // who -> [name, requests, prompt, completion]
  for (const d of usage.days) {
    const k = keys.find((x) => x.id === d.key_id);
    const who = d.key_id === 0 ? 0 : k ? k.id : "gone";
    if (!by.has(who)) {
      by.set(who, [d.key_id === 0 ? "This app and sign-in tokens" : k ? `${k.name} (cg-${k.prefix}…)` : "Revoked keys", 0, 0, 0]);
    }
    const sum = by.get(who);
    sum[1] += d.requests;
    sum[2] += d.prompt_tokens;
    sum[3] += d.completion_tokens;
  }
  usageRows.replaceChildren(...[...by.values()].map(([name, ...n]) =>
    h("tr", null, h("th", { scope: "row" }, name), ...n.map((x) => h("td", null, num.format(x))))));
  byKey.hidden = !by.size;
  usageStatus.textContent = usage.totals.requests ? "" : "Nothing used in the last 30 days.";
}

function forgetSecret() {
  secret.hidden = true;
  secretField.value = "";
  secretName.textContent = "";
  example.textContent = "";
  delete secret.dataset.id;
}

function reveal(row, key) {
  secretName.textContent = row.name;
  secretField.value = key;
  example.textContent = `OPENAI_BASE_URL=${location.origin}/v1\nOPENAI_API_KEY=${key}`;
  secret.dataset.id = row.id;
  secret.hidden = false;
  secretField.focus();
  secretField.select();
  announce("Key created. Copy it now: you will not see it again.");
}

async function load() {
  loading?.abort();
  const controller = (loading = new AbortController());
  const { signal } = controller;
  if (!keys.length) listStatus.textContent = "Loading…";
  const get = (path) => api("GET", path, undefined, { signal }).then((value) => ({ value }), (error) => ({ error }));
  // One after the other: reading usage writes out when keys were last used, and the list
  // asked at the same time could miss that write.
  const u = await get("/api/usage");
  const k = await get("/api/keys");
  if (controller !== loading) return;
  loading = null;
  const failed = (err, what) => (err.status === 401 ? "" : `${what} ${sentence(err)}`);
  if (k.value) { keys = k.value.keys; renderList(); }
  else listStatus.textContent = failed(k.error, "Your keys could not be loaded.");
  if (u.value) { usage = u.value; renderUsage(); }
  else usageStatus.textContent = failed(u.error, "Usage could not be loaded.");
}

// ---- actions

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  formError.textContent = "";
  const name = $("key-name");
  name.value = name.value.trim();
  if (!form.reportValidity()) return;
  const body = { name: name.value };
  for (const f of ["rpm", "tpm"]) if ($(`key-${f}`).value) body[f] = Number($(`key-${f}`).value);
  const day = $("key-expires").value; // valid to the end of that day, local time
  if (day) body.expires_at = Math.floor(new Date(`${day}T23:59:59`).getTime() / 1000);
  const submit = form.querySelector("[type=submit]");
  const mine = generation;
  submit.disabled = true;
  try {
    const { key, ...row } = await api("POST", "/api/keys", body);
    if (mine !== generation) return;
    keys.unshift(row);
    renderList();
    form.reset();
    reveal(row, key);
  } catch (err) {
    if (mine === generation && err.status !== 401) formError.textContent = `The key was not created. ${sentence(err)}`;
  } finally {
    submit.disabled = false;
  }
});

copyKey.addEventListener("click", () => copyWith(copyKey, secretField.value));
copyExample.addEventListener("click", () => copyWith(copyExample, example.textContent));
done.addEventListener("click", () => { forgetSecret(); $("key-name").focus(); });

list.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-act=revoke]");
  if (!button) return;
  const li = button.closest("li");
  const k = keys.find((x) => x.id === Number(li.dataset.id));
  if (!(await confirm(`Revoke “${k.name}”? Programs using it are refused from now on. This cannot be undone.`, "Revoke"))) return;
  li.querySelector(".form-error")?.remove();
  button.disabled = true;
  try {
    await api("DELETE", `/api/keys/${k.id}`);
  } catch (err) {
    if (err.status !== 404) { // 404: already gone, so the row goes too
      button.disabled = false;
      if (err.status !== 401) li.append(h("p", { class: "form-error", role: "alert" }, `“${k.name}” was not revoked. ${sentence(err)}`));
      return;
    }
  }
  const next = li.nextElementSibling || li.previousElementSibling;
  li.remove();
  keys = keys.filter((x) => x !== k);
  if (secret.dataset.id === String(k.id)) forgetSecret();
  if (!keys.length) listStatus.textContent = "No keys yet.";
  renderUsage();
  announce(`“${k.name}” was revoked.`);
  (next ? next.querySelector("button") : listTitle).focus();
});

// ---- shown and hidden by the router (js/app.js)

/** Show the page; `backTo` is the chat view "Back to chat" returns to. */
export function show(backTo) {
  back.href = backTo;
  page.hidden = false;
  document.title = "API keys · chatgate";
  $("key-expires").min = localDay();
  title.focus();
  load();
}

/** Leave the page: the new key, if one is shown, is gone for good. */
export function hide() {
  if (page.hidden) return;
  const focused = page.contains(document.activeElement);
  page.hidden = true;
  loading?.abort();
  loading = null;
  forgetSecret();
  formError.textContent = "";
  document.title = `${$("title").textContent} · chatgate`;
  if (focused) $("input").focus();
}

/** Forget everything shown (logout or a different user). */
export function reset() {
  generation += 1;
  hide();
  keys = [];
  usage = null;
  list.replaceChildren();
  stats.replaceChildren();
  usageRows.replaceChildren();
  byKey.hidden = true;
  usageStatus.textContent = "";
  listStatus.textContent = "";
  form.reset();
}
