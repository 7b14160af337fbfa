// Building the page from data: elements are made with text, never parsed from HTML, so no
// value the gateway returns (a tenant's name, a model id, an error message) can become markup.

/** An element: `props` are set as properties (`className`, `title`, ...), `data` as data-*
 * attributes; children are nodes or strings (as text). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  const { data, ...rest } = props;
  Object.assign(node, rest);
  for (const [name, value] of Object.entries(data || {})) node.dataset[name] = value;
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

/** How often the console and the tenant view read their figures again. */
export const EVERY_MS = 2000;

export const $ = (selector, root = document) => root.querySelector(selector);

/** A view's refresh loop: `step(stopped)` every EVERY_MS from start() to stop(). Each start()
 * begins a new generation: a step still waiting for its answers when the user signs out (or
 * out and in again) sees `stopped()` and ends there, so one loop runs at a time. */
export class Refresher {
  constructor(step, report, fine) {
    this.step = step;
    this.report = report; // shows a failure (a 401 signs out)
    this.fine = fine; // clears it
    this.generation = 0;
    this.timer = null;
  }

  start() {
    this.generation += 1;
    this.loop(this.generation);
  }

  stop() {
    this.generation += 1;
    clearTimeout(this.timer);
  }

  async loop(generation) {
    const stopped = () => generation !== this.generation;
    const started = Date.now();
    try {
      await this.step(stopped);
      if (stopped()) return;
      $("#refreshed").textContent = `refreshed ${clock(Date.now() / 1000)}`;
      this.fine();
    } catch (error) {
      if (stopped()) return;
      this.report(error);
    }
    if (!stopped()) {
      const wait = Math.max(0, EVERY_MS - (Date.now() - started));
      this.timer = setTimeout(() => this.loop(generation), wait);
    }
  }
}

export function rows(table, list) {
  table.tBodies[0].replaceChildren(...list);
}

export function cell(text, className) {
  return el("td", className ? { className } : {}, text);
}

export function int(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

/** USD as people read it: cents for dollars, four decimals for cents, four digits below. */
export function usd(x) {
  if (x === null || x === undefined) return "–";
  if (x === 0) return "$0.00";
  if (x >= 1) return `$${x.toFixed(2)}`;
  if (x >= 0.01) return `$${x.toFixed(4)}`;
  // three significant digits, never in exponent form ($0.00000264, not $2.64e-6)
  const digits = Math.min(12, 2 - Math.floor(Math.log10(x)));
  return `$${x.toFixed(digits).replace(/\.?0+$/, "")}`;
}

export function ms(n) {
  if (n === null || n === undefined) return "–";
  return n >= 10000 ? `${(n / 1000).toFixed(1)} s` : `${Math.round(n)} ms`;
}

export function clock(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

export function when(rfc3339) {
  return rfc3339 ? rfc3339.replace("T", " ").replace("Z", "") : "–";
}

/** A bar: `value` of `max` (a <meter>, so it needs no style), with its text beside it. */
export function meter(value, max, text) {
  const bar = el("meter", { min: 0, max, value: Math.min(value, max), low: max * 0.8,
    high: max * 0.95, optimum: 0 });
  return el("span", { className: "metered" }, bar, el("span", {}, text));
}

/** The recent-requests table's rows, newest first; `withTenant` for the console. */
export function requestRows(list, withTenant) {
  return list.map((r) => {
    const failed = r.status >= 400;
    const status = el("td", { className: failed ? "bad" : "ok", title: r.id },
      String(r.status), r.reason ? el("small", {}, ` ${r.reason}`) : null);
    const tokens = r.prompt_tokens === null ? "–"
      : `${int(r.prompt_tokens)} / ${int(r.completion_tokens)}${r.estimated_tokens ? " (est.)" : ""}`;
    return el("tr", { data: { requestId: r.id } },
      cell(clock(r.finished_at)),
      withTenant ? cell(r.tenant, "tenant") : null,
      cell(r.key_id, "mono"),
      cell(r.model, "mono"),
      status,
      cell(ms(r.queue_ms), "num"),
      cell(ms(r.latency_ms), "num"),
      cell(tokens, "num"),
      cell(usd(r.cost_usd), "num"));
  });
}

/** Tokens by model as short lines: `model: in / out`. */
export function tokenLines(models) {
  const names = Object.keys(models).sort();
  if (!names.length) return [el("span", { className: "muted" }, "none yet")];
  return names.map((name) => el("div", { className: "model-tokens", data: { model: name } },
    el("span", { className: "mono" }, name), ": ",
    el("span", { className: "in" }, int(models[name].prompt_tokens)), " / ",
    el("span", { className: "out" }, int(models[name].completion_tokens))));
}

/** Spend against the budget: a bar when there is one. */
export function spendOf(usage) {
  const amount = el("span", { className: "amount" }, usd(usage.spend_usd));
  if (usage.budget_usd === null) {
    return [amount, el("span", { className: "muted" }, " no budget")];
  }
  const bar = meter(usage.spend_usd, usage.budget_usd, "");
  return [bar, amount, el("span", { className: "muted" }, ` of ${usd(usage.budget_usd)}`)];
}
