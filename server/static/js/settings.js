// The conversation's own settings (system prompt, temperature, max tokens), loaded after sign-in:
// a button in the chat header opens a <dialog> that shows them (GET /api/conversations/{id})
// and saves them (PATCH .../{id} with {settings}), with a preview of the prompt the next turn sends
// (GET .../{id}/prompt). A new chat has no conversation yet: the page holds what is saved for it
// and its first turn sends them (POST /api/chat's `settings`), so the conversation is made with
// them; its preview is POST /api/prompt with them.

import { $, h, icon, announce } from "./dom.js";
import { api } from "./api.js";
import * as chat from "./chat.js";
import { useFirstSettings } from "./turns.js";

// The panel's styles come with it, not with the first load.
const sheet = h("link", { rel: "stylesheet", href: "/static/settings.css" });
await new Promise((resolve) => {
  sheet.addEventListener("load", resolve);
  sheet.addEventListener("error", resolve); // unstyled is still usable
  document.head.append(sheet);
});

const open = h("button", { type: "button", class: "icon-btn conv-settings", id: "conv-settings",
  "aria-haspopup": "dialog", "aria-label": "Conversation settings", title: "Conversation settings" },
icon("sliders"));
$("title").after(open);

/** One setting: its input, and a "use the default" checkbox that clears it to null. */
function field(key, label, input, note) {
  input.id = `set-${key}`;
  const hint = h("span", { class: "hint", id: `set-${key}-hint` }, note);
  input.setAttribute("aria-describedby", hint.id);
  const dflt = h("input", { type: "checkbox", id: `set-${key}-default` });
  const row = h("div", { class: "set-field" },
    h("label", { for: input.id }, label), input, hint,
    h("label", { class: "set-default" }, dflt, `Use the default ${label.toLowerCase()}`));
  dflt.addEventListener("change", () => {
    input.disabled = dflt.checked;
    input.required = !dflt.checked && input.type === "number";
    if (!dflt.checked) input.focus();
  });
  return { key, input, dflt, row };
}

const fields = [
  field("system_prompt", "System prompt",
    h("textarea", { rows: "5", maxlength: "8000", spellcheck: "true" }),
    "Up to 8,000 characters, sent ahead of every turn. Empty: no system prompt at all."),
  field("temperature", "Temperature",
    h("input", { type: "number", min: "0", max: "2", step: "0.01", inputmode: "decimal", placeholder: "Default" }),
    "From 0 (focused) to 2 (varied)."),
  field("max_tokens", "Max tokens",
    h("input", { type: "number", min: "1", max: "32768", step: "1", inputmode: "numeric", placeholder: "Default" }),
    "The longest a reply may be, from 1 to 32,768 tokens."),
];
const status = h("p", { class: "form-error", id: "set-error", role: "alert" });
const previewBody = h("div", { class: "preview-body", "aria-live": "polite" });
const preview = h("details", { class: "preview" },
  h("summary", null, "What the model will see"), previewBody);
const save = h("button", { type: "submit", class: "btn primary" }, "Save");
const cancel = h("button", { type: "button", class: "btn" }, "Cancel");
const intro = h("p", { class: "hint" });
const form = h("form", { class: "set-form" },
  h("h2", { id: "set-title" }, "Conversation settings"), intro,
  ...fields.map((f) => f.row), preview, status, h("div", { class: "row" }, cancel, save));
const dialog = h("dialog", { class: "settings", id: "settings", "aria-labelledby": "set-title" }, form);
document.body.append(dialog);

let conv = null; // the conversation the open panel shows (null: the new chat on screen)
let busy = null; // AbortController of the load or save under way

// The settings saved for the new chat before its first message (only those not on their
// default; null: none). Held by this page only, never stored in the browser: the first turn
// sends them, and once its conversation exists (made with them) they are its own.
let held = null;
useFirstSettings({ held: () => held, taken: (s) => { if (held === s) held = null; } });
// ...and they are the signed-in user's: another user, or none (logout), starts without them.
const who = $("who");
let owner = who.textContent;
new MutationObserver(() => {
  if (who.textContent !== owner) { owner = who.textContent; held = null; }
}).observe(who, { childList: true, characterData: true, subtree: true });

function fill(settings) {
  for (const f of fields) {
    const v = settings[f.key];
    f.dflt.checked = v == null;
    f.input.value = v == null ? "" : String(v);
    f.input.disabled = v == null;
    f.input.required = v != null && f.input.type === "number";
  }
}

function busyWith(on) {
  for (const f of fields) f.dflt.disabled = on;
  save.disabled = on;
  dialog.setAttribute("aria-busy", String(on));
}

function close() {
  busy?.abort();
  busy = null;
  if (dialog.open) dialog.close();
  open.focus();
}

function focusFirst() {
  (fields.find((f) => !f.dflt.checked)?.input ?? fields[0].dflt).focus();
}

open.addEventListener("click", async () => {
  conv = chat.current();
  status.textContent = "";
  preview.open = false;
  previewBody.replaceChildren();
  intro.textContent = conv == null
    ? "Set before the first message, these apply to every turn of this new chat. "
      + "A setting left on its default follows the model's."
    : "These apply to every turn of this conversation. A setting left on its default follows the model's.";
  if (conv == null) { // nothing to read: the new chat's are on this page
    fill(held ?? {});
    busyWith(false);
    dialog.showModal();
    focusFirst();
    return;
  }
  fill({});
  busyWith(true);
  dialog.showModal();
  fields[0].dflt.focus();
  const controller = (busy = new AbortController());
  try {
    const c = await api("GET", `/api/conversations/${conv}`, undefined, { signal: controller.signal });
    if (controller !== busy) return;
    fill(c.settings ?? {});
    busyWith(false);
    focusFirst();
  } catch (err) {
    if (err.name === "AbortError" || controller !== busy) return;
    if (err.status === 401) { close(); return; } // the login form takes over
    status.textContent = `The settings could not be loaded: ${err.message}`;
  }
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!form.reportValidity()) return;
  const settings = {};
  for (const f of fields) {
    settings[f.key] = f.dflt.checked ? null
      : f.input.type === "number" ? Number(f.input.value) : f.input.value;
  }
  status.textContent = "";
  if (conv == null) { // a new chat: kept here until its first turn takes them
    const set = Object.fromEntries(Object.entries(settings).filter(([, v]) => v != null));
    held = Object.keys(set).length ? set : null;
    close();
    announce("Settings saved. They apply from the first message of this chat.");
    return;
  }
  busyWith(true);
  const controller = (busy = new AbortController());
  try {
    await api("PATCH", `/api/conversations/${conv}`, { settings }, { signal: controller.signal });
    if (controller !== busy) return;
    busy = null;
    close();
    announce("Settings saved. They apply from the next turn.");
  } catch (err) {
    if (err.name === "AbortError" || controller !== busy) return;
    busyWith(false);
    if (err.status === 401) { close(); return; }
    const field = fields.find((f) => f.key === err.detail?.field);
    status.textContent = `The settings were not saved: ${err.message}`;
    field?.input.focus();
  }
});

cancel.addEventListener("click", close);
// Esc closes the panel only: the page's own Esc (stop the reply) must not see it.
dialog.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  event.preventDefault();
  close();
});
dialog.addEventListener("close", () => { busy?.abort(); busy = null; });

// ---- the prompt preview: the saved settings, memories and history as the next turn sends them

const ROLES = { system: "System", user: "You", assistant: "Assistant" };
let previewing = null; // AbortController of the preview's read

preview.addEventListener("toggle", async () => {
  previewing?.abort();
  if (!preview.open) return;
  const controller = (previewing = new AbortController());
  previewBody.replaceChildren(h("p", { class: "hint" }, "Loading…"));
  try {
    const p = conv != null
      ? await api("GET", `/api/conversations/${conv}/prompt`, undefined, { signal: controller.signal })
      // A new chat: its first turn, with the settings held for it and the model picked.
      : await api("POST", "/api/prompt", { settings: held ?? {}, model: chat.models?.picked() || null },
        { signal: controller.signal });
    if (controller !== previewing) return;
    const facts = [p.model && `Model: ${p.model}`, p.temperature != null && `temperature ${p.temperature}`,
      p.max_tokens != null && `max tokens ${p.max_tokens}`].filter(Boolean).join(", ");
    // The server's text goes in as text only (textContent), never as HTML.
    previewBody.replaceChildren(
      h("p", { class: "hint" }, conv != null ? "As saved: the next turn sends this, then your new message. "
        : "As saved: the first turn sends this, then your message. ", facts),
      p.messages.length ? h("ol", { class: "preview-list" }, ...p.messages.map((m) => h("li", null,
        h("span", { class: "preview-role" }, ROLES[m.role] ?? m.role), h("div", { class: "preview-text" }, m.content))))
        : h("p", null, "Nothing yet: the next turn sends only your message."));
  } catch (err) {
    if (err.name === "AbortError" || controller !== previewing) return;
    previewBody.replaceChildren(h("p", { class: "form-error" }, err.status === 401 ? ""
      : `The preview could not be loaded: ${err.message}`));
  }
});
dialog.addEventListener("close", () => { preview.open = false; });
