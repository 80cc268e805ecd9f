// A run's timeline: one entry per event, in seq order, growing while the run works.
//
// codex reports an item twice (item.started, then item.completed with the exit code
// and output); both land on one entry, keyed by the item id, which is replaced in place.

import { h } from './dom.js';
import { clock, isoTime, lineCount, offset, stateLabel, tokens } from './fmt.js';

// Output longer than this is folded behind a <details>, so long logs do not bury the rest.
const FOLD_LINES = 12;
const FOLD_CHARS = 1500;
const FAILED_STATES = new Set(['failed', 'timed_out', 'rejected']);

export class Timeline {
  constructor(list, createdAt) {
    this.list = list;
    this.createdAt = createdAt;
    this.items = new Map(); // codex item id -> entry element
  }

  /** Add one event ({seq, ts, kind, ...}); the caller guarantees seq order, no repeats. */
  add(event) {
    // The answer as it is written shows in the Answer section, not as entries here.
    if (event.kind === 'answer_delta') return;
    const data = event.kind === 'codex' ? event.data || {} : null;
    // A new codex process (a resume retried as a new conversation) numbers items anew.
    if (data?.type === 'thread.started') this.items.clear();
    const entry = this.entry(event, data);
    const itemId = data?.item?.id;
    const old = itemId != null ? this.items.get(itemId) : null;
    if (old) old.replaceWith(entry);
    else this.list.append(entry);
    if (itemId != null) this.items.set(itemId, entry);
  }

  entry(event, data) {
    const build = data ? codexEntry : (KINDS[event.kind] || otherEntry);
    const { title, body = [], tone = event.kind } = build(event, data);
    return h(
      'li',
      { class: `ev ev-${tone}`, dataset: { seq: String(event.seq), kind: event.kind } },
      h(
        'time',
        { class: 'ev-time', datetime: isoTime(event.ts), title: clock(event.ts) },
        offset(event.ts - this.createdAt),
      ),
      h('div', { class: 'ev-body' }, h('div', { class: 'ev-title' }, title), body),
    );
  }
}

// ---- hub and executor events ----

const KINDS = {
  state(event) {
    const state = event.state;
    const title = ['State', h('span', { class: 'badge', dataset: { state } }, stateLabel(state))];
    const body = [];
    if (event.position > 0) body.push(text(`${event.position} ahead in this conversation`));
    if (event.error?.message) body.push(text(firstLine(event.error.message), 'ev-error-text'));
    return { title, body, tone: FAILED_STATES.has(state) ? 'error' : 'state' };
  },
  assigned(event) {
    return { title: `Assigned to executor ${event.executor ?? ''}`.trim() };
  },
  note(event) {
    return { title: 'Note', body: [text(event.message ?? event.data?.message ?? event.summary)] };
  },
  steer(event) {
    return { title: 'Added to the running turn', body: [text(event.message ?? '')] };
  },
  turn_diff(event) {
    return { title: 'Diff updated', body: [folded('The turn\'s diff so far', event.diff ?? '', false)] };
  },
  optimizer(event) {
    const body = [];
    if (event.message) body.push(text(event.message));
    if (event.prompt) body.push(folded('Prompt for codex', event.prompt, false));
    const tone = event.decision === 'rejected' ? 'error' : 'optimizer';
    return { title: `Prompt optimizer: ${event.decision ?? 'decided'}`, body, tone };
  },
};

// A kind this page does not know yet (a newer executor): show it raw rather than drop it.
function otherEntry(event) {
  const rest = { ...event };
  for (const name of ['seq', 'ts', 'kind']) delete rest[name];
  return { title: event.summary || event.kind || 'event', body: [raw(rest)] };
}

// ---- codex's own events (raw JSON from `codex exec --json`) ----

function codexEntry(event, data) {
  switch (data.type) {
    case 'thread.started':
      return { title: 'codex started', body: data.thread_id ? [muted(`thread ${data.thread_id}`)] : [] };
    case 'turn.started':
      return { title: 'Turn started' };
    case 'turn.completed':
      return { title: 'Turn completed', body: data.usage ? [muted(usageText(data.usage))] : [] };
    case 'turn.failed':
      return { title: 'Turn failed', body: [text(errorText(data), 'ev-error-text')], tone: 'error' };
    case 'error':
      return { title: 'codex error', body: [text(errorText(data), 'ev-error-text')], tone: 'error' };
    default:
      if (data.item) return itemEntry(data.item, data.type);
      return { title: event.summary || data.type || 'codex event', body: [raw(data)] };
  }
}

function itemEntry(item, type) {
  const done = type === 'item.completed';
  switch (item.type) {
    case 'command_execution':
      return commandEntry(item);
    case 'file_change':
      return {
        title: done ? 'Files changed' : 'Changing files',
        body: [
          h(
            'ul',
            { class: 'file-list' },
            (item.changes || []).map((c) =>
              h('li', {}, h('span', { class: 'file-kind' }, c.kind ?? ''), ' ', h('code', {}, c.path ?? '')),
            ),
          ),
        ],
      };
    case 'agent_message':
      // Folded: the final message is the answer, shown in full once, in its own section.
      return { title: 'Message', body: [messageFold(item.text ?? '')] };
    case 'reasoning':
      return { title: 'Thinking', body: [foldedText(item.text ?? '', 'ev-text ev-reasoning')] };
    case 'todo_list':
      return { title: 'Plan', body: [todoList(item.items || [])] };
    case 'mcp_tool_call':
      return {
        title: `Tool ${[item.server, item.tool].filter(Boolean).join('.')}`,
        body: [muted(item.status ?? (done ? 'done' : 'started'))],
        tone: item.status === 'failed' ? 'error' : 'codex',
      };
    case 'web_search':
      return { title: 'Web search', body: [text(item.query ?? '')] };
    case 'error':
      return { title: 'Warning', body: [text(item.message ?? '')] };
    default:
      return { title: item.type || 'item', body: [raw(item)] };
  }
}

function commandEntry(item) {
  const output = String(item.aggregated_output ?? '');
  const code = item.exit_code;
  let status;
  if (typeof code === 'number') {
    status = h('span', { class: `exit ${code === 0 ? 'exit-ok' : 'exit-bad'}` }, `exit ${code}`);
  } else if (item.status === 'in_progress' || !item.status) {
    status = h('span', { class: 'exit exit-running' }, 'running…');
  } else {
    status = h('span', { class: `exit ${item.status === 'completed' ? 'exit-ok' : 'exit-bad'}` }, item.status);
  }
  const failed = typeof code === 'number' && code !== 0;
  const head = h('div', { class: 'cmd-head' }, h('code', { class: 'cmd-line' }, `$ ${item.command ?? ''}`), status);
  const body = [head];
  if (output) body.push(outputBlock(output));
  return { title: 'Command', body, tone: failed ? 'error' : 'command' };
}

function outputBlock(output) {
  const lines = lineCount(output);
  if (lines <= FOLD_LINES && output.length <= FOLD_CHARS) {
    return h('pre', { class: 'text-block output', tabindex: '0' }, output);
  }
  return folded(`Output · ${lines} lines`, output, false);
}

// ---- small builders ----

function text(value, cls = 'ev-text') {
  return h('p', { class: cls }, String(value ?? ''));
}

function muted(value) {
  return h('p', { class: 'ev-text muted' }, value);
}

function folded(label, content, open) {
  return h(
    'details',
    { class: 'output', open },
    h('summary', {}, label),
    h('pre', { class: 'text-block', tabindex: '0' }, content),
  );
}

function foldedText(content, cls) {
  if (content.length <= FOLD_CHARS) return text(content, cls);
  return h('details', { class: 'output' }, h('summary', {}, `${content.slice(0, 120)}…`), text(content, cls));
}

function todoList(items) {
  return h(
    'ul',
    { class: 'todo-list' },
    items.map((entry) =>
      h(
        'li',
        { class: entry.completed ? 'todo-done' : null },
        `${entry.completed ? '☑' : '☐'} ${entry.text ?? ''}`,
      ),
    ),
  );
}

function raw(value) {
  return h(
    'details',
    { class: 'raw' },
    h('summary', {}, 'raw event'),
    h('pre', { class: 'text-block', tabindex: '0' }, JSON.stringify(value, null, 2)),
  );
}

function errorText(data) {
  return data.error?.message ?? data.message ?? 'codex reported an error';
}

/** "in 1,234 (cached 1,000) · out 56 tokens". */
export function usageText(usage) {
  const cached = usage.cached_input_tokens ? ` (cached ${tokens(usage.cached_input_tokens)})` : '';
  return `in ${tokens(usage.input_tokens)}${cached} · out ${tokens(usage.output_tokens)} tokens`;
}

function firstLine(message) {
  const line = String(message).split('\n', 1)[0];
  return line.length > 240 ? `${line.slice(0, 240)}…` : line;
}

function messageFold(message) {
  const line = firstLine(message);
  if (line === message && message.length <= 160) return h('div', { class: 'ev-message' }, message);
  return h(
    'details',
    { class: 'ev-message-fold' },
    h('summary', {}, line.length > 160 ? `${line.slice(0, 160)}…` : line),
    h('div', { class: 'ev-message' }, message),
  );
}
