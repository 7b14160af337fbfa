// The gateway's JSON APIs, called with the key the user typed. The key lives in this tab's
// sessionStorage only and travels only in the Authorization header: never in a URL, a cookie
// or the page.

const STORE = "inference-gateway.key";

export const session = {
  get key() {
    return sessionStorage.getItem(STORE);
  },
  set(key) {
    sessionStorage.setItem(STORE, key);
  },
  clear() {
    sessionStorage.removeItem(STORE);
  },
};

/** A refusal or failure, with the gateway's own message (OpenAI's error envelope). */
export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function headers(json = false) {
  const out = { Authorization: `Bearer ${session.key}` };
  if (json) out["Content-Type"] = "application/json";
  return out;
}

/** The request options every call shares: no cookies, no cache, no referrer. */
export function options(method, body, signal) {
  return {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  };
}

/** The error a non-2xx response carries: the envelope's message, else its status. */
export async function errorOf(response) {
  let message = `The gateway answered HTTP ${response.status}.`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.message === "string") {
      message = body.error.message;
      code = body.error.code ?? null;
    }
  } catch {
    // not JSON: the status says it
  }
  return new ApiError(response.status, message, code);
}

/** Call a JSON API; its answer, or an ApiError (status 0 when the gateway is unreachable). */
export async function api(path, { method = "GET", body, signal } = {}) {
  let response;
  try {
    response = await fetch(path, options(method, body, signal));
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `The gateway cannot be reached (${error.message}).`);
  }
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/** A path segment, escaped (ids are plain, but nothing reaches a URL unescaped). */
export function segment(text) {
  return encodeURIComponent(text);
}
