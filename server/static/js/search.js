// The search box. Loaded on the first keystroke there (the 300 ms debounce hides the load):
// waits for a pause in typing, aborts a stale request, keeps old results until new ones arrive.

import { $, h } from "./dom.js";
import { api } from "./api.js";

const DEBOUNCE_MS = 300;
const box = $("search");
const results = $("results");
const resultList = $("result-list");
const status = $("search-status");
const nav = $("conv-nav");
let timer = 0;
let searching = null; // AbortController of the request in flight

/** Snippet text with the matches in <mark>; offsets are code points, everything is text nodes. */
export function highlighted(snippet, spans) {
  const chars = Array.from(snippet);
  const out = h("span", { class: "snippet" });
  let at = 0;
  for (const [start, end] of spans) {
    if (start < at || end <= start) continue;
    out.append(chars.slice(at, start).join(""), h("mark", null, chars.slice(start, end).join("")));
    at = end;
  }
  out.append(chars.slice(at).join(""));
  return out;
}

function show(on) {
  results.hidden = !on;
  nav.hidden = on;
}

function clear() {
  clearTimeout(timer);
  searching?.abort();
  searching = null;
  box.value = "";
  resultList.replaceChildren();
  status.textContent = "";
  show(false);
}

async function search(q) {
  searching?.abort(); // a newer query makes the older answer useless
  const controller = (searching = new AbortController());
  show(true);
  results.setAttribute("aria-busy", "true");
  if (!resultList.childElementCount) status.textContent = "Searching…";
  try {
    const data = await api("GET", `/api/search?q=${encodeURIComponent(q)}&limit=20`, undefined,
      { signal: controller.signal });
    if (controller !== searching) return;
    // The previous results stayed on screen until now; swap them in one go.
    resultList.replaceChildren(...data.results.map((r) => h("li", null,
      h("a", { class: "hit", href: `#/c/${r.conversation_id}/m/${r.message_id}` },
        h("span", { class: "t" }, r.title), highlighted(r.snippet, r.highlights)))));
    const n = data.results.length;
    status.textContent = n ? `${n} result${n === 1 ? "" : "s"}` : `No messages match “${q}”.`;
  } catch (err) {
    if (err.name === "AbortError" || controller !== searching) return;
    status.textContent = err.status === 401 ? "" : `The search did not work. Try again in a moment. (${err.message})`;
  } finally {
    if (controller === searching) { results.removeAttribute("aria-busy"); searching = null; }
  }
}

function typed() {
  clearTimeout(timer);
  const q = box.value.trim();
  if (!q) { clear(); return; }
  timer = setTimeout(() => search(q), DEBOUNCE_MS);
}

box.addEventListener("input", typed);
resultList.addEventListener("click", (event) => { // the hit on show already: show it again
  if (event.target.closest("a")?.getAttribute("href") === location.hash) dispatchEvent(new HashChangeEvent("hashchange"));
});
box.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && box.value) { event.stopPropagation(); clear(); }
});
document.addEventListener("search-reset", clear);
typed(); // the keystroke that loaded this module
