// Boot: one GET /api/auth/verify, then everything runs from the URL hash (#/c/<id>, #/account,
// #/keys, #/admin). No token in storage: the HttpOnly session cookie is the only credential.

import { applyTheme } from "./theme.js"; // first: the remembered theme paints before the rest
import { $, announce, h } from "./dom.js";
import { api, onUnauthorized } from "./api.js";
import * as auth from "./auth.js";
import * as sidebar from "./sidebar.js";
import * as chat from "./chat.js";

const app = $("app");
const menu = $("menu");
let user = null;
let started = false;

function parse() {
  const m = /^#\/c\/(\d+)(?:\/m\/(\d+))?$/.exec(location.hash);
  return m ? { id: Number(m[1]), mid: m[2] ? Number(m[2]) : null } : null;
}

// The pages beside the chat, each its own module imported on its first visit.
const PAGES = {
  "#/account": { link: "who", file: "./account.js", what: "account" },
  "#/keys": { link: "keys-link", file: "./keys.js", what: "API keys" },
  "#/admin": { link: "admin-link", file: "./admin.js", what: "admin" },
};

function route(force = false) {
  if (!user) return;
  const here = PAGES[location.hash] && !(location.hash === "#/admin" && user.role !== "admin")
    ? location.hash : null;
  $("chat").hidden = here != null;
  for (const [hash, p] of Object.entries(PAGES)) {
    if (hash === here) $(p.link).setAttribute("aria-current", "page");
    else $(p.link).removeAttribute("aria-current");
    if (hash !== here) p.module?.then((m) => m.hide());
  }
  drawer(false);
  if (here) {
    const p = PAGES[here];
    const backTo = chat.current() == null ? "#/" : `#/c/${chat.current()}`;
    sidebar.setActive(null);
    (p.module ??= import(p.file)).then((m) => { if (location.hash === here) m.show(backTo, user, { signedOut }); }, () => {
      p.module = null;
      $("chat").hidden = false;
      announce(`The ${p.what} page could not be loaded. Reload to try again.`);
    });
    return;
  }
  const r = parse();
  if (r) chat.open(r.id, r.mid, force);
  else chat.openNew();
  sidebar.setActive(r ? r.id : null);
}

function forgetKeys() { // the pages, if ever opened, show nothing of this user
  for (const p of Object.values(PAGES)) p.module?.then((m) => m.reset());
  $("chat").hidden = false;
}

function signedIn(who) {
  const changed = user != null && user.id !== who.id;
  const returning = user != null || started;
  user = who;
  $("who").textContent = who.username;
  $("who").setAttribute("aria-label", `Account (${who.username})`);
  $("who").hidden = false;
  $("admin-link").hidden = who.role !== "admin";
  if (changed) { // someone else logged in over the page: show nothing of the previous user
    chat.reset();
    sidebar.reset();
    forgetKeys();
    history.replaceState(null, "", "#/");
  }
  sidebar.resume();
  // The account's theme wins over this device's copy (a new device, or changed elsewhere).
  api("GET", "/api/account", undefined, { quiet: true })
    .then((account) => applyTheme(account.settings?.theme), () => {});
  import("./models.js").then((m) => m.load(), () => {}); // the model picker
  import("./settings.js").catch(() => {}); // the conversation settings panel
  import("./turns.js").catch(() => {}); // streaming, ready before the first Send
  import("./transfer.js").then((m) => m.setup(), () => {}); // export and import
  if (!started) {
    started = true;
    // Colours of the server's code highlighting and math layout: not needed on the login page.
    document.head.append(h("link", { rel: "stylesheet", href: "/static/code.css" }));
    addEventListener("hashchange", () => route());
  }
  route(returning); // back to where the user was
}

// An account that waits for approval or must change its password stops at the gate first
// (js/gate.js, loaded only then).
let gate = null;

function admitted(who) {
  if (who.status !== "pending" && !who.must_change_password) { signedIn(who); return; }
  if (user != null && user.id !== who.id) forgetAll();
  (gate ??= import("./gate.js")).then((m) => { m.setup(signedIn, logOut); m.show(who); }, () => {
    gate = null;
    announce("The page could not be loaded. Reload to try again.");
  });
}

function forgetAll() {
  user = null;
  chat.reset();
  sidebar.reset();
  forgetKeys();
  import("./transfer.js").then((m) => m.reset(), () => {});
  $("who").textContent = "";
  $("who").hidden = true;
  $("admin-link").hidden = true;
  history.replaceState(null, "", "#/");
}

onUnauthorized(() => { gate?.then((m) => m.close()); auth.show({ expired: user != null }); });
auth.onSignedIn(admitted);

$("logout").addEventListener("click", logOut);

async function logOut() {
  chat.stop();
  try { await api("POST", "/api/auth/logout", undefined, { quiet: true }); } catch { /* ends locally anyway */ }
  signedOut("You are logged out.");
}

/** Back to the login form with nothing of the user left (logout, or the account deleted). */
function signedOut(message) {
  forgetAll();
  auth.clear();
  auth.show();
  announce(message);
}

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
  if (event.key !== "Escape" || event.defaultPrevented || auth.isOpen() || $("confirm").open || $("gate")?.open) return;
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
  admitted(me.user);
} catch (err) {
  auth.show();
  if (err.status !== 401) $("auth-error").textContent = `The server could not be reached. Check your connection, then reload the page. (${err.message})`;
}
