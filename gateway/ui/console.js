// The operator console (admin keys): account pools, tenants, keys and this replica's recent
// requests, from /admin/usage, /admin/requests and /admin/keys, refreshed every 2 s in place.

import { api } from "./api.js";
import {
  $, Refresher, cell, el, int, meter, requestRows, rows, spendOf, tokenLines,
} from "./dom.js";
import { Keys } from "./keys.js";

export class Console {
  /** `report(error)` shows a failure (a 401 signs out); `fine()` clears it. */
  constructor(report, fine) {
    this.keys = new Keys(report);
    this.refresher = new Refresher((stopped) => this.step(stopped), report, fine);
  }

  start(usage) {
    this.render(usage, null);
    this.refresher.start();
  }

  stop() {
    this.refresher.stop();
    this.keys.clear();
    for (const id of ["#accounts", "#tenants", "#requests"]) rows($(id), []);
    $("#month").textContent = "";
  }

  async step(stopped) {
    const [usage, recent] = await Promise.all([
      api("/admin/usage"),
      api("/admin/requests?limit=100"),
    ]);
    if (stopped()) return;
    this.render(usage, recent);
    await this.keys.refresh(Object.keys(usage.tenants).sort());
  }

  render(usage, recent) {
    $("#month").textContent = `this month: ${usage.month} (UTC)`;
    rows($("#accounts"), Object.keys(usage.accounts).sort().map(
      (name) => accountRow(name, usage.accounts[name])));
    const errors = recent ? recent.errors.tenants : {};
    if (recent) $("#errors-head").textContent = `errors, last ${recent.errors.window_s / 60} min`;
    rows($("#tenants"), Object.keys(usage.tenants).sort().map(
      (name) => tenantRow(name, usage.tenants[name], errors[name] || {})));
    if (recent) rows($("#requests"), requestRows(recent.data, true));
  }
}

function accountRow(name, pool) {
  const backedOff = pool.limit < pool.max_concurrency;
  const limit = el("td", { className: backedOff ? "num limit bad" : "num limit" },
    backedOff ? `${pool.limit} of ${pool.max_concurrency} (backed off)` : String(pool.limit));
  return el("tr", { data: { account: name } },
    cell(name, "name"),
    limit,
    el("td", { className: "num inflight" }, meter(pool.inflight, pool.limit, int(pool.inflight))),
    cell(int(pool.queued), "num queued"));
}

function tenantRow(name, usage, errors) {
  const pool = usage.concurrency;
  return el("tr", { data: { tenant: name } },
    cell(name, "name"),
    el("td", { className: "num inflight" },
      meter(pool.inflight, pool.limit, `${int(pool.inflight)} / ${int(pool.limit)}`)),
    cell(int(pool.queued), "num queued"),
    el("td", { className: "spend" }, ...spendOf(usage)),
    el("td", { className: "tokens" }, ...tokenLines(usage.models)),
    el("td", { className: "errors" }, ...errorLines(errors)));
}

function errorLines(errors) {
  const reasons = Object.keys(errors);
  if (!reasons.length) return [el("span", { className: "muted" }, "none")];
  return reasons.map((reason) => el("div", { className: "bad", data: { reason } },
    `${reason}: ${int(errors[reason])}`));
}
