// Talking to prodvec's JSON API: the key header, and errors as the server's message.
const KEY_STORAGE = "prodvec.apiKey";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The key lives in this tab only (session storage), sent as the X-API-Key header.
export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export async function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  headers.set("Accept", "application/json");
  if (apiKey()) headers.set("X-API-Key", apiKey());
  let response;
  try {
    response = await fetch(path, { ...init, headers });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "The server could not be reached. Check that prodvec serve is still running, then try again.");
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) throw new ApiError(response.status, errorMessage(response, body));
  return body;
}

// The API answers every error as {"error": "what to do"}; a proxy in between may answer otherwise.
function errorMessage(response, body) {
  let message = typeof body?.error === "string" ? body.error : "";
  if (!message) message = `The server answered ${response.status} ${response.statusText}.`;
  const retry = response.headers.get("Retry-After");
  if (response.status === 503 && retry) message += ` Try again in ${retry} s.`;
  return message;
}
