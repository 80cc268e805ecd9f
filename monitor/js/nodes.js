// The nodes panel: executors (capacity, busy slots, codex login, labels) and bridges (platform,
// online, last seen), from GET /api/nodes and the feed's `nodes` frames.
//
// The hub lists connected nodes only. A node that leaves while the page is open stays
// on the panel, marked offline, until a node of the same role and name comes back
// (an executor reconnects under a new id after a restart).

import { h } from './dom.js';
import { now } from './clock.js';
import { ago, count, sourceLabel } from './fmt.js';

export class NodesPanel {
  constructor(list, counter) {
    this.list = list;
    this.counter = counter;
    this.online = new Map(); // id -> node
    this.offline = new Map(); // id -> node, with online false
  }

  clear() {
    this.online.clear();
    this.offline.clear();
    this.list.replaceChildren();
    this.counter.textContent = '';
  }

  update(nodes) {
    const next = new Map(nodes.map((node) => [node.id, node]));
    for (const [id, node] of this.online) {
      if (!next.has(id)) this.offline.set(id, { ...node, online: false });
    }
    for (const [id, node] of this.offline) {
      const back = nodes.some((n) => n.id === id || (n.role === node.role && n.name === node.name));
      if (back) this.offline.delete(id);
    }
    this.online = next;
    this.render();
  }

  /** The display name of a node id (runs carry the executor's id). */
  nameOf(id) {
    if (!id) return '';
    const node = this.online.get(id) || this.offline.get(id);
    if (node) return node.name || id;
    // A node gone before this page opened (say, across a hub restart): executors' ids
    // are "<name>-<pid>-<6 hex>" (executor/node.py), so the name is still known.
    const match = /^(.+)-\d+-[0-9a-f]{6}$/.exec(id);
    return match ? match[1] : id;
  }

  render() {
    const nodes = [...this.online.values(), ...this.offline.values()];
    const executors = nodes.filter((n) => n.role === 'executor' && n.online);
    const bridges = nodes.filter((n) => n.role !== 'executor' && n.online);
    this.counter.textContent = `(${count(executors.length, 'executor')}, ${count(bridges.length, 'bridge')})`;
    if (!nodes.length) {
      this.list.replaceChildren(
        h('li', { class: 'node-empty' }, 'No executor is connected: runs wait in the queue.'),
      );
      return;
    }
    nodes.sort((a, b) => rank(a) - rank(b) || String(a.name).localeCompare(String(b.name)));
    this.list.replaceChildren(...nodes.map((node) => this.card(node)));
  }

  /** Refresh "last seen" texts. */
  tick() {
    if (this.online.size || this.offline.size) this.render();
  }

  card(node) {
    const lines = node.role === 'executor' ? executorLines(node) : bridgeLines(node, now());
    return h(
      'li',
      { class: 'node', dataset: { online: String(Boolean(node.online)), role: node.role } },
      h('div', { class: 'node-name' }, node.name || node.id),
      lines,
    );
  }
}

function rank(node) {
  return (node.online ? 0 : 2) + (node.role === 'executor' ? 0 : 1);
}

function executorLines(node) {
  const login = node.login || {};
  let loginText = 'codex login not checked yet';
  if (login.logged_in === true) loginText = 'codex logged in';
  else if (login.logged_in === false) loginText = 'codex NOT logged in';
  const title = login.detail ? String(login.detail) : null;
  return [
    h(
      'div',
      { class: 'node-meta' },
      node.online ? `executor · ${node.busy ?? 0}/${node.capacity ?? 0} busy` : 'executor · offline',
    ),
    h(
      'div',
      { class: login.logged_in === false ? 'node-login-bad' : 'node-meta', title },
      loginText,
    ),
    node.labels?.length
      ? h('ul', { class: 'labels', 'aria-label': 'labels' }, node.labels.map((label) => h('li', { class: 'label' }, label)))
      : null,
  ];
}

function bridgeLines(node, at) {
  const platform = sourceLabel(node.platform);
  return [
    h('div', { class: 'node-meta' }, `${platform} bridge · ${node.online ? 'online' : 'offline'}`),
    h(
      'div',
      { class: 'node-meta', title: 'the last heartbeat (a websocket ping, every 10 s) or message' },
      node.online ? `last heartbeat ${ago(node.last_seen, at)}` : `last seen ${ago(node.last_seen, at)}`,
    ),
  ];
}
