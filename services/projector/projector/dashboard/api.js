// Talks to the read API (this origin) and the enqueuer's command API (its URL comes from config.json).
// Errors carry the API's stable code and plain message, shown to people as they are.

const KEY = "smsflow.apiKey";
let config = { enqueuerUrl: "" };

export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status; this.code = code; this.body = body;
  }
}

export async function loadConfig() {
  const r = await fetch("config.json");
  config = await r.json();
  return config;
}

export const apiKey = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (k) => sessionStorage.setItem(KEY, k),
  clear: () => sessionStorage.removeItem(KEY),
};

async function call(base, method, path, body) {
  const headers = { "X-Api-Key": apiKey.get() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let r;
  try {
    r = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, "NETWORK", "The server could not be reached. Check your connection and try again.");
  }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!r.ok) {
    const code = data?.code || `HTTP_${r.status}`;
    const message = data?.message || `The request failed (${r.status}).`;
    throw new ApiError(r.status, code, message, data);
  }
  return data;
}

export const read = (path) => call("", "GET", path);
export const command = (method, path, body) => call(config.enqueuerUrl, method, path, body);
export const readUrl = (path) => path;
