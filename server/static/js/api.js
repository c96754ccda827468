// The API client: cookie authentication only (the session cookie is HttpOnly, so no token is
// ever visible here), JSON errors turned into ApiError, and the chat stream read from fetch.

let unauthorized = () => {};

/** Register the handler called on every 401 (it shows the login form over the page). */
export function onUnauthorized(fn) { unauthorized = fn; }

export class ApiError extends Error {
  constructor(status, body, headers) {
    const e = (body && body.error) || {};
    super(e.message || (status ? `The server answered ${status}.` : "The server could not be reached."));
    this.status = status;
    this.code = e.code || (status ? `http_${status}` : "network");
    this.detail = e;
    const wait = Number(headers && headers.get("Retry-After"));
    this.retryAfter = Number.isFinite(wait) && wait > 0 ? wait : 0;
  }
}

async function request(method, path, body, signal, accept, quiet, headers = {}) {
  const init = {
    method, signal,
    credentials: "same-origin", // the HttpOnly session cookie, nothing else
    referrerPolicy: "same-origin", // so browsers send our Origin on writes (CSRF check)
    cache: "no-store",
    headers: { Accept: accept, ...headers },
  };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, null, null);
  }
  if (resp.ok) return resp;
  let data = null;
  try { data = await resp.json(); } catch { data = null; }
  const error = new ApiError(resp.status, data, resp.headers);
  if (resp.status === 401 && !quiet) unauthorized(error);
  throw error;
}

/** Call a JSON endpoint; resolves to the parsed body (null for 204). */
export async function api(method, path, body, { signal, quiet = false } = {}) {
  const resp = await request(method, path, body, signal, "application/json", quiet);
  return resp.status === 204 ? null : resp.json();
}

/**
 * POST /api/chat with stream:true (or, with `turn`, GET its events after event `last`) and
 * dispatch the server-sent events to handlers: meta, queued, message (the unnamed delta
 * events), done, error; each gets the data and the event's id (undefined when it has none).
 */
export async function streamChat(body, handlers, signal, turn, last) {
  const resp = turn == null ? await request("POST", "/api/chat", body, signal, "text/event-stream", false)
    : await request("GET", `/api/turns/${encodeURIComponent(turn)}/events?render=html`, undefined, signal,
      "text/event-stream", false, last == null ? {} : { "Last-Event-ID": String(last) });
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r/g, "");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      dispatch(buffer.slice(0, end), handlers);
      buffer = buffer.slice(end + 2);
    }
  }
}

function dispatch(block, handlers) {
  let name = "message";
  let id;
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    else if (line.startsWith("id:")) id = Number(line.slice(3));
  }
  if (!data.length) return; // comments and pings
  const handler = handlers[name];
  if (handler) handler(JSON.parse(data.join("\n")), id);
}
