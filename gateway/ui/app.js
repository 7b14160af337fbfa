// The page's entry: sign in, pick the view by what the key may read, sign out.
// An admin key reads /admin/usage (the operator console); a tenant key gets its 403 there and
// reads /v1/usage (the tenant's view); any other refusal shows the gateway's message.

import { ApiError, api, session } from "./api.js";
import { $ } from "./dom.js";
import { Console } from "./console.js";
import { TenantView } from "./tenant.js";

const VIEWS = ["#signin-view", "#console-view", "#tenant-view"];
let view = null;
let views = null; // made once: each wires its own listeners

function show(name) {
  for (const id of VIEWS) $(id).hidden = id !== name;
  $("#signout").hidden = name === "#signin-view";
}

function banner(message) {
  const node = $("#banner");
  node.textContent = message || "";
  node.hidden = !message;
}

function report(error) {
  if (!(error instanceof ApiError)) {
    banner(`Unexpected error: ${error.message}`);
  } else if (error.status === 401) {
    signOut(error.message); // the key ended (revoked, expired) or was never one
  } else {
    banner(error.message);
  }
}

async function signIn(key) {
  session.set(key);
  try {
    const usage = await api("/admin/usage");
    open("console", "#console-view", usage);
    $("#who").textContent = "operator console";
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 403) {
      signOut(error.message);
      return;
    }
    try {
      open("tenant", "#tenant-view", await api("/v1/usage"));
    } catch (again) {
      signOut(again.message);
    }
  }
}

function open(kind, id, usage) {
  view = views[kind];
  show(id);
  view.start(usage);
}

function signOut(message = "") {
  if (view) view.stop();
  view = null;
  session.clear();
  show("#signin-view");
  banner(null);
  $("#who").textContent = "";
  $("#refreshed").textContent = "";
  $("#signin-error").textContent = message;
}

function boot() {
  const fine = () => banner(null);
  views = { console: new Console(report, fine), tenant: new TenantView(report, fine) };
  const form = $("#signin");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = form.elements.key.value.trim();
    form.elements.key.value = ""; // the key leaves the page's fields at once
    $("#signin-error").textContent = "";
    if (key) signIn(key);
  });
  $("#signout").addEventListener("click", () => signOut());
  $("button[type=submit]", form).disabled = false;
  if (session.key) signIn(session.key); // a reload of this tab stays signed in
}

boot();
