// Boot: one GET /api/auth/verify, then everything runs from the URL hash (#/c/<id>, #/keys).
// No token, no storage: the HttpOnly session cookie is the only credential.

import { $, announce } from "./dom.js";
import { api, onUnauthorized } from "./api.js";
import * as auth from "./auth.js";
import * as sidebar from "./sidebar.js";
import * as chat from "./chat.js";

const app = $("app");
const menu = $("menu");
let user = null;
let started = false;
let keys = null; // the API keys page (js/keys.js), imported on its first visit

function parse() {
  const m = /^#\/c\/(\d+)(?:\/m\/(\d+))?$/.exec(location.hash);
  return m ? { id: Number(m[1]), mid: m[2] ? Number(m[2]) : null } : null;
}

function route(force = false) {
  if (!user) return;
  const onKeys = location.hash === "#/keys";
  $("chat").hidden = onKeys;
  if (onKeys) $("keys-link").setAttribute("aria-current", "page");
  else $("keys-link").removeAttribute("aria-current");
  drawer(false);
  if (onKeys) {
    const backTo = chat.current() == null ? "#/" : `#/c/${chat.current()}`;
    sidebar.setActive(null);
    (keys ??= import("./keys.js")).then((m) => { if (location.hash === "#/keys") m.show(backTo); }, () => {
      keys = null;
      $("chat").hidden = false;
      announce("The API keys page could not be loaded. Reload to try again.");
    });
    return;
  }
  keys?.then((m) => m.hide());
  const r = parse();
  if (r) chat.open(r.id, r.mid, force);
  else chat.openNew();
  sidebar.setActive(r ? r.id : null);
}

function forgetKeys() { // the keys page, if it was ever opened, shows nothing of this user
  keys?.then((m) => m.reset());
  $("chat").hidden = false;
}

function signedIn(who) {
  const changed = user != null && user.id !== who.id;
  const returning = user != null || started;
  user = who;
  $("who").textContent = who.username;
  if (changed) { // someone else logged in over the page: show nothing of the previous user
    chat.reset();
    sidebar.reset();
    forgetKeys();
    history.replaceState(null, "", "#/");
  }
  sidebar.resume();
  if (!started) {
    started = true;
    addEventListener("hashchange", () => route());
  }
  route(returning); // back to where the user was
}

onUnauthorized(() => auth.show({ expired: user != null }));
auth.onSignedIn(signedIn);

$("logout").addEventListener("click", async () => {
  chat.stop();
  try { await api("POST", "/api/auth/logout", undefined, { quiet: true }); } catch { /* ends locally anyway */ }
  user = null;
  chat.reset();
  sidebar.reset();
  forgetKeys();
  auth.clear();
  $("who").textContent = "";
  history.replaceState(null, "", "#/");
  auth.show();
  announce("You are logged out.");
});

// ---- the drawer (narrow screens)

function drawer(open) {
  app.classList.toggle("drawer-open", open);
  menu.setAttribute("aria-expanded", String(open));
  $("scrim").hidden = !open;
  $("chat").inert = open; // the page under the open drawer is out of reach
  if (open) $("new-chat").focus();
}
matchMedia("(max-width: 800px)").addEventListener("change", () => drawer(false));
menu.addEventListener("click", () => drawer(!app.classList.contains("drawer-open")));
$("scrim").addEventListener("click", () => drawer(false));

document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || event.defaultPrevented || auth.isOpen() || $("confirm").open) return;
  if (!$("chat").hidden && chat.stop()) return;
  if (app.classList.contains("drawer-open")) { drawer(false); menu.focus(); }
});

// Keep the composer above an on-screen keyboard where dvh does not follow it (iOS Safari).
const vv = window.visualViewport;
if (vv) {
  const fit = () => { if (vv.scale === 1) document.documentElement.style.setProperty("--vvh", `${vv.height}px`); };
  vv.addEventListener("resize", fit);
  fit();
}

// ---- boot

try {
  const me = await api("GET", "/api/auth/verify", undefined, { quiet: true });
  signedIn(me.user);
} catch (err) {
  auth.show();
  if (err.status !== 401) $("auth-error").textContent = `The server could not be reached: ${err.message}`;
}
