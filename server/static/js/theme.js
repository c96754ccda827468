// The theme as html[data-theme] (read by app.css). Imported first by app.js, so the copy kept on
// this device paints first; the account's setting (GET /api/account) wins after sign-in.

const KEY = "chatgate-theme";
export const THEMES = ["system", "light", "dark"];

/** Apply a theme at once and remember it here ("system" leaves storage empty). */
export function applyTheme(theme) {
  const t = THEMES.includes(theme) ? theme : "system";
  if (t === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = t;
  try {
    if (t === "system") localStorage.removeItem(KEY);
    else localStorage.setItem(KEY, t);
  } catch { /* storage refused: this page still shows it */ }
  return t;
}

/** The theme in force on this page. */
export const currentTheme = () => document.documentElement.dataset.theme || "system";

try { if (localStorage.getItem(KEY)) applyTheme(localStorage.getItem(KEY)); } catch { /* none */ }
