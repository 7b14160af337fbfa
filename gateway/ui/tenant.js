// A tenant's view (tenant keys): its own usage, limits and recent requests, from /v1/usage and
// /v1/requests, refreshed every 2 s in place; and the playground. Nothing here can name
// another tenant: every endpoint it reads answers for the caller's tenant only.

import { api } from "./api.js";
import {
  $, Refresher, cell, el, int, meter, requestRows, rows, spendOf, usd,
} from "./dom.js";
import { Playground } from "./playground.js";

export class TenantView {
  constructor(report, fine) {
    this.playground = new Playground(report);
    this.refresher = new Refresher((stopped) => this.step(stopped), report, fine);
  }

  start(usage) {
    this.render(usage, null);
    this.playground.load();
    this.refresher.start();
  }

  stop() {
    this.refresher.stop();
    this.playground.clear();
    $("#own-usage").replaceChildren();
    $("#own-month").textContent = "";
    rows($("#own-models"), []);
    rows($("#own-requests"), []);
  }

  async step(stopped) {
    const [usage, recent] = await Promise.all([
      api("/v1/usage"),
      api("/v1/requests?limit=100"),
    ]);
    if (!stopped()) this.render(usage, recent);
  }

  render(usage, recent) {
    $("#who").textContent = `tenant ${usage.tenant}`;
    $("#own-month").textContent = `this month: ${usage.month} (UTC)`;
    const pool = usage.concurrency;
    const errors = recent ? recent.errors.tenants[usage.tenant] || {} : {};
    const failed = Object.entries(errors).map(([reason, n]) => `${reason}: ${n}`);
    $("#own-usage").replaceChildren(
      card("spend", "spend this month", ...spendOf(usage)),
      card("remaining", "budget left", usage.remaining_usd === null ? "–"
        : usd(usage.remaining_usd)),
      card("inflight", "in flight / limit",
        meter(pool.inflight, pool.limit, `${int(pool.inflight)} / ${int(pool.limit)}`)),
      card("queued", "queued", int(pool.queued)),
      card("errors", recent ? `errors, last ${recent.errors.window_s / 60} min` : "errors",
        failed.length ? failed.join(", ") : "none"));
    rows($("#own-models"), Object.keys(usage.models).sort().map((name) => {
      const m = usage.models[name];
      return el("tr", { data: { model: name } },
        cell(name, "mono"), cell(int(m.prompt_tokens), "num in"),
        cell(int(m.completion_tokens), "num out"), cell(int(m.cached_prompt_tokens), "num"),
        cell(usd(m.spend_usd), "num spend"));
    }));
    if (recent) rows($("#own-requests"), requestRows(recent.data, false));
  }
}

function card(name, title, ...value) {
  return el("div", { className: "card", data: { card: name } },
    el("h3", {}, title), el("div", { className: "value" }, ...value));
}
