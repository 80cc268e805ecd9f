// The hub's HTTP API as the page uses it: every call carries the Bearer key.
//
// Paths are relative ("api/runs"), so the page also works behind a proxy that mounts the
// hub under a sub-path.

/** The hub answered with an error; `message` is the hub's own (OpenAI envelope). */
export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

/** The key is missing, wrong or revoked (HTTP 401). */
export class Unauthorized extends ApiError {
  constructor(message) {
    super(401, message, 'invalid_api_key');
    this.name = 'Unauthorized';
  }
}

/** The hub could not be reached at all (down, restarting, network gone). */
export class Unreachable extends Error {
  constructor(cause) {
    super('the hub is not reachable');
    this.name = 'Unreachable';
    this.cause = cause;
  }
}

const TIMEOUT_MS = 20000;

/** A small client; `getKey()` is read on every call, so signing in again takes effect. */
export function createApi(getKey) {
  async function call(method, path, { params, body } = {}) {
    const headers = { Accept: 'application/json' };
    const key = getKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(withParams(path, params), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        credentials: 'omit',
        signal: AbortSignal.timeout(TIMEOUT_MS),
      });
    } catch (err) {
      throw new Unreachable(err);
    }
    const data = await response.json().catch(() => null);
    if (response.ok) return data;
    const message = data?.error?.message || `${response.status} ${response.statusText}`;
    if (response.status === 401) throw new Unauthorized(message);
    throw new ApiError(response.status, message, data?.error?.code ?? null);
  }

  return {
    get: (path, params) => call('GET', path, { params }),
    post: (path, body = {}) => call('POST', path, { body }),
  };
}

function withParams(path, params) {
  if (!params) return path;
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') query.set(name, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** The feed's websocket URL, next to the page (ws:// or wss:// to match the page). */
export function feedUrl() {
  const url = new URL('api/feed', document.baseURI);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.toString();
}
