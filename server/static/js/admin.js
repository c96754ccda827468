// The admin page (#/admin), loaded on its first visit and only for admins: the users with their
// usage, and per user Approve, Disable/Enable, Reset password (shown once), Budget and Delete;
// a form that creates an account; the audit log. Every value goes in as text.

import { $, h, icon, announce, copyWith } from "./dom.js";
import { api } from "./api.js";
import { confirm } from "./sidebar.js";

// The page's styles come with it (the shared page styles live in keys.css).
await Promise.all(["/static/keys.css", "/static/admin.css"].map((href) => new Promise((resolve) => {
  const sheet = h("link", { rel: "stylesheet", href });
  sheet.addEventListener("load", resolve);
  sheet.addEventListener("error", resolve); // unstyled is still usable
  document.head.append(sheet);
})));

const num = new Intl.NumberFormat();
const ACTIONS = { "user.create": "created", "user.approve": "approved", "user.disable": "disabled",
  "user.enable": "enabled", "user.delete": "deleted", "user.limits": "changed the caps of",
  "user.reset_password": "reset the password of", "user.promote": "made admin" };

let users = []; // the users shown so far, by id
let usersNext = null; // cursor of the next page of users
let auditNext = null;
let generation = 0; // bumped on reset so late answers for a previous user are dropped
let me = null; // the signed-in admin's id: their own row offers no disable, reset or delete

function sentence(err) {
  if (!err.status) return "The server could not be reached. Check the connection and try again.";
  const text = err.message;
  return `${text[0].toUpperCase()}${text.slice(1)}${/[.!?]$/.test(text) ? "" : "."}`;
}

const fact = (term, value) => h("div", null, h("dt", null, term), h("dd", null, value));

function when(value) {
  if (!value) return "Never";
  const d = new Date(value.length === 10 ? `${value}T00:00:00Z` : value);
  return h("time", { datetime: d.toISOString() },
    d.toLocaleString(undefined, value.length === 10 ? { dateStyle: "medium" } : { dateStyle: "medium", timeStyle: "short" }));
}

// ---- the page, built once

const title = h("h1", { class: "title", id: "admin-title", tabindex: "-1" }, "Administration");
const back = h("a", { class: "btn ghost small", href: "#/" }, h("span", { "aria-hidden": "true" }, "←"), "Back to chat");

const createForm = h("form", { class: "key-form", id: "admin-create" },
  h("div", { class: "field" }, h("label", { for: "admin-new-name" }, "Username"),
    h("input", { id: "admin-new-name", required: true, minlength: "3", maxlength: "64", pattern: "[A-Za-z0-9_.\\-]+", autocomplete: "off", spellcheck: "false" })),
  h("div", { class: "field" }, h("label", { for: "admin-new-role" }, "Role"),
    h("select", { id: "admin-new-role" }, h("option", { value: "user" }, "User"), h("option", { value: "admin" }, "Administrator"))),
  h("button", { type: "submit", class: "btn primary" }, "Create user"));
const createError = h("p", { class: "form-error", role: "alert" });

const secretWho = h("span");
const secretField = h("input", { id: "admin-secret", class: "mono", readonly: true, autocomplete: "off", spellcheck: "false" });
const copySecret = h("button", { type: "button", class: "btn", "aria-label": "Copy password" }, icon("copy"), h("span", { class: "lbl" }, "Copy"));
const doneSecret = h("button", { type: "button", class: "btn small" }, "Done, I have passed it on");
const secret = h("section", { class: "secret", "aria-labelledby": "admin-secret-title", hidden: true },
  h("h3", { id: "admin-secret-title" }, "Temporary password for ", secretWho),
  h("p", null, h("strong", null, "Copy it now. You will not see it again. "),
    "Hand it over privately; the user must choose a new password when they next log in."),
  h("label", { for: "admin-secret" }, "Temporary password"),
  h("div", { class: "copy-row" }, secretField, copySecret),
  h("div", { class: "row" }, doneSecret));

const listTitle = h("h2", { id: "admin-users-title", tabindex: "-1" }, "Users");
const list = h("ul", { class: "key-list", id: "admin-users", "aria-labelledby": "admin-users-title" });
const listStatus = h("p", { class: "status", "aria-live": "polite" });
const moreUsers = h("button", { type: "button", class: "btn small", hidden: true }, "Show more users");

const auditList = h("ol", { class: "audit", id: "admin-audit", "aria-labelledby": "admin-audit-title" });
const auditStatus = h("p", { class: "status", "aria-live": "polite" });
const moreAudit = h("button", { type: "button", class: "btn small", hidden: true }, "Show older entries");

const page = h("main", { class: "page", id: "admin-page", "aria-labelledby": "admin-title", hidden: true },
  h("header", { class: "chat-head" }, back, title),
  h("div", { class: "scroller" }, h("div", { class: "page-body" },
    h("section", { "aria-labelledby": "admin-create-title" },
      h("h2", { id: "admin-create-title" }, "Create a user"),
      h("p", { class: "hint" }, "A password is generated and shown once; the user changes it at first login."),
      createForm, createError, secret),
    h("section", { "aria-labelledby": "admin-users-title" }, listTitle, listStatus, list, moreUsers),
    h("section", { "aria-labelledby": "admin-audit-title" },
      h("h2", { id: "admin-audit-title" }, "Audit log"), auditStatus, auditList, moreAudit))));
$("chat").after(page);

// ---- rendering

function userRow(u) {
  const budget = u.limits && u.limits.monthly_tokens_per_user;
  const act = (name, label, aria) => h("button", { type: "button", class: "btn small", "data-act": name, "aria-label": `${aria} ${u.username}` }, label);
  return h("li", { class: "key", "data-id": u.id },
    h("div", { class: "key-head" }, h("h3", null, u.username),
      u.role === "admin" && h("span", { class: "badge" }, "Administrator"),
      u.status !== "active" && h("span", { class: `badge ${u.status === "disabled" ? "error" : "incomplete"}` }, u.status === "disabled" ? "Disabled" : "Waiting for approval"),
      u.must_change_password && h("span", { class: "badge" }, "Must change password")),
    h("dl", null,
      fact("Tokens this month", num.format(u.month_tokens)),
      fact("Requests this month", num.format(u.month_requests)),
      fact("Last active", when(u.last_active_at)),
      fact("Monthly budget", budget == null ? "Default" : budget === 0 ? "No budget" : `${num.format(budget)} tokens`),
      fact("Created", when(u.created_at))),
    h("div", { class: "row actions" },
      u.status === "pending" && act("approve", "Approve", "Approve"),
      u.id !== me && (u.status === "disabled" ? act("enable", "Enable", "Enable") : act("disable", "Disable", "Disable")),
      u.id !== me && act("password", "Reset password", "Reset the password of"),
      act("budget", "Budget", "Set the budget of"),
      u.id !== me && act("delete", "Delete", "Delete")));
}

function renderUsers() {
  list.replaceChildren(...users.map(userRow));
  listStatus.textContent = users.length ? "" : "No users.";
  moreUsers.hidden = usersNext == null;
}

function auditRow(e) {
  const detail = Object.keys(e.detail || {}).length ? JSON.stringify(e.detail) : "";
  return h("li", null, when(e.at), " ", h("strong", null, e.actor), ` ${ACTIONS[e.action] || e.action} `,
    h("strong", null, e.target || ""), detail && h("span", { class: "hint" }, ` ${detail}`));
}

async function loadUsers(more = false) {
  const mine = generation;
  if (!more) listStatus.textContent = "Loading…";
  try {
    const q = more && usersNext ? `?cursor=${encodeURIComponent(usersNext)}` : "";
    const body = await api("GET", `/api/admin/users${q}`);
    if (mine !== generation) return;
    users = more ? users.concat(body.users) : body.users;
    usersNext = body.next_cursor;
    renderUsers();
  } catch (err) {
    if (mine === generation && err.status !== 401) listStatus.textContent = `The users could not be loaded. ${sentence(err)}`;
  }
}

async function loadAudit(more = false) {
  const mine = generation;
  try {
    const q = more && auditNext ? `?cursor=${encodeURIComponent(auditNext)}` : "";
    const body = await api("GET", `/api/admin/audit${q}`);
    if (mine !== generation) return;
    const rows = body.entries.map(auditRow);
    if (more) auditList.append(...rows);
    else auditList.replaceChildren(...rows);
    auditNext = body.next_cursor;
    moreAudit.hidden = auditNext == null;
    auditStatus.textContent = auditList.children.length ? "" : "Nothing yet.";
  } catch (err) {
    if (mine === generation && err.status !== 401) auditStatus.textContent = `The audit log could not be loaded. ${sentence(err)}`;
  }
}

function showSecret(name, password) {
  secretWho.textContent = name;
  secretField.value = password;
  secret.hidden = false;
  secretField.focus();
  secretField.select();
  announce(`Temporary password for ${name} shown. Copy it now: you will not see it again.`);
}

function forgetSecret() {
  secret.hidden = true;
  secretField.value = "";
  secretWho.textContent = "";
}

function replaceUser(u) {
  users = users.map((x) => (x.id === u.id ? { ...x, ...u } : x));
  renderUsers();
  list.querySelector(`li[data-id="${u.id}"] [data-act]`)?.focus();
}

// ---- actions

createForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  createError.textContent = "";
  const name = $("admin-new-name");
  name.value = name.value.trim();
  if (!createForm.reportValidity()) return;
  const submit = createForm.querySelector("[type=submit]");
  submit.disabled = true;
  try {
    const body = await api("POST", "/api/admin/users", { username: name.value, role: $("admin-new-role").value });
    createForm.reset();
    users.push({ month_tokens: 0, month_requests: 0, last_active_at: null, ...body.user });
    renderUsers();
    showSecret(body.user.username, body.password);
    loadAudit();
  } catch (err) {
    if (err.status !== 401) createError.textContent = `The user was not created. ${sentence(err)}`;
  } finally {
    submit.disabled = false;
  }
});

async function budget(li, u) {
  li.querySelector(".budget-form")?.remove();
  const input = h("input", { type: "number", min: "0", step: "1", inputmode: "numeric", id: `budget-${u.id}`, placeholder: "default" });
  const current = u.limits && u.limits.monthly_tokens_per_user;
  if (current != null) input.value = String(current);
  const formEl = h("form", { class: "budget-form row" },
    h("label", { for: `budget-${u.id}` }, `Monthly token budget for ${u.username} (empty: the default; 0: none)`),
    input, h("button", { type: "submit", class: "btn small primary" }, "Save budget"),
    h("button", { type: "button", class: "btn small", "data-cancel": "" }, "Cancel"));
  li.append(formEl);
  input.focus();
  formEl.querySelector("[data-cancel]").addEventListener("click", () => { formEl.remove(); li.querySelector("[data-act=budget]").focus(); });
  formEl.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!formEl.reportValidity()) return;
    const limits = { ...(u.limits || {}) };
    if (input.value === "") delete limits.monthly_tokens_per_user;
    else limits.monthly_tokens_per_user = Number(input.value);
    try {
      const body = await api("PUT", `/api/admin/users/${u.id}/limits`, { limits });
      replaceUser(body.user);
      announce(`The budget of ${u.username} was saved.`);
      loadAudit();
    } catch (err) {
      if (err.status !== 401) formEl.append(h("p", { class: "form-error", role: "alert" }, `Not saved. ${sentence(err)}`));
    }
  });
}

list.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-act]");
  if (!button) return;
  const li = button.closest("li");
  const u = users.find((x) => x.id === Number(li.dataset.id));
  const action = button.dataset.act;
  if (action === "budget") { budget(li, u); return; }
  if (action === "delete" && !(await confirm(`Delete ${u.username} and all their conversations, keys and usage? This cannot be undone.`, "Delete"))) return;
  if (action === "disable" && !(await confirm(`Disable ${u.username}? They are signed out everywhere, their API keys are deleted and their running replies stop.`, "Disable"))) return;
  if (action === "password" && !(await confirm(`Reset the password of ${u.username}? They are signed out everywhere.`, "Reset password"))) return;
  li.querySelector(".form-error")?.remove();
  button.disabled = true;
  try {
    if (action === "delete") {
      await api("DELETE", `/api/admin/users/${u.id}`);
      users = users.filter((x) => x !== u);
      renderUsers();
      announce(`${u.username} was deleted.`);
      listTitle.focus();
    } else if (action === "password") {
      const body = await api("POST", `/api/admin/users/${u.id}/password`);
      replaceUser(body.user);
      showSecret(u.username, body.password);
    } else {
      const body = await api("POST", `/api/admin/users/${u.id}/${action}`);
      replaceUser(body.user);
      announce(`${u.username}: ${action === "approve" ? "approved" : `${action}d`}.`);
    }
    loadAudit();
  } catch (err) {
    button.disabled = false;
    if (err.status !== 401) li.append(h("p", { class: "form-error", role: "alert" }, `Not done. ${sentence(err)}`));
  }
});

copySecret.addEventListener("click", () => copyWith(copySecret, secretField.value));
doneSecret.addEventListener("click", () => { forgetSecret(); listTitle.focus(); });
moreUsers.addEventListener("click", () => loadUsers(true));
moreAudit.addEventListener("click", () => loadAudit(true));

// ---- shown and hidden by the router (js/app.js)

/** Show the page to the signed-in admin `who`; `backTo` is the view "Back to chat" returns to. */
export function show(backTo, who) {
  me = who.id;
  back.href = backTo;
  page.hidden = false;
  document.title = "Administration · chatgate";
  title.focus();
  loadUsers();
  loadAudit();
}

/** Leave the page: a temporary password, if one is shown, is gone for good. */
export function hide() {
  if (page.hidden) return;
  const focused = page.contains(document.activeElement);
  page.hidden = true;
  forgetSecret();
  createError.textContent = "";
  document.title = `${$("title").textContent} · chatgate`;
  if (focused) $("input").focus();
}

/** Forget everything shown (logout or a different user). */
export function reset() {
  generation += 1;
  hide();
  users = [];
  usersNext = auditNext = null;
  list.replaceChildren();
  auditList.replaceChildren();
  listStatus.textContent = auditStatus.textContent = "";
  createForm.reset();
}
