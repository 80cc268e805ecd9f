// The fleet view (#/fleet): every executor with its labels, load, codex login, codex
// version, engine, last heartbeat and the runs on it, each a link to the run.
//
// Live: it reads the nodes panel's state (GET /api/nodes, then the feed's `nodes`
// frames, which the hub sends when a node comes, goes, changes or answers a
// heartbeat) and is drawn again on each; executors that left while the page is open
// stay, marked offline, as on the panel.

import { h } from './dom.js';
import { now } from './clock.js';
import { ago, count } from './fmt.js';

const COLUMNS = ['Executor', 'Labels', 'Load', 'codex login', 'codex version', 'Engine', 'Last heartbeat', 'Runs'];

export class FleetView {
  /** `root`: where it is drawn (the detail pane); `nodes`: the NodesPanel it reads. */
  constructor(root, nodes) {
    this.root = root;
    this.nodes = nodes;
    this.shown = false;
  }

  show() {
    this.shown = true;
    this.render();
  }

  hide() {
    this.shown = false;
  }

  /** Draw again when shown (the nodes changed, or a second passed for "ago"). */
  refresh() {
    if (this.shown) this.render();
  }

  executors() {
    const all = [...this.nodes.online.values(), ...this.nodes.offline.values()];
    return all
      .filter((node) => node.role === 'executor')
      .sort((a, b) => Number(!a.online) - Number(!b.online) || String(a.name).localeCompare(String(b.name)));
  }

  render() {
    const executors = this.executors();
    const online = executors.filter((node) => node.online);
    const at = now();
    const title = h('h2', { id: 'detail-title', tabindex: '-1' }, 'Fleet');
    const summary = h(
      'p',
      { class: 'muted fleet-summary' },
      `${count(online.length, 'executor')} connected · ` +
        `${online.reduce((n, e) => n + (e.busy ?? 0), 0)}/${online.reduce((n, e) => n + (e.capacity ?? 0), 0)} slots busy`,
    );
    const body = executors.length
      ? h(
          'div',
          { class: 'table-scroll', tabindex: '0', role: 'region', 'aria-labelledby': 'detail-title' },
          h(
            'table',
            { class: 'fleet-table' },
            h('thead', {}, h('tr', {}, COLUMNS.map((name) => h('th', { scope: 'col' }, name)))),
            h('tbody', {}, executors.map((node) => row(node, at))),
          ),
        )
      : h('p', { class: 'muted' }, 'No executor is connected: runs wait in the queue.');
    // Drawn again every few seconds: keep the reader's place (focus, sideways scroll).
    const focused = this.root.contains(document.activeElement) ? placeOf(document.activeElement) : null;
    const scrolled = this.root.querySelector('.table-scroll')?.scrollLeft || 0;
    this.root.replaceChildren(h('header', { class: 'detail-head' }, title), summary, body);
    this.root.setAttribute('aria-labelledby', 'detail-title');
    if (body.classList.contains('table-scroll')) body.scrollLeft = scrolled;
    if (focused) this.root.querySelector(focused)?.focus({ preventScroll: true });
  }
}

/** A selector that finds `el` again after a redraw (a run's link, the table, the title). */
function placeOf(el) {
  const href = el.getAttribute('href');
  if (href) return `a[href="${CSS.escape(href)}"]`;
  if (el.id) return `#${CSS.escape(el.id)}`;
  if (el.classList.contains('table-scroll')) return '.table-scroll';
  return null;
}

function row(node, at) {
  const login = node.login || {};
  let loginText = 'not checked yet';
  if (login.logged_in === true) loginText = 'logged in';
  else if (login.logged_in === false) loginText = 'NOT logged in';
  const labels = node.labels || [];
  const runs = node.online ? node.runs || [] : [];
  return h(
    'tr',
    { class: 'fleet-row', dataset: { id: node.id, online: String(Boolean(node.online)) } },
    h('th', { scope: 'row', class: 'fleet-name' }, node.name || node.id, node.online ? null : h('span', { class: 'muted' }, ' (offline)')),
    h(
      'td',
      { class: 'fleet-labels' },
      labels.length ? h('ul', { class: 'labels' }, labels.map((label) => h('li', { class: 'label' }, label))) : h('span', { class: 'muted' }, 'none'),
    ),
    h('td', { class: 'fleet-load' }, node.online ? `${node.busy ?? 0}/${node.capacity ?? 0} busy` : 'offline'),
    h('td', { class: login.logged_in === false ? 'fleet-login node-login-bad' : 'fleet-login', title: login.detail ? String(login.detail) : null }, loginText),
    h('td', { class: 'fleet-version' }, node.codex_version || h('span', { class: 'muted' }, 'unknown')),
    h('td', { class: 'fleet-engine' }, node.engine || h('span', { class: 'muted' }, 'unknown')),
    h(
      'td',
      { class: 'fleet-seen', title: 'when the hub last heard from it: a message, or a websocket ping every 10 s' },
      ago(node.last_seen, at),
    ),
    h(
      'td',
      { class: 'fleet-runs' },
      runs.length
        ? h('ul', { class: 'fleet-run-list' }, runs.map((id) => h('li', {}, h('a', { href: `#/runs/${encodeURIComponent(id)}` }, id))))
        : h('span', { class: 'muted' }, node.online ? 'idle' : '–'),
    ),
  );
}
