// A tenant's view (tenant keys): its own usage, limits and recent requests, from /v1/usage and
// /v1/requests, refreshed every 2 s in place; and the playground. Nothing here can name
// another tenant: every endpoint it reads answers for the caller's tenant only.

import { api } from "./api.js";
import {
  $, EVERY_MS, cell, clock, el, int, meter, requestRows, rows, spendOf, usd,
} from "./dom.js";
import { Playground } from "./playground.js";

export class TenantView {
  constructor(report, fine) {
    this.report = report;
    this.fine = fine;
    this.playground = new Playground(report);
    this.timer = null;
    // Each start() begins a new refresh loop; a loop whose generation has passed (signed out,
    // or out and in again while its fetch was pending) stops at its next step.
    this.generation = 0;
  }

  start(usage) {
    this.generation += 1;
    this.render(usage, null);
    this.playground.load();
    this.tick(this.generation);
  }

  stop() {
    this.generation += 1;
    clearTimeout(this.timer);
    this.playground.clear();
    $("#own-usage").replaceChildren();
    $("#own-month").textContent = "";
    rows($("#own-models"), []);
    rows($("#own-requests"), []);
  }

  async tick(generation) {
    const stopped = () => generation !== this.generation;
    const started = Date.now();
    try {
      const [usage, recent] = await Promise.all([
        api("/v1/usage"),
        api("/v1/requests?limit=100"),
      ]);
      if (stopped()) return;
      this.render(usage, recent);
      $("#refreshed").textContent = `refreshed ${clock(Date.now() / 1000)}`;
      this.fine();
    } catch (error) {
      if (stopped()) return;
      this.report(error);
    }
    if (!stopped()) {
      const wait = Math.max(0, EVERY_MS - (Date.now() - started));
      this.timer = setTimeout(() => this.tick(generation), wait);
    }
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
