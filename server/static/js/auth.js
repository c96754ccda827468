// The login / register form, shown as a modal over the page: at boot when there is no
// session, and on any 401 later (the page, its URL and the draft stay underneath).

import { $ } from "./dom.js";
import { api } from "./api.js";

const dialog = $("auth");
const form = $("auth-form");
const title = $("auth-title");
const note = $("auth-note");
const error = $("auth-error");
const submit = $("auth-submit");
const switchText = $("auth-switch-text");
const switchBtn = $("auth-switch");
const username = $("username");
const password = $("password");
const hint = $("password-hint");

let registering = false;
let signedIn = () => {};
let returnFocus = null;

/** Set what happens after a successful login or registration (gets the user). */
export function onSignedIn(fn) { signedIn = fn; }

export const isOpen = () => dialog.open;

function setMode(register) {
  registering = register;
  title.textContent = register ? "Create your account" : "Log in to chatgate";
  submit.textContent = register ? "Create account" : "Log in";
  switchText.textContent = register ? "Have an account?" : "New here?";
  switchBtn.textContent = register ? "Log in instead" : "Create an account";
  password.autocomplete = register ? "new-password" : "current-password";
  hint.hidden = !register; // the server's rules for a new password, said before it refuses one
  if (register) password.setAttribute("aria-describedby", "password-hint");
  else password.removeAttribute("aria-describedby");
  error.textContent = "";
}

/** Show the form; `expired` says the session ended while the page was in use. */
export function show({ expired = false } = {}) {
  if (dialog.open) return;
  returnFocus = document.activeElement;
  note.hidden = !expired;
  setMode(false);
  password.value = "";
  dialog.showModal();
  (username.value ? password : username).focus();
}

/** Forget the typed credentials (after logout). */
export function clear() {
  username.value = "";
  password.value = "";
}

dialog.addEventListener("cancel", (event) => event.preventDefault()); // Esc cannot skip login
switchBtn.addEventListener("click", () => { setMode(!registering); username.focus(); });

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!form.reportValidity()) return;
  error.textContent = "";
  submit.disabled = true;
  const path = registering ? "/api/auth/register" : "/api/auth/login";
  try {
    // cookie_only: the token stays in the HttpOnly session cookie; no script ever sees it.
    const credentials = { username: username.value.trim(), password: password.value, cookie_only: true };
    const { user } = await api("POST", path, credentials, { quiet: true });
    password.value = "";
    dialog.close();
    signedIn(user);
    if (returnFocus && returnFocus.isConnected && returnFocus !== document.body) returnFocus.focus();
    else $("input").focus();
  } catch (err) {
    error.textContent = err.status === 429 && err.retryAfter
      ? `${err.message} (try again in ${err.retryAfter} s)` : err.message;
    password.focus();
  } finally {
    submit.disabled = false;
  }
});
