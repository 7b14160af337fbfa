// The playground: one prompt to up to three of the tenant's models at once, through
// /v1/chat/completions with streaming, the answers side by side. Under each: time to the first
// token, total time, tokens in and out (the stream's usage chunk), and the cost the gateway
// charged for it (its /v1/requests/{id} entry, by the answer's x-request-id).

import { errorOf, headers, options, segment, api } from "./api.js";
import { $, el, int, ms, usd } from "./dom.js";
import { events } from "./sse.js";

export const MAX_MODELS = 3;
const COST_TRIES = 20; // the request's entry lands just after its last byte
const COST_WAIT_MS = 100;

export class Playground {
  constructor(report) {
    this.report = report;
    this.form = $("#playground");
    this.list = $("#model-list");
    this.answers = $("#answers");
    this.running = new AbortController();
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.run();
    });
    this.list.addEventListener("change", () => this.limit());
  }

  async load() {
    try {
      const models = await api("/v1/models");
      this.list.replaceChildren(...models.data.map(choice));
      this.limit();
    } catch (error) {
      this.report(error);
    }
  }

  clear() {
    this.running.abort();
    this.list.replaceChildren();
    this.answers.replaceChildren();
    $("#playground-error").textContent = "";
    this.form.elements.prompt.value = "";
  }

  chosen() {
    return [...this.list.querySelectorAll("input[name=model]:checked")].map((box) => box.value);
  }

  /** At most three: the other boxes are disabled while three are ticked. */
  limit() {
    const full = this.chosen().length >= MAX_MODELS;
    for (const box of this.list.querySelectorAll("input[name=model]")) {
      box.disabled = full && !box.checked;
    }
  }

  async run() {
    const models = this.chosen();
    const problem = $("#playground-error");
    problem.textContent = "";
    if (!models.length || models.length > MAX_MODELS) {
      problem.textContent = `Pick one to ${MAX_MODELS} models.`;
      return;
    }
    this.running.abort();
    this.running = new AbortController();
    const request = this.request();
    const panels = models.map(panel);
    this.answers.replaceChildren(...panels);
    await Promise.all(models.map((model, i) =>
      stream({ ...request, model }, panels[i], this.running.signal, this.report)));
  }

  /** The body every model gets, but for `model`. */
  request() {
    const form = this.form.elements;
    const messages = [];
    if (form.system.value.trim()) messages.push({ role: "system", content: form.system.value });
    messages.push({ role: "user", content: form.prompt.value });
    const body = { messages, stream: true, stream_options: { include_usage: true } };
    if (form.temperature.value !== "") body.temperature = Number(form.temperature.value);
    if (form.max_tokens.value !== "") body.max_tokens = Number(form.max_tokens.value);
    return body;
  }
}

function choice(model) {
  const box = el("input", { type: "checkbox", name: "model", value: model.id });
  const alias = model.root ? el("small", {}, ` → ${model.root}`) : null;
  return el("label", { className: "model" }, box, el("span", { className: "mono" }, model.id),
    alias);
}

function panel(model) {
  return el("section", { className: "answer-panel", data: { model, state: "running" } },
    el("h3", { className: "mono" }, model),
    el("details", { className: "reasoning", hidden: true }, el("summary", {}, "reasoning"),
      el("div", { className: "text" })),
    el("div", { className: "answer" }),
    el("p", { className: "error", role: "alert" }),
    el("dl", { className: "figures" }));
}

/** One model's run: its answer streamed into its panel, then its figures. */
async function stream(body, node, signal, report) {
  const started = performance.now();
  const figures = { ttft_ms: null, total_ms: null, usage: null, finish: null, cost: "…" };
  const fail = (message) => {
    $(".error", node).textContent = message;
    node.dataset.state = "failed";
  };
  let response = null;
  try {
    response = await fetch("/v1/chat/completions", options("POST", body, signal));
    if (!response.ok) {
      const error = await errorOf(response);
      if (error.status === 401) report(error);
      fail(error.message);
    } else if (await relay(response, node, started, figures, fail)) {
      node.dataset.state = "done";
    } else if (node.dataset.state !== "failed") {
      fail("The stream ended before [DONE].");
    }
  } catch (error) {
    if (error.name === "AbortError") return;
    fail(`The gateway cannot be reached (${error.message}).`);
  }
  figures.total_ms = performance.now() - started;
  const id = response && response.headers.get("x-request-id");
  if (!id) figures.cost = "–";
  show(node, figures);
  if (id) {
    figures.cost = await costOf(id, signal);
    show(node, figures);
  }
}

/** Reads the SSE stream into the panel; true when it ended with [DONE]. */
async function relay(response, node, started, figures, fail) {
  const answer = $(".answer", node);
  const thoughts = $(".reasoning", node);
  for await (const data of events(response.body)) {
    if (data === "[DONE]") return true;
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch {
      fail("The gateway sent an event that is not JSON.");
      return false;
    }
    if (chunk.error) {
      fail(chunk.error.message || "The stream failed.");
      return false;
    }
    if (chunk.usage) figures.usage = chunk.usage;
    const first = (chunk.choices || [])[0];
    if (!first) continue;
    const delta = first.delta || {};
    const text = typeof delta.content === "string" ? delta.content : "";
    const reasoning = delta.reasoning_content ?? delta.reasoning;
    if ((text || reasoning) && figures.ttft_ms === null) {
      figures.ttft_ms = performance.now() - started;
    }
    if (text) answer.append(text);
    if (typeof reasoning === "string" && reasoning) {
      thoughts.hidden = false;
      $(".text", thoughts).append(reasoning);
    }
    if (first.finish_reason) figures.finish = first.finish_reason;
  }
  return false;
}

/** What the gateway charged for the request: its entry in /v1/requests, once it is there. */
async function costOf(id, signal) {
  for (let i = 0; i < COST_TRIES; i += 1) {
    try {
      const response = await fetch(`/v1/requests/${segment(id)}`,
        { headers: headers(), signal, cache: "no-store", credentials: "omit" });
      if (response.ok) {
        const entry = await response.json();
        if (entry.cost_usd !== null) return usd(entry.cost_usd);
        return entry.prompt_tokens === null ? "none charged" : "no price";
      }
      if (response.status !== 404) return "–";
    } catch {
      return "–";
    }
    await new Promise((resolve) => setTimeout(resolve, COST_WAIT_MS));
  }
  return "– (served by another replica)";
}

function show(node, f) {
  const usage = f.usage || {};
  $(".figures", node).replaceChildren(
    figure("first token", ms(f.ttft_ms), "ttft_ms"),
    figure("total", ms(f.total_ms), "total_ms"),
    figure("tokens in", int(usage.prompt_tokens), "prompt_tokens"),
    figure("tokens out", int(usage.completion_tokens), "completion_tokens"),
    figure("cost", f.cost ?? "–", "cost_usd"),
    f.finish ? figure("finish", f.finish, "finish_reason") : null);
}

function figure(label, text, name) {
  return el("div", { className: "figure" }, el("dt", {}, label),
    el("dd", { data: { figure: name } }, text));
}
