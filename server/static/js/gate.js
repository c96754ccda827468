// The account gate, shown instead of the app while an account may not use it yet: waiting for
// an administrator's approval, or obliged to change a password an administrator reset.

import { $, announce } from "./dom.js";
import { api } from "./api.js";

const dialog = $("gate");
const form = $("gate-form");
const error = $("gate-error");
let passed = () => {};
let logout = () => {};
let waiting = false;

/** Whether this user must stop at the gate. */
export const blocks = (user) => user.status === "pending" || user.must_change_password === true;

/** Set what happens when the gate is passed (gets the user) and on "Log out". */
export function setup(onPassed, onLogout) { passed = onPassed; logout = onLogout; }

/** Show the gate for this user. */
export function show(user) {
  waiting = user.status === "pending";
  $("gate-title").textContent = waiting ? "Waiting for approval" : "Choose a new password";
  $("gate-note").textContent = waiting
    ? `Your account ${user.username} is waiting for an administrator's approval. Come back later, or check again.`
    : "An administrator reset your password. Choose a new one to carry on.";
  $("gate-fields").hidden = waiting;
  for (const input of form.querySelectorAll("input")) input.disabled = waiting;
  $("gate-submit").textContent = waiting ? "Check again" : "Change password";
  error.textContent = "";
  if (!dialog.open) dialog.showModal();
  (waiting ? $("gate-submit") : $("gate-current")).focus();
}

/** Close the gate (logout). */
export function close() {
  form.reset();
  if (dialog.open) dialog.close();
}

dialog.addEventListener("cancel", (event) => event.preventDefault());
$("gate-logout").addEventListener("click", () => { close(); logout(); });

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!form.reportValidity()) return;
  error.textContent = "";
  $("gate-submit").disabled = true;
  try {
    if (!waiting) {
      await api("POST", "/api/auth/password", { current_password: $("gate-current").value, new_password: $("gate-new").value });
      announce("Your password was changed.");
    }
    const { user } = await api("GET", "/api/auth/verify");
    if (blocks(user)) { show(user); if (waiting) error.textContent = "Still waiting for approval."; return; }
    close();
    passed(user);
  } catch (err) {
    if (err.status !== 401) error.textContent = err.message;
  } finally {
    $("gate-submit").disabled = false;
  }
});
