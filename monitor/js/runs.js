// The runs list: server-side filters and paging, kept live by the feed.
//
// Rows are keyed by run id, so a run that arrives twice (feed and reload, or a
// reconnect's catch-up) is updated in place, never shown twice. Only the rows that
// change are touched, which keeps the page fast with thousands of runs loaded.
//
// The list is bounded: it holds as many rows as the reader asked for (a page, plus a
// page per "Load more"). Runs the feed adds at the top push the oldest rows out at the
// bottom, and "Load more" brings them back; so a burst of thousands of runs never
// grows the page (see tests/monitor/test_browser_scale.py).

import { now } from './clock.js';
import { h, setText } from './dom.js';
import { duration, elapsed, isActive, isoTime, originLabel, stateLabel } from './fmt.js';

const PAGE_SIZE = 100;
const MAX_PAGE = 500; // the hub's largest page (GET /api/runs?limit=)
// A run's state only moves forward; a reply that was already stale when it arrived
// must not take a row back (say, from "succeeded" to "running").
// running <-> awaiting_approval: either may follow the other.
const STATE_RANK = { queued: 0, optimizing: 1, running: 2, awaiting_approval: 2 };
const rank = (state) => STATE_RANK[state] ?? 3;
// Runs shown as active but absent from a reloaded first page are refreshed one by one.
const MAX_STALE_REFRESH = 50;
// Progress kept for runs without a row yet (the list loading, a filter): the newest few.
const MAX_UNSHOWN_PROGRESS = 200;
// `after` larger than any seq: fetch a run without its events.
const NO_EVENTS = 2 ** 53 - 1;

/** The summary of a full run (GET /api/runs/{id}), as the list and the feed have it. */
export function summaryOf(run) {
  return {
    id: run.id,
    state: run.state,
    source: run.source,
    user: run.user,
    session_key: run.session_key,
    prompt_excerpt: run.prompt_excerpt ?? String(run.prompt ?? '').slice(0, 200),
    executor: run.executor,
    created_at: run.created_at,
    started_at: run.started_at,
    finished_at: run.finished_at,
    error: run.error,
  };
}

export class RunsList {
  /** parts: { list, more, status }; nodes names executors; onError(err) reports failures. */
  constructor(api, parts, nodes, onError) {
    this.api = api;
    this.list = parts.list;
    this.more = parts.more;
    this.status = parts.status;
    this.nodes = nodes;
    this.onError = onError;
    this.filters = { q: '', state: '', source: '', session_key: '' };
    this.rows = new Map();
    this.active = new Set();
    this.nextBefore = null;
    this.limit = PAGE_SIZE; // rows the reader asked for
    this.trimmed = false; // rows were pushed out at the bottom: nextBefore is stale
    this.generation = 0;
    this.loaded = false;
    this.reloading = false;
    this.early = []; // feed runs that arrived while a reload was on its way
    this.fresh = new Map(); // new runs of this feed frame, added together once it is read
    this.unshown = new Map(); // run id -> its latest progress text, while it has no row
    this.selectedId = null;
    this.queue = new Map(); // queued run id -> { position, reason }
    this.queueTotal = 0;
    this.executorCount = 0;
    this.feedDown = false;
    this.more.addEventListener('click', () => this.loadMore());
  }

  clear() {
    this.generation += 1;
    this.rows.clear();
    this.active.clear();
    this.list.replaceChildren();
    this.nextBefore = null;
    this.loaded = false;
    this.reloading = false;
    this.early = [];
    this.fresh.clear();
    this.unshown.clear();
    this.more.hidden = true;
    setText(this.status, '');
  }

  setFilters(filters) {
    this.filters = { ...this.filters, ...filters };
    return this.reload();
  }

  params(extra = {}) {
    const { q, state, source, session_key } = this.filters;
    return { q: q.trim(), state, source, session_key, limit: PAGE_SIZE, ...extra };
  }

  /** Replace the list with the first page for the current filters. */
  async reload() {
    const generation = ++this.generation;
    // The page may be older than what the feed says meanwhile: keep the feed's news and
    // apply it on top of the page (upsert never moves a run's state backwards).
    this.reloading = true;
    this.early = [];
    setText(this.status, 'Loading…');
    this.list.setAttribute('aria-busy', 'true');
    try {
      const page = await this.api.get('api/runs', this.params());
      if (generation !== this.generation) return;
      // The rows are built anew: what active runs were last seen doing stays shown.
      for (const id of this.active) {
        const text = this.rows.get(id)?.progressEl.textContent;
        if (text) this.unshown.set(id, text);
      }
      this.rows.clear();
      this.active.clear();
      this.list.replaceChildren();
      this.loaded = true;
      this.limit = PAGE_SIZE;
      this.trimmed = false;
      for (const run of page.runs) this.insert(run, true).listed = true;
      this.nextBefore = page.next_before;
      this.reloading = false;
      for (const run of this.early.splice(0)) this.upsert(run);
      this.afterChange();
    } catch (err) {
      if (generation === this.generation) this.failed(err);
    } finally {
      if (generation === this.generation) {
        this.reloading = false;
        this.list.removeAttribute('aria-busy');
      }
    }
  }

  /** After a reconnect: merge the first page, keep the pages loaded below it. */
  async refresh() {
    if (!this.loaded) return this.reload();
    const generation = this.generation;
    try {
      const page = await this.api.get('api/runs', this.params());
      if (generation !== this.generation) return;
      const fresh = new Set(page.runs.map((run) => run.id));
      for (const run of page.runs) {
        const row = this.rows.get(run.id);
        if (row) row.listed = true;
        this.upsert(run);
      }
      const stale = [...this.active].filter((id) => !fresh.has(id)).slice(0, MAX_STALE_REFRESH);
      await Promise.all(stale.map((id) => this.refreshOne(id, generation)));
      this.afterChange();
    } catch (err) {
      if (generation === this.generation) this.failed(err);
    }
  }

  async refreshOne(id, generation) {
    try {
      const data = await this.api.get(`api/runs/${encodeURIComponent(id)}`, { after: NO_EVENTS });
      if (generation === this.generation) this.upsert(summaryOf(data.run));
    } catch (err) {
      if (err.name === 'Unauthorized') throw err;
      // Gone or unreachable: the row keeps what it knew; the next reconnect retries.
    }
  }

  async loadMore() {
    if (this.nextBefore == null && !this.trimmed) return;
    const generation = this.generation;
    this.more.disabled = true;
    try {
      // After a trim the cursor is stale: fetch from the top, one page more than shown.
      const extra = this.trimmed
        ? { limit: Math.min(MAX_PAGE, this.rows.size + PAGE_SIZE) }
        : { before: this.nextBefore };
      const page = await this.api.get('api/runs', this.params(extra));
      if (generation !== this.generation) return;
      const trimmed = this.trimmed;
      for (const run of page.runs) {
        if (this.rows.has(run.id)) this.upsert(run);
        else this.insert(run, !trimmed).listed = true;
      }
      this.limit = Math.max(this.limit, this.rows.size);
      this.trimmed = false;
      this.nextBefore = page.next_before;
      this.afterChange();
    } catch (err) {
      if (generation === this.generation) this.failed(err);
    } finally {
      this.more.disabled = false;
    }
  }

  failed(err) {
    setText(this.status, `Could not load runs: ${err.message}`);
    this.onError(err);
  }

  afterChange() {
    this.more.hidden = this.nextBefore == null && !this.trimmed;
    const shown = this.rows.size;
    if (!shown) setText(this.status, this.filtered() ? 'No runs match these filters.' : 'No runs yet.');
    else setText(this.status, `${shown} run${shown === 1 ? '' : 's'}${this.more.hidden ? '' : ' (more below)'}`);
  }

  filtered() {
    const { q, state, source, session_key } = this.filters;
    return Boolean(q.trim() || state || source || session_key);
  }

  /** Whether a run belongs in the list under the current filters (as the hub decides). */
  matches(run) {
    const { q, state, source, session_key } = this.filters;
    if (state && !state.split(',').includes(run.state)) return false;
    if (source && !source.split(',').includes(run.source)) return false;
    if (session_key && run.session_key !== session_key) return false;
    const text = q.trim().toLowerCase();
    if (!text) return true;
    return (
      run.id === q.trim() ||
      String(run.prompt_excerpt || '').toLowerCase().includes(text) ||
      String(run.user || '').toLowerCase().includes(text)
    );
  }

  /** A run from the feed or the API: update its row, add it, or drop it. */
  upsert(run) {
    if (this.reloading) {
      this.early.push(run);
      return;
    }
    if (!this.loaded) return;
    const row = this.rows.get(run.id);
    if (row) {
      if (rank(run.state) < rank(row.run.state)) return;
      row.run = { ...row.run, ...run };
      // The hub's search also looks at answers, which summaries lack: a row the hub
      // listed for this search stays unless its state or source no longer fit.
      const fits = this.matches(row.run) || (row.listed && this.matches({ ...row.run, prompt_excerpt: this.filters.q }));
      if (!fits && run.id !== this.selectedId) this.remove(run.id);
      else this.fill(row);
      return;
    }
    if (!this.matches(run) || this.belowLoadedPages(run)) return;
    // Gathered, then added newest first and only as many as the list holds: a burst of
    // thousands builds a page of rows, not thousands pushed out again at once.
    const seen = this.fresh.get(run.id);
    if (seen && rank(run.state) < rank(seen.state)) return;
    this.fresh.set(run.id, seen ? { ...seen, ...run } : run);
    if (this.fresh.size === 1) queueMicrotask(() => this.addFresh());
  }

  addFresh() {
    const runs = [...this.fresh.values()].sort((a, b) => b.created_at - a.created_at);
    this.fresh.clear();
    if (!this.loaded || this.reloading) {
      this.early.push(...runs);
      return;
    }
    let added = 0;
    for (const run of runs) {
      if (this.rows.has(run.id)) this.upsert(run);
      else if (added < this.limit || run.id === this.selectedId) {
        this.insert(run, false);
        added += 1;
      } else this.trimmed = true; // older than a page of newer ones: below, for "Load more"
    }
    this.trim();
    this.afterChange();
  }

  // With more pages on the server, a run older than the last row belongs to one of them.
  belowLoadedPages(run) {
    if (this.nextBefore == null && !this.trimmed) return false;
    const last = this.list.lastElementChild;
    const lastRun = last && this.rows.get(last.dataset.id)?.run;
    return Boolean(lastRun && run.created_at < lastRun.created_at);
  }

  /** A short progress text under an active run ("running `git status`"). */
  progress(runId, text) {
    if (!text) return;
    const row = this.rows.get(runId);
    if (row) {
      if (isActive(row.run.state)) setText(row.progressEl, text);
      return;
    }
    // No row yet: its run may come later (the list still loading) and should not show
    // a blank until the next event, which for a long command may be minutes away.
    this.unshown.delete(runId);
    this.unshown.set(runId, text);
    if (this.unshown.size > MAX_UNSHOWN_PROGRESS) this.unshown.delete(this.unshown.keys().next().value);
  }

  select(id) {
    const old = this.rows.get(this.selectedId);
    if (old) old.link.removeAttribute('aria-current');
    this.selectedId = id;
    const row = this.rows.get(id);
    if (row) row.link.setAttribute('aria-current', 'true');
  }

  /** Tick the elapsed time of active runs. */
  tick() {
    if (this.feedDown) return;
    const at = now();
    for (const id of this.active) {
      const row = this.rows.get(id);
      if (row) setText(row.elapsedEl, duration(elapsed(row.run, at)));
    }
  }

  /** The hub's queue head: { total, executors, runs: [{ id, position, reason }] }. */
  setQueue(queue) {
    if (!queue) return;
    const before = this.queue;
    this.queue = new Map((queue.runs || []).map((q) => [q.id, q]));
    this.queueTotal = queue.total || 0;
    this.executorCount = queue.executors || 0;
    for (const id of new Set([...before.keys(), ...this.queue.keys()])) {
      const row = this.rows.get(id);
      if (row) setText(row.execEl, this.execText(row.run));
    }
  }

  /** While the feed is down, active rows do not claim a state nobody can see. */
  setFeedDown(down) {
    if (down === this.feedDown) return;
    this.feedDown = down;
    this.list.dataset.feed = down ? 'down' : 'live';
    for (const id of this.active) {
      const row = this.rows.get(id);
      if (row) this.fill(row);
    }
  }

  /** Refresh the executor names (they come with the nodes). */
  renameExecutors() {
    for (const row of this.rows.values()) setText(row.execEl, this.execText(row.run));
  }

  /** Keep at most `limit` rows (and the open run's): push the oldest out at the bottom. */
  trim() {
    const keep = this.limit + (this.rows.has(this.selectedId) ? 1 : 0);
    let el = this.list.lastElementChild;
    while (this.rows.size > keep && el) {
      const previous = el.previousElementSibling;
      const id = el.dataset.id;
      if (id !== this.selectedId) {
        el.remove();
        this.rows.delete(id);
        this.active.delete(id);
        this.trimmed = true;
      }
      el = previous;
    }
  }

  remove(id) {
    const row = this.rows.get(id);
    if (!row) return;
    row.el.remove();
    this.rows.delete(id);
    this.active.delete(id);
    this.afterChange();
  }

  insert(run, atEnd) {
    const row = this.build(run);
    this.rows.set(run.id, row);
    if (atEnd) this.list.append(row.el);
    else this.list.insertBefore(row.el, this.firstOlderThan(run));
    this.fill(row);
    const text = this.unshown.get(run.id);
    if (text !== undefined) {
      this.unshown.delete(run.id);
      if (isActive(run.state)) setText(row.progressEl, text);
    }
    return row;
  }

  // New runs come from the feed almost always newest: scan from the top.
  firstOlderThan(run) {
    for (const el of this.list.children) {
      const other = this.rows.get(el.dataset.id)?.run;
      if (other && other.created_at < run.created_at) return el;
    }
    return null;
  }

  build(run) {
    const badge = h('span', { class: 'badge' });
    const whoEl = h('span', { class: 'row-who' });
    const elapsedEl = h('span', { class: 'row-elapsed' });
    const madeEl = h('time', { class: 'row-made' });
    const excerptEl = h('span', { class: 'row-excerpt' });
    const execEl = h('span', { class: 'row-exec' });
    const progressEl = h('span', { class: 'row-progress' });
    const link = h(
      'a',
      { class: 'run-link', href: `#/runs/${encodeURIComponent(run.id)}` },
      h('span', { class: 'row-top' }, badge, whoEl, madeEl, elapsedEl),
      excerptEl,
      h('span', { class: 'row-bottom' }, execEl, progressEl),
    );
    if (run.id === this.selectedId) link.setAttribute('aria-current', 'true');
    const el = h('li', { class: 'run-row', dataset: { id: run.id } }, link);
    return { run, el, link, badge, whoEl, madeEl, elapsedEl, excerptEl, execEl, progressEl };
  }

  fill(row) {
    const { run } = row;
    const unknown = this.feedDown && isActive(run.state);
    row.el.dataset.state = run.state;
    row.badge.dataset.state = unknown ? 'unknown' : run.state;
    setText(row.badge, unknown ? 'state unknown' : stateLabel(run.state));
    if (row.madeAt !== run.created_at) {
      row.madeAt = run.created_at;
      row.madeEl.dateTime = isoTime(run.created_at);
      setText(row.madeEl, madeLabel(run.created_at, now()));
      row.madeEl.title = FULL.format(new Date(run.created_at * 1000));
    }
    setText(row.whoEl, originLabel(run));
    setText(row.excerptEl, oneLine(run.prompt_excerpt));
    setText(row.execEl, this.execText(run));
    setText(row.elapsedEl, duration(elapsed(run, now())));
    row.link.title = unknown
      ? `${run.id} · last known ${stateLabel(run.state)}; the live feed is down`
      : `${run.id} · ${stateLabel(run.state)}`;
    if (isActive(run.state)) {
      this.active.add(run.id);
    } else {
      this.active.delete(run.id);
      setText(row.progressEl, run.error?.message ? oneLine(String(run.error.message).split('\n', 1)[0]) : '');
    }
  }

  execText(run) {
    if (run.executor) return `on ${this.nodes.nameOf(run.executor)}`;
    if (!isActive(run.state)) return 'never ran';
    const queued = this.queue.get(run.id);
    if (!queued) {
      if (this.queueTotal > this.queue.size) return `queued, behind the first ${this.queue.size}`;
      return 'waiting for an executor';
    }
    const why = queued.detail || waitReason(queued.reason, this.executorCount);
    return `#${queued.position} in queue · ${why}`;
  }
}

const WAIT_REASONS = {
  conversation: () => 'after an earlier run of its conversation',
  no_executor: () => 'no executor connected',
  all_busy: (n) => (n === 1 ? 'the executor is busy' : `all ${n} executors busy`),
  dispatching: () => 'starting',
};

function waitReason(reason, executors) {
  return (WAIT_REASONS[reason] || (() => String(reason || 'waiting')))(executors);
}

/** When a run was made: a time today, else a short date. */
// Made once: a formatter per call costs more than the rest of a row.
const TIME = new Intl.DateTimeFormat([], { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
const DAY = new Intl.DateTimeFormat([], { month: 'short', day: 'numeric' });
const FULL = new Intl.DateTimeFormat([], { dateStyle: 'medium', timeStyle: 'medium' });

export function madeLabel(ts, at) {
  if (!ts) return '';
  const date = new Date(ts * 1000);
  const today = new Date(at * 1000);
  return date.toDateString() === today.toDateString() ? TIME.format(date) : DAY.format(date);
}

function oneLine(text) {
  return String(text ?? '').replace(/\s+/g, ' ').trim();
}
