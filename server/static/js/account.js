// The account page (#/account), loaded on its first visit: theme, default system prompt,
// memories (js/memories.js), usage, a link to the API keys, the password and deleting the
// account. Every value goes in as text.

import { $, h, announce } from "./dom.js";
import { api } from "./api.js";
import { applyTheme, currentTheme, THEMES } from "./theme.js";
import * as memories from "./memories.js";

// The page's styles come with it (the shared page styles live in keys.css).
await Promise.all(["/static/keys.css", "/static/account.css"].map((href) => new Promise((resolve) => {
  const sheet = h("link", { rel: "stylesheet", href });
  sheet.addEventListener("load", resolve);
  sheet.addEventListener("error", resolve); // unstyled is still usable
  document.head.append(sheet);
})));

const num = new Intl.NumberFormat();
const FIELDS = { current_password: "the current password", new_password: "the new password",
  system_prompt: "the system prompt", password: "the password" };

let me = null; // the signed-in user (from the router)
let hooks = { signedOut: () => {} };
let loading = null; // AbortController of the page's reads in flight
let generation = 0; // bumped on reset so late answers for a previous user are dropped

/** An API error as a plain sentence, with the server's field names in words. */
export function sentence(err) {
  if (!err.status) return "The server could not be reached. Check the connection and try again.";
  const text = err.message.replace(/'(\w+)'/g, (all, f) => FIELDS[f] || all);
  return `${text[0].toUpperCase()}${text.slice(1)}${/[.!?]$/.test(text) ? "" : "."}`;
}

const fact = (term, value) => h("div", null, h("dt", null, term), h("dd", null, value));
const error = () => h("p", { class: "form-error", role: "alert" });
const section = (id, title, ...kids) => h("section", { "aria-labelledby": id },
  h("h2", { id, tabindex: "-1" }, title), ...kids);

// ---- theme

const THEME_WORDS = { system: "Same as the system", light: "Light", dark: "Dark" };
const themeError = error();
const themes = h("fieldset", { class: "choices" }, h("legend", { class: "sr-only" }, "Theme"),
  ...THEMES.map((t) => h("label", null,
    h("input", { type: "radio", name: "theme", value: t, id: `theme-${t}` }), THEME_WORDS[t])));

function showTheme(theme) {
  for (const input of themes.querySelectorAll("input")) input.checked = input.value === theme;
}

themes.addEventListener("change", async (event) => {
  const before = currentTheme();
  const theme = applyTheme(event.target.value); // at once, and remembered on this device
  themeError.textContent = "";
  const mine = generation;
  try {
    await api("PATCH", "/api/account", { settings: { theme } });
    if (mine === generation) announce(`Theme: ${THEME_WORDS[theme].toLowerCase()}.`);
  } catch (err) {
    if (mine !== generation) return;
    applyTheme(before);
    showTheme(before);
    if (err.status !== 401) themeError.textContent = `The theme was not saved. ${sentence(err)}`;
  }
});

// ---- default system prompt

const prompt = h("textarea", { id: "account-prompt", rows: "4", maxlength: "8000", spellcheck: "true",
  "aria-describedby": "account-prompt-hint" });
const promptError = error();
const promptSave = h("button", { type: "submit", class: "btn primary" }, "Save");
const promptClear = h("button", { type: "button", class: "btn" }, "Remove");
const promptForm = h("form", { class: "stack" },
  h("label", { for: "account-prompt", class: "sr-only" }, "Default system prompt"), prompt,
  h("p", { class: "hint", id: "account-prompt-hint" }, "Up to 8,000 characters, sent ahead of every turn "
    + "of a conversation that has no system prompt of its own. Empty: none."),
  promptError, h("div", { class: "row" }, promptSave, promptClear));

async function savePrompt(value) {
  promptError.textContent = "";
  promptSave.disabled = promptClear.disabled = true;
  const mine = generation;
  try {
    const account = await api("PATCH", "/api/account", { settings: { system_prompt: value } });
    if (mine !== generation) return;
    prompt.value = account.settings?.system_prompt ?? "";
    announce(value == null ? "The default system prompt was removed." : "The default system prompt was saved.");
  } catch (err) {
    if (mine === generation && err.status !== 401) promptError.textContent = `The system prompt was not saved. ${sentence(err)}`;
  } finally {
    promptSave.disabled = promptClear.disabled = false;
  }
}

promptForm.addEventListener("submit", (event) => {
  event.preventDefault();
  savePrompt(prompt.value.trim() ? prompt.value : null);
});
promptClear.addEventListener("click", () => { prompt.value = ""; savePrompt(null); });

// ---- usage

const stats = h("dl", { class: "stats" });
const usageStatus = h("p", { class: "status", "aria-live": "polite" });
const dayRows = h("tbody");
const byDay = h("table", { class: "usage-table", hidden: true },
  h("caption", null, "By day (UTC)"),
  h("thead", null, h("tr", null, ...["Day", "Requests", "Prompt tokens", "Completion tokens"]
    .map((t) => h("th", { scope: "col" }, t)))), dayRows);

function renderUsage(usage) {
  const t = usage.totals;
  stats.replaceChildren(fact("Tokens this month", num.format(usage.month_tokens)),
    fact("Requests, last 30 days", num.format(t.requests)),
    fact("Prompt tokens, last 30 days", num.format(t.prompt_tokens)),
    fact("Completion tokens, last 30 days", num.format(t.completion_tokens)));
  const days = new Map(); // day -> [requests, prompt, completion], all keys together
  for (const d of usage.days) {
    const sum = days.get(d.day) ?? [0, 0, 0];
    sum[0] += d.requests;
    sum[1] += d.prompt_tokens;
    sum[2] += d.completion_tokens;
    days.set(d.day, sum);
  }
  const day = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeZone: "UTC" });
  dayRows.replaceChildren(...[...days].sort((a, b) => (a[0] < b[0] ? 1 : -1)).map(([d, n]) =>
    h("tr", null, h("th", { scope: "row" }, h("time", { datetime: d }, day.format(new Date(`${d}T00:00:00Z`)))),
      ...n.map((x) => h("td", null, num.format(x))))));
  byDay.hidden = !days.size;
  usageStatus.textContent = t.requests ? "" : "Nothing used in the last 30 days.";
}

// ---- password

const pwField = (id, label, autocomplete, min) => h("div", { class: "field" }, h("label", { for: id }, label),
  h("input", { id, type: "password", autocomplete, required: true, minlength: min, maxlength: "1024",
    "aria-describedby": min === "8" ? "pw-hint" : null }));
const pwHint = h("p", { class: "hint", id: "pw-hint" }, "8 or more characters; a few unrelated words make a good one. "
  + "Common passwords and ones containing your username are refused. Changing it signs out every other browser.");
const pwError = error();
const pwForm = h("form", { class: "key-form" },
  pwField("pw-current", "Current password", "current-password", "1"),
  pwField("pw-new", "New password", "new-password", "8"),
  pwField("pw-again", "New password again", "new-password", "8"),
  h("button", { type: "submit", class: "btn primary" }, "Change password"));

pwForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  pwError.textContent = "";
  const again = $("pw-again");
  again.setCustomValidity(again.value === $("pw-new").value ? "" : "The two new passwords differ.");
  if (!pwForm.reportValidity()) return;
  const submit = pwForm.querySelector("[type=submit]");
  const mine = generation;
  submit.disabled = true;
  try {
    // The answer carries a new session cookie: this page stays signed in, every other ends.
    await api("POST", "/api/auth/password", { current_password: $("pw-current").value, new_password: $("pw-new").value });
    if (mine !== generation) return;
    pwForm.reset();
    announce("Your password was changed. Every other session is signed out.");
    pwError.textContent = "";
    pwDone.hidden = false;
    pwDone.focus();
  } catch (err) {
    if (mine !== generation || err.status === 401) return;
    pwError.textContent = `The password was not changed. ${sentence(err)}`;
    (err.detail?.field === "new_password" ? $("pw-new") : $("pw-current")).focus();
  } finally {
    submit.disabled = false;
  }
});
pwForm.querySelector("#pw-again").addEventListener("input", (event) => event.target.setCustomValidity(""));
const pwDone = h("p", { class: "note", tabindex: "-1", hidden: true },
  "Password changed. Every other browser and sign-in token is signed out; API keys keep working.");

// ---- delete the account

const delName = h("input", { id: "del-name", autocomplete: "off", autocapitalize: "none", spellcheck: "false", required: true });
const delPassword = h("input", { id: "del-password", type: "password", autocomplete: "current-password", required: true, maxlength: "1024" });
const delError = error();
const delGo = h("button", { type: "submit", class: "btn danger", disabled: true }, "Delete my account");
const delCancel = h("button", { type: "button", class: "btn" }, "Cancel");
const delWho = h("strong");
const delForm = h("form", { class: "stack" },
  h("h2", { id: "del-title" }, "Delete your account?"),
  h("p", null, "Your conversations, memories, API keys and usage are deleted with it, at once and for good. "
    + "Running replies stop. This cannot be undone."),
  h("label", { for: "del-name" }, "Type your username, ", delWho, ", to confirm"), delName,
  h("label", { for: "del-password" }, "Password"), delPassword, delError,
  h("div", { class: "row" }, delCancel, delGo));
const delDialog = h("dialog", { class: "settings", id: "delete-account", "aria-labelledby": "del-title" }, delForm);
document.body.append(delDialog);
const delOpen = h("button", { type: "button", class: "btn danger-outline", "aria-haspopup": "dialog" }, "Delete my account…");

delOpen.addEventListener("click", () => {
  delForm.reset();
  delError.textContent = "";
  delGo.disabled = true;
  delWho.textContent = me.username;
  delDialog.showModal();
  delName.focus();
});
delName.addEventListener("input", () => { delGo.disabled = delName.value.trim() !== me.username; });
delCancel.addEventListener("click", () => delDialog.close());
delDialog.addEventListener("keydown", (event) => { // Esc closes this dialog only
  if (event.key === "Escape") { event.preventDefault(); delDialog.close(); }
});
delDialog.addEventListener("close", () => { delForm.reset(); if (!page.hidden) delOpen.focus(); });

delForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (delName.value.trim() !== me.username || !delForm.reportValidity()) return;
  delError.textContent = "";
  delGo.disabled = true;
  try {
    await api("DELETE", "/api/auth/account", { password: delPassword.value }, { quiet: true });
    delDialog.close();
    hooks.signedOut("Your account was deleted.");
  } catch (err) {
    delGo.disabled = false;
    if (err.status === 401) { delDialog.close(); hooks.signedOut("Your session ended."); return; }
    delError.textContent = `The account was not deleted. ${sentence(err)}`;
    delPassword.focus();
  }
});

// ---- the page, built once

const title = h("h1", { class: "title", id: "account-title", tabindex: "-1" }, "Account");
const back = h("a", { class: "btn ghost small", href: "#/" }, h("span", { "aria-hidden": "true" }, "←"), "Back to chat");
const signedAs = h("p", { class: "hint" });
const page = h("main", { class: "page", id: "account-page", "aria-labelledby": "account-title", hidden: true },
  h("header", { class: "chat-head" }, back, title),
  h("div", { class: "scroller" }, h("div", { class: "page-body" }, signedAs,
    section("theme-title", "Theme", themes, themeError),
    section("prompt-title", "Default system prompt", promptForm),
    memories.section,
    section("account-usage-title", "Usage", usageStatus, stats, byDay),
    section("account-keys-title", "API keys",
      h("p", { class: "hint" }, "Programs use API keys with the OpenAI-compatible API at ",
        h("code", null, `${location.origin}/v1`), ". Changing the password does not revoke them."),
      h("a", { class: "btn", href: "#/keys" }, "Manage API keys and their usage")),
    section("password-title", "Password", pwHint, pwForm, pwError, pwDone),
    section("delete-title", "Delete the account",
      h("p", { class: "hint" }, "Everything of the account goes with it."), delOpen))));
$("chat").after(page);

/** The theme and prompt controls are usable once the account's values are in. */
function settingsReady(on) {
  for (const el of [...themes.querySelectorAll("input"), prompt, promptSave, promptClear]) el.disabled = !on;
}

async function load() {
  loading?.abort();
  const controller = (loading = new AbortController());
  const { signal } = controller;
  const get = (path) => api("GET", path, undefined, { signal }).then((value) => ({ value }), (err) => ({ err }));
  usageStatus.textContent = "Loading…";
  settingsReady(false); // nothing typed or picked may be overwritten by the answer
  const [account, usage] = await Promise.all([get("/api/account"), get("/api/usage"), memories.load(signal)]);
  if (controller !== loading) return;
  loading = null;
  const failed = (err, what) => (err.status === 401 || err.name === "AbortError" ? "" : `${what} ${sentence(err)}`);
  if (account.value) {
    const s = account.value.settings ?? {};
    showTheme(applyTheme(s.theme));
    prompt.value = s.system_prompt ?? "";
    settingsReady(true);
  } else {
    themeError.textContent = failed(account.err, "Your settings could not be loaded.");
  }
  if (usage.value) renderUsage(usage.value);
  else usageStatus.textContent = failed(usage.err, "Usage could not be loaded.");
}

// ---- shown and hidden by the router (js/app.js)

/** Show the page; `backTo` is the chat view "Back to chat" returns to. */
export function show(backTo, user, routerHooks) {
  me = user;
  hooks = routerHooks ?? hooks;
  back.href = backTo;
  signedAs.textContent = `Signed in as ${user.username}.`;
  showTheme(currentTheme());
  page.hidden = false;
  document.title = "Account · chatgate";
  title.focus();
  load();
}

/** Leave the page. */
export function hide() {
  if (page.hidden) return;
  const focused = page.contains(document.activeElement);
  page.hidden = true;
  loading?.abort();
  loading = null;
  if (delDialog.open) delDialog.close();
  pwForm.reset();
  pwDone.hidden = true;
  for (const e of [pwError, themeError, promptError]) e.textContent = "";
  document.title = `${$("title").textContent} · chatgate`;
  if (focused) $("input").focus();
}

/** Forget everything shown (logout or a different user). */
export function reset() {
  generation += 1;
  hide();
  me = null;
  prompt.value = "";
  stats.replaceChildren();
  dayRows.replaceChildren();
  byDay.hidden = true;
  usageStatus.textContent = "";
  memories.reset();
}
