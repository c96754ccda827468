// The account gate, loaded only when needed and shown instead of the app while an account may
// not use it yet: waiting for an administrator's approval, or obliged to change a password an
// administrator reset.

import { $, h, announce } from "./dom.js";
import { api } from "./api.js";

const blocks = (user) => user.status === "pending" || user.must_change_password === true;
const current = h("input", { id: "gate-current", type: "password", autocomplete: "current-password", required: true, minlength: "1", maxlength: "1024" });
const fresh = h("input", { id: "gate-new", type: "password", autocomplete: "new-password", required: true, minlength: "8", maxlength: "1024" });
const fields = h("div", null, h("label", { for: "gate-current" }, "Temporary password"), current,
  h("label", { for: "gate-new" }, "New password"), fresh);
const heading = h("h2", { id: "gate-title" });
const note = h("p", { class: "note" });
const error = h("p", { class: "form-error", role: "alert" });
const submit = h("button", { type: "submit", class: "btn primary wide" });
const leave = h("button", { type: "button", class: "link" }, "Log out");
const form = h("form", { class: "auth-form" }, h("span", { class: "logo big", "aria-hidden": "true" }),
  heading, note, fields, error, submit, h("p", { class: "switch" }, leave));
const dialog = h("dialog", { class: "auth", id: "gate", "aria-labelledby": "gate-title" }, form);
$("confirm").before(dialog);

let passed = () => {};
let logout = () => {};
let waiting = false;

/** Set what happens when the gate is passed (gets the user) and on "Log out". */
export function setup(onPassed, onLogout) { passed = onPassed; logout = onLogout; }

/** Show the gate for this user. */
export function show(user) {
  waiting = user.status === "pending";
  heading.textContent = waiting ? "Waiting for approval" : "Choose a new password";
  note.textContent = waiting
    ? `Your account ${user.username} is waiting for an administrator's approval. Come back later, or check again.`
    : "An administrator reset your password. Choose a new one to carry on.";
  fields.hidden = waiting;
  current.disabled = fresh.disabled = waiting;
  submit.textContent = waiting ? "Check again" : "Change password";
  error.textContent = "";
  if (!dialog.open) dialog.showModal();
  (waiting ? submit : current).focus();
}

/** Close the gate (logout, or the session ended). */
export function close() {
  form.reset();
  if (dialog.open) dialog.close();
}

dialog.addEventListener("cancel", (event) => event.preventDefault());
leave.addEventListener("click", () => { close(); logout(); });

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!form.reportValidity()) return;
  error.textContent = "";
  submit.disabled = true;
  try {
    if (!waiting) {
      await api("POST", "/api/auth/password", { current_password: current.value, new_password: fresh.value });
      announce("Your password was changed.");
    }
    const { user } = await api("GET", "/api/auth/verify");
    if (blocks(user)) { show(user); if (waiting) error.textContent = "Still waiting for approval."; return; }
    close();
    passed(user);
  } catch (err) {
    if (err.status !== 401) error.textContent = err.message;
  } finally {
    submit.disabled = false;
  }
});
