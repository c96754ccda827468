// Export and import, loaded after sign-in. Exports are plain download links (the HttpOnly
// session cookie authenticates them; no token in script); an import posts the chosen file as is.

import { $, h, icon, announce } from "./dom.js";
import * as sidebar from "./sidebar.js";

let ready = false;
let status;
let links;

/** Add the sidebar's Export all / Import and the open conversation's Export links (once). */
export function setup() {
  if (ready) { follow(); return; }
  ready = true;
  const file = h("input", { type: "file", id: "import-file", accept: ".json,.jsonl,.ndjson,application/json", hidden: true });
  const button = h("button", { type: "button", class: "btn ghost", id: "import" }, icon("plus"), "Import");
  button.addEventListener("click", () => file.click());
  file.addEventListener("change", () => { if (file.files[0]) upload(file.files[0]).finally(() => { file.value = ""; }); });
  const all = h("a", { class: "btn ghost", id: "export-all", href: "/api/export", download: "" }, icon("down"), "Export all");
  $("logout").before(all, button, file);
  status = h("p", { class: "status", id: "transfer-status", role: "status" });
  $("conv-nav").before(status);

  links = h("span", { id: "export", hidden: true },
    h("a", { class: "btn ghost", id: "export-json", download: "", "aria-label": "Export this conversation as JSON" }, "JSON"),
    h("a", { class: "btn ghost", id: "export-md", download: "", "aria-label": "Export this conversation as Markdown" }, "Markdown"));
  $("title").after(links);
  addEventListener("hashchange", follow);
  follow();
}

/** Forget what the last user saw (logout). */
export function reset() {
  if (!ready) return;
  status.textContent = "";
  links.hidden = true;
}

function follow() { // the export links point at the open conversation, if any
  const m = /^#\/c\/(\d+)(?:\/|$)/.exec(location.hash);
  links.hidden = !m;
  if (!m) return;
  $("export-json").href = `/api/conversations/${m[1]}/export?format=json`;
  $("export-md").href = `/api/conversations/${m[1]}/export?format=md`;
}

async function upload(file) {
  say(`Importing ${file.name}…`);
  const jsonl = /\.(jsonl|ndjson)$/i.test(file.name);
  let resp;
  try {
    resp = await fetch("/api/conversations/import", {
      method: "POST", body: file, credentials: "same-origin", referrerPolicy: "same-origin",
      cache: "no-store",
      headers: { "Content-Type": jsonl ? "application/x-ndjson" : "application/json", Accept: "application/json" },
    });
  } catch {
    say("The import could not reach the server. Check your connection and try again.");
    return;
  }
  let body = null;
  try { body = await resp.json(); } catch { body = null; }
  if (!resp.ok) {
    say(`Nothing was imported: ${body?.error?.message || `the server answered ${resp.status}`}`);
    return;
  }
  const n = body.imported.length;
  const parts = [`Imported ${n} conversation${n === 1 ? "" : "s"}.`];
  for (const r of body.rejected.slice(0, 3)) parts.push(`Not imported: ${r.title ?? `item ${r.index + 1}`}: ${r.error.message}`);
  if (body.rejected.length > 3) parts.push(`${body.rejected.length - 3} more not imported.`);
  say(parts.join(" "));
  sidebar.reset();
  sidebar.resume();
  if (n) location.hash = `#/c/${body.imported[0].id}`;
}

function say(text) {
  status.textContent = text;
  announce(text);
}
