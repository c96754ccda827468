// The theme as html[data-theme], read by app.css. app.js imports this first, so this device's
// copy paints first; after sign-in the account's setting wins (app.js, js/account.js).

const KEY = "chatgate-theme";
export const THEMES = ["system", "light", "dark"];

/** Apply a theme now and keep it on this device ("system" keeps nothing). */
export function applyTheme(theme) {
  const t = THEMES.includes(theme) ? theme : "system";
  const root = document.documentElement;
  if (t === "system") delete root.dataset.theme;
  else root.dataset.theme = t;
  try { if (t === "system") localStorage.removeItem(KEY); else localStorage.setItem(KEY, t); } catch { /* off */ }
  return t;
}

export const currentTheme = () => document.documentElement.dataset.theme || "system";

try { const t = localStorage.getItem(KEY); if (t) applyTheme(t); } catch { /* storage off */ }
