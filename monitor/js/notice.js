// Noticing from another tab: the tab's title and icon count the hub's running and queued
// runs, and flag when a run started from this page ends (optionally with a browser
// notification, if the reader asked for them).

import { stateLabel } from './fmt.js';

const BASE_TITLE = 'codex-hub monitor';
const ICON_SIZE = 32;

export class TabNotice {
  /** link: the <link rel=icon>; toggle: the "notify me" checkbox (optional). */
  constructor(link, toggle) {
    this.link = link;
    this.toggle = toggle;
    this.running = 0;
    this.queued = 0;
    this.mine = new Set(); // runs started from this page, not ended yet
    this.ended = null; // { state, text } of the last of mine that ended while away
    this.shown = '';
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) {
        this.ended = null;
        this.render();
      }
    });
    if (toggle) {
      toggle.checked = typeof Notification !== 'undefined' && Notification.permission === 'granted';
      toggle.addEventListener('change', async () => {
        if (!toggle.checked || typeof Notification === 'undefined') return;
        if ((await Notification.requestPermission()) !== 'granted') toggle.checked = false;
      });
    }
  }

  /** The hub-wide load: busy slots of the executors, and the queue's length. */
  load(nodes, queueTotal) {
    if (nodes) this.running = nodes.reduce((n, node) => n + (node.role === 'executor' && node.online !== false ? node.busy || 0 : 0), 0);
    if (queueTotal != null) this.queued = queueTotal;
    this.render();
  }

  started(run) {
    this.mine.add(run.id);
  }

  /** A run summary from the feed: one of mine that ended is announced. */
  onRun(run) {
    if (!this.mine.has(run.id) || !run.finished_at) return;
    this.mine.delete(run.id);
    const text = `${stateLabel(run.state)}: ${String(run.prompt_excerpt || run.id).slice(0, 60)}`;
    if (document.hidden) this.ended = { state: run.state, text };
    this.render();
    if (this.toggle?.checked && document.hidden && typeof Notification !== 'undefined' && Notification.permission === 'granted') {
      new Notification(`codex-hub: run ${stateLabel(run.state)}`, { body: text, tag: run.id });
    }
  }

  clear() {
    this.running = 0;
    this.queued = 0;
    this.mine.clear();
    this.ended = null;
    this.render();
  }

  render() {
    const counts = [];
    if (this.running) counts.push(`${this.running} running`);
    if (this.queued) counts.push(`${this.queued} queued`);
    let title = counts.length ? `(${counts.join(', ')}) ${BASE_TITLE}` : BASE_TITLE;
    if (this.ended) title = `${this.ended.state === 'succeeded' ? '✓' : '✗'} ${this.ended.text} · ${title}`;
    if (document.title !== title) document.title = title;
    const key = `${this.running}|${this.ended?.state ?? ''}`;
    if (key === this.shown) return;
    this.shown = key;
    this.link.href = icon(this.running, this.ended?.state);
  }
}

// Drawn on a canvas, as a data: URL (the CSP allows data: images; nothing is fetched).
function icon(running, ended) {
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = ICON_SIZE;
  const ctx = canvas.getContext('2d');
  if (!ctx) return 'data:,';
  let colour = '#6e7781';
  if (ended) colour = ended === 'succeeded' ? '#1a7f37' : '#cf222e';
  else if (running) colour = '#0a58b0';
  ctx.fillStyle = colour;
  ctx.beginPath();
  ctx.arc(16, 16, 15, 0, 2 * Math.PI);
  ctx.fill();
  ctx.fillStyle = '#ffffff';
  ctx.font = 'bold 18px sans-serif';
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  const label = ended ? (ended === 'succeeded' ? '✓' : '!') : running > 99 ? '99' : String(running || '');
  ctx.fillText(label, 16, 17);
  return canvas.toDataURL('image/png');
}
