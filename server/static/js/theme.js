// The theme (system, light or dark) as html[data-theme], which app.css reads. app.js imports this
// module first, so the copy remembered on this device paints before anything else; after sign-in
// the account's own setting (GET /api/account) wins, and the account page changes both.

const KEY = "chatgate-theme";
export const THEMES = ["system", "light", "dark"];

/** Apply a theme at once and remember it on this device ("system" leaves storage empty). */
export function applyTheme(theme) {
  const t = THEMES.includes(theme) ? theme : "system";
  const root = document.documentElement;
  if (t === "system") delete root.dataset.theme;
  else root.dataset.theme = t;
  try {
    if (t === "system") localStorage.removeItem(KEY);
    else localStorage.setItem(KEY, t);
  } catch { /* storage refused: the theme still applies to this page */ }
  return t;
}

/** The theme in force on this page. */
export const currentTheme = () => document.documentElement.dataset.theme || "system";

let stored = null;
try { stored = localStorage.getItem(KEY); } catch { stored = null; }
if (stored) applyTheme(stored);
