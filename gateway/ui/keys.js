// The console's keys panel, over the key admin API: list, create (the new key shown once),
// revoke and rotate. A revoke or rotate asks first, in a row under the key's.

import { api, segment } from "./api.js";
import { $, cell, el, rows, when } from "./dom.js";

const DAY_S = 24 * 3600;

export class Keys {
  constructor(report) {
    this.report = report;
    this.table = $("#keys");
    this.form = $("#key-create");
    this.box = $("#new-key");
    this.data = [];
    this.shown = ""; // the list as last drawn: redrawn only when it changed
    this.tenants = "";
    this.pending = null; // {action: "revoke" | "rotate", id}
    this.busy = false; // a change is on its way: a second click does nothing
    this.grace = "3600";
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.create();
    });
    this.table.addEventListener("click", (event) => this.clicked(event));
    this.table.addEventListener("input", (event) => {
      if (event.target.name === "grace_s") this.grace = event.target.value;
    });
    $(".dismiss", this.box).addEventListener("click", () => this.hideSecret());
    $(".copy", this.box).addEventListener("click", () => this.copy());
  }

  clear() {
    this.hideSecret();
    this.data = [];
    this.shown = "";
    this.tenants = "";
    this.pending = null;
    this.form.reset();
    this.form.elements.tenant.replaceChildren();
    $("#keys-error").textContent = "";
    rows(this.table, []);
  }

  async refresh(tenants) {
    if (tenants && tenants.join("\n") !== this.tenants) {
      this.tenants = tenants.join("\n");
      const select = this.form.elements.tenant;
      const chosen = select.value;
      select.replaceChildren(...tenants.map((t) => el("option", { value: t }, t)));
      if (tenants.includes(chosen)) select.value = chosen;
    }
    const list = await api("/admin/keys");
    const text = JSON.stringify(list.data);
    if (text !== this.shown) {
      this.shown = text;
      this.data = list.data;
      this.draw();
    }
  }

  draw() {
    rows(this.table, this.data.flatMap((key) => this.rowsOf(key)));
  }

  rowsOf(key) {
    const live = key.source === "api" && key.status === "active";
    const actions = el("td", { className: "actions" },
      live ? button("Rotate", "ask-rotate", key.id) : null,
      live ? button("Revoke", "ask-revoke", key.id, "danger") : null);
    const row = el("tr", { data: { keyId: key.id } },
      cell(key.id, "mono"), cell(key.tenant), cell(key.name ?? "–"), cell(key.source),
      cell(key.status, key.status === "active" ? "ok" : "bad"),
      cell(when(key.created_at)), cell(when(key.expires_at)), cell(when(key.last_used_at)),
      actions);
    const pending = this.pending;
    if (!pending || pending.id !== key.id) return [row];
    return [row, this.confirmRow(pending)];
  }

  confirmRow({ action, id }) {
    const parts = action === "revoke"
      ? [`Revoke ${id}? Requests with it are refused from now on, on every replica. `,
        button("Revoke now", "revoke", id, "danger")]
      : [`Rotate ${id}: a new key for the same tenant and name; the old one keeps working for `,
        el("input", { name: "grace_s", type: "number", min: 0, max: 30 * DAY_S,
          value: this.grace, className: "short" }),
        " s. ", button("Rotate now", "rotate", id)];
    return el("tr", { className: "confirm", data: { confirm: id } },
      el("td", { colSpan: 9 }, ...parts, " ", button("Cancel", "cancel", id)));
  }

  async clicked(event) {
    const target = event.target.closest("button[data-action]");
    if (!target) return;
    const { action, id } = target.dataset;
    if (action === "ask-revoke" || action === "ask-rotate") {
      this.pending = { action: action.slice(4), id };
    } else if (action === "cancel") {
      this.pending = null;
    } else if (action === "rotate" && String(this.grace).trim() === "") {
      // blank (or not a number) is no grace of 0 s: the old key would stop at once
      $("#keys-error").textContent =
        "Say how many seconds the old key keeps working after the rotation (0: none).";
      return;
    } else {
      if (this.busy) return;
      this.pending = null;
      this.busy = true;
      this.draw(); // its confirm row goes at once: one click, one change
      try {
        await this.change(action, id);
      } finally {
        this.busy = false;
      }
    }
    this.draw();
  }

  async change(action, id) {
    $("#keys-error").textContent = "";
    try {
      if (action === "revoke") {
        await api(`/admin/keys/${segment(id)}`, { method: "DELETE" });
      } else {
        const grace = Number(this.grace); // never blank here: clicked() asked again
        const made = await api(`/admin/keys/${segment(id)}/rotate`,
          { method: "POST", body: { grace_s: grace } });
        this.showSecret(made);
      }
    } catch (error) {
      this.failed(error);
    }
    await this.reload();
  }

  async create() {
    const submit = $("button[type=submit]", this.form);
    if (submit.disabled) return; // one key per click, however fast the clicks
    submit.disabled = true;
    try {
      await this.createKey();
    } finally {
      submit.disabled = false;
    }
  }

  async createKey() {
    const form = this.form.elements;
    const body = { tenant: form.tenant.value, name: form.name.value.trim() };
    if (form.expires_days.value) body.expires_in_s = Number(form.expires_days.value) * DAY_S;
    $("#keys-error").textContent = "";
    try {
      this.showSecret(await api("/admin/keys", { method: "POST", body }));
      form.name.value = "";
    } catch (error) {
      this.failed(error);
    }
    await this.reload();
  }

  failed(error) {
    if (error.status === 401) this.report(error);
    else $("#keys-error").textContent = error.message;
  }

  async reload() {
    this.shown = "";
    try {
      await this.refresh();
    } catch (error) {
      this.report(error);
    }
  }

  showSecret(made) {
    $(".for", this.box).textContent = `${made.tenant} (${made.name}, ${made.id})`;
    $(".secret", this.box).textContent = made.key;
    this.box.hidden = false;
  }

  hideSecret() {
    $(".secret", this.box).textContent = "";
    $(".for", this.box).textContent = "";
    this.box.hidden = true;
  }

  async copy() {
    const secret = $(".secret", this.box);
    try {
      await navigator.clipboard.writeText(secret.textContent);
    } catch {
      // no clipboard outside a secure context: select it for the user to copy
      getSelection().selectAllChildren(secret);
    }
  }
}

function button(text, action, id, className = "") {
  return el("button", { type: "button", className, data: { action, id } }, text);
}
