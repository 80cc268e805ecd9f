// The live feed: one websocket to the hub, reconnected with backoff for as long as the
// page is signed in. See hub/api_runs.py for the protocol.
//
// The feed never replays what happened while it was away; after every `ready` the
// page reloads what it shows over HTTP (see main.js), so a reconnect is all it takes.

const CLOSE_UNAUTHORIZED = 4001;
const CLOSE_RESYNC = 4009;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;
// A socket that opens but never says `ready` (a proxy holding it, a hung hub) is retried.
const READY_TIMEOUT_MS = 10000;

export class Feed {
  /**
   * handlers: onReady(readyFrame), onMessage(frame), onStatus('live'|'reconnecting'),
   * onUnauthorized(reason).
   */
  constructor(url, getKey, handlers) {
    this.url = url;
    this.getKey = getKey;
    this.handlers = handlers;
    this.ws = null;
    this.stopped = true;
    this.failures = 0;
    this.retryTimer = null;
    this.readyTimer = null;
  }

  start() {
    this.stopped = false;
    this.failures = 0;
    this.connect();
  }

  /** Close for good (sign-out); no reconnect follows. */
  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.readyTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000, 'signed out');
    }
  }

  /** Reconnect at once (the "Retry now" button), instead of waiting out the backoff. */
  retryNow() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.retryTimer);
    this.failures = 0;
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    let resync = false;
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: 'auth', key: this.getKey() || '' }));
      this.readyTimer = setTimeout(() => ws.close(4000, 'no ready frame'), READY_TIMEOUT_MS);
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      // After `ready` each frame is a JSON array: what the hub published during one short
      // tick, in order (a run's summaries of that tick merged into the latest one; every
      // event is there). `ready` and `resync` come as single objects.
      for (const frame of parse(event.data)) this.handle(frame, () => { resync = true; });
    };
    ws.onclose = (event) => {
      clearTimeout(this.readyTimer);
      if (ws !== this.ws || this.stopped) return;
      this.ws = null;
      if (event.code === CLOSE_UNAUTHORIZED) {
        this.stopped = true;
        this.handlers.onUnauthorized(event.reason || 'the hub refused the API key');
        return;
      }
      this.handlers.onStatus('reconnecting');
      // Dropped for falling behind: the hub is fine, come straight back and reload.
      if (resync || event.code === CLOSE_RESYNC) this.retryTimer = setTimeout(() => this.connect(), 100);
      else this.scheduleRetry();
    };
  }

  handle(frame, onResync) {
    if (frame.type === 'ready') {
      clearTimeout(this.readyTimer);
      this.failures = 0;
      this.handlers.onStatus('live');
      this.handlers.onReady(frame);
    } else if (frame.type === 'resync') {
      onResync();
    } else {
      this.handlers.onMessage(frame);
    }
  }

  scheduleRetry() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.failures);
    this.failures += 1;
    // Jitter, so a hub restart is not met by every open page at the same instant.
    const delay = base / 2 + Math.random() * (base / 2);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }
}

function parse(text) {
  try {
    const data = JSON.parse(text);
    const frames = Array.isArray(data) ? data : [data];
    return frames.filter((frame) => frame && typeof frame === 'object');
  } catch {
    return [];
  }
}
