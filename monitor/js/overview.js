// The overview strip: what runs now, what failed in the last hour, and today's runs,
// tokens and median duration (GET /api/overview, "today" from the reader's midnight).
// Refreshed every little while when the page is visible, and soon after runs change.

import { h } from './dom.js';
import { duration } from './fmt.js';

const REFRESH_MS = 15000;
const AFTER_CHANGE_MS = 1500;

export class Overview {
  constructor(api, root, onError) {
    this.api = api;
    this.root = root;
    this.onError = onError;
    this.timer = null;
    this.soon = null;
    this.live = { running: null, queued: null, capacity: null };
    this.data = null;
  }

  start() {
    this.stop();
    this.refresh();
    this.timer = setInterval(() => {
      if (!document.hidden) this.refresh();
    }, REFRESH_MS);
  }

  stop() {
    clearInterval(this.timer);
    clearTimeout(this.soon);
    this.soon = null;
    this.timer = null;
    this.data = null;
    this.root.replaceChildren();
  }

  /** The feed's nodes and queue move "now" at once; the rest follows shortly. */
  load(nodes, queueTotal) {
    if (nodes) {
      const executors = nodes.filter((n) => n.role === 'executor' && n.online !== false);
      this.live.running = executors.reduce((n, e) => n + (e.busy || 0), 0);
      this.live.capacity = executors.reduce((n, e) => n + (e.capacity || 0), 0);
    }
    if (queueTotal != null) this.live.queued = queueTotal;
    this.render();
  }

  /** A run arrived or changed: the day's counts follow, at most once per little while. */
  runChanged() {
    if (this.soon || !this.timer) return;
    this.soon = setTimeout(() => {
      this.soon = null;
      this.refresh();
    }, AFTER_CHANGE_MS);
  }

  async refresh() {
    const midnight = new Date();
    midnight.setHours(0, 0, 0, 0);
    try {
      this.data = await this.api.get('api/overview', { since: Math.floor(midnight / 1000) });
    } catch (err) {
      this.onError(err);
      return; // what was shown stays; the next refresh tries again
    }
    this.render();
  }

  render() {
    const d = this.data;
    if (!d) return;
    const running = this.live.running ?? d.running;
    const queued = this.live.queued ?? d.queued;
    const capacity = this.live.capacity ?? d.capacity;
    const tokens = (d.input_tokens || 0) + (d.output_tokens || 0);
    const items = [
      ['Running', `${running} of ${capacity} slots`, running ? 'busy' : null],
      ['Queued', String(queued), queued ? 'busy' : null],
      ['Failed, last hour', String(d.failed_last_hour), d.failed_last_hour ? 'bad' : null],
      ['Runs today', String(d.runs), null],
      ['Tokens today', compact(tokens), null],
      ['Median duration today', d.median_duration_s == null ? '–' : duration(d.median_duration_s), null],
    ];
    this.root.replaceChildren(
      h(
        'dl',
        { class: 'overview-list' },
        items.map(([name, value, tone]) =>
          h('div', { class: 'overview-item', dataset: tone ? { tone } : {} }, h('dt', {}, name), h('dd', {}, value)),
        ),
      ),
    );
  }
}

function compact(n) {
  return new Intl.NumberFormat([], { notation: 'compact', maximumFractionDigits: 1 }).format(n);
}
