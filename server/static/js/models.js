// The model picker, loaded after sign-in: GET /api/models, and a <select> in the composer when
// more than one model is configured (with one, nothing shows: the page looks as it always did).
// It also puts model errors into words and says whether replies should name their model.

import { $, h } from "./dom.js";
import { api } from "./api.js";
import { useModels } from "./chat.js";
import * as self from "./models.js";

// The picker's styles come with it, not with the first load; the import finishes once they are in.
const sheet = h("link", { rel: "stylesheet", href: "/static/models.css" });
await new Promise((resolve) => {
  sheet.addEventListener("load", resolve);
  sheet.addEventListener("error", resolve); // unstyled is still usable
  document.head.append(sheet);
});

const REFRESH_MS = 15_000; // focusing the picker asks again when the list is older than this
const label = h("label", { class: "sr-only", for: "model" }, "Model");
const select = h("select", { id: "model", class: "model", title: "The model that answers" });
let list = []; // [{ name, default, available }] in the configured order, the default first
let wanted = null; // the model of the conversation on screen (null: the default)
let fetched = -Infinity; // when the list was last asked for (performance.now())
let attached = false; // the chat pane uses this module (from the first list on)

/** More than one model is configured: the picker shows. */
export let many = false;
/** Replies name their model: more than one is configured, or the conversation used several. */
export let named = false;
let mixed = false; // the conversation on screen has replies from more than one model

const known = (name) => list.some((m) => m.name === name);
const fallback = () => (list.find((m) => m.default) ?? list[0]).name;

/** Ask for the list (again) and show, update or remove the picker to match. */
export async function load() {
  fetched = performance.now();
  try {
    list = (await api("GET", "/api/models", undefined, { quiet: true })).models;
  } catch {
    return; // keep what we had: the page works without a picker
  }
  many = list.length > 1;
  if (many) {
    const kept = select.isConnected && known(select.value) ? select.value : null;
    select.replaceChildren(...list.map((m) => h("option", { value: m.name },
      m.available ? m.name : `${m.name} (unavailable)`)));
    if (!select.isConnected) $("input").after(label, select);
    select.value = kept ?? (known(wanted) ? wanted : fallback());
  } else {
    label.remove();
    select.remove();
  }
  named = many || mixed;
  if (!attached) { // the chat then shows the open conversation's model, replies named to match
    attached = true;
    useModels(self);
  }
}

/**
 * Show the model of the conversation on screen (null: the default, as for a new chat), given
 * its messages (each reply names the model that wrote it, when known).
 */
export function show(model, messages = []) {
  wanted = model;
  mixed = new Set(messages.map((m) => m.model).filter(Boolean)).size > 1;
  named = many || mixed;
  if (many) select.value = known(model) ? model : fallback();
}

/** The model chosen for the next turn (null: no picker, the server decides). */
export const picked = () => (many ? select.value : null);

/** A model error in words for people (null: not a model error); the marks are refreshed. */
export function said(err, model) {
  if (!err.code?.startsWith("model_")) return null;
  load();
  const which = model ? `The model “${model}”` : "The model";
  return err.code === "model_not_found" ? `${which} is no longer offered. Pick another model and retry.`
    : `${which} is not answering right now: its servers are down or restarting. `
      + `Try again in a moment${many ? ", or pick another model" : ""}.`;
}

select.addEventListener("focus", () => { if (performance.now() - fetched > REFRESH_MS) load(); });
