// Small DOM helpers. Everything untrusted goes in as text (append/textContent), never as HTML.

export const $ = (id) => document.getElementById(id);

/** Create an element; attributes are set with setAttribute, children appended as nodes or text. */
export function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === "class") el.className = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  for (const kid of kids) if (kid != null && kid !== false) el.append(kid);
  return el;
}

/** A decorative icon (a CSS mask), hidden from assistive technology. */
export const icon = (name) => h("span", { class: `i i-${name}`, "aria-hidden": "true" });

let flip = false;
/** Say something in the polite live region. */
export function announce(text) {
  flip = !flip; // a changed string is announced even when the words repeat
  $("live").textContent = text + (flip ? "\u00a0" : "");
}

/** Copy text to the clipboard; falls back to execCommand where the Clipboard API is missing. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const ta = h("textarea", { class: "offscreen", "aria-hidden": "true", tabindex: "-1" });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch { ok = false; }
    ta.remove();
    return ok;
  }
}

/** Briefly confirm a copy on the button that did it. */
export async function copyWith(button, text) {
  const ok = await copyText(text);
  const label = button.querySelector(".lbl");
  announce(ok ? "Copied." : "Copy failed.");
  if (!label) return;
  const before = label.textContent;
  label.textContent = ok ? "Copied" : "Copy failed";
  setTimeout(() => { label.textContent = before; }, 1500);
}
