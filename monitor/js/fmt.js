// Formatting of states, sources, times and sizes. Pure functions, no DOM.

export const ACTIVE_STATES = new Set(['queued', 'optimizing', 'running', 'awaiting_approval']);

const STATE_LABELS = {
  queued: 'queued',
  optimizing: 'optimizing',
  running: 'running',
  awaiting_approval: 'awaiting approval',
  succeeded: 'succeeded',
  failed: 'failed',
  cancelled: 'cancelled',
  timed_out: 'timed out',
  rejected: 'rejected',
};

const SOURCE_LABELS = { slack: 'Slack', telegram: 'Telegram', http: 'HTTP', monitor: 'Page' };

export function isActive(state) {
  return ACTIVE_STATES.has(state);
}

export function stateLabel(state) {
  return STATE_LABELS[state] || String(state || 'unknown');
}

export function sourceLabel(source) {
  return SOURCE_LABELS[source] || String(source || 'unknown');
}

/** "Slack · alice", or just "Slack" when the user is unknown. */
export function originLabel(run) {
  const source = sourceLabel(run.source);
  return run.user ? `${source} · ${run.user}` : source;
}

/** A whole-second duration: "7 s", "3 min 04 s", "2 h 05 min". */
export function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds || 0));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, '0')} s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${String(m % 60).padStart(2, '0')} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** An offset within a run for its timeline: "+0.4 s", "+12 s", "+3 min 04 s". */
export function offset(seconds) {
  const s = Math.max(0, seconds || 0);
  return s < 10 ? `+${s.toFixed(1)} s` : `+${duration(s)}`;
}

/** Seconds a run has taken so far (or took), measured on the hub's clock. */
export function elapsed(run, now) {
  if (!run || !run.created_at) return 0;
  const end = run.finished_at || now;
  return end - run.created_at;
}

/** Local date and time of an epoch-seconds timestamp. */
export function clock(ts) {
  if (!ts) return '';
  return new Date(ts * 1000).toLocaleString();
}

export function isoTime(ts) {
  return ts ? new Date(ts * 1000).toISOString() : '';
}

/** "12 s ago" for a past moment. */
export function ago(ts, now) {
  if (!ts) return 'never';
  return `${duration(now - ts)} ago`;
}

export function count(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

export function tokens(n) {
  return typeof n === 'number' ? n.toLocaleString() : '–';
}

/** Number of lines in a text (a trailing newline does not start a line). */
export function lineCount(text) {
  if (!text) return 0;
  const lines = text.split('\n');
  return lines[lines.length - 1] === '' ? lines.length - 1 : lines.length;
}
