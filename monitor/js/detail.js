// The open run: prompts, a timeline that grows while it works, then the raw answer.
// With the app-server engine the answer shows as codex writes it (`answer_delta`
// events: the message being written, a new message starting it over).
//
// Events come from the feed; anything missed (opened mid-run, a gap in seq, a
// reconnect) is fetched with GET /api/runs/{id}?after=<last seq>. Events are applied in
// seq order exactly once, whatever the mix of feed and catch-up that delivered them.

import { now } from './clock.js';
import { copyText, h, setText } from './dom.js';
import { clock, duration, elapsed, isActive, originLabel, stateLabel, tokens } from './fmt.js';
import { answerView } from './markdown.js';
import { Timeline } from './timeline.js';

// running <-> awaiting_approval: either may follow the other.
const STATE_RANK = { queued: 0, optimizing: 1, running: 2, awaiting_approval: 2 };
const rank = (state) => STATE_RANK[state] ?? 3;

export class RunDetail {
  /** handlers: onError(err), onChange(run|null) whenever the open run changes. */
  constructor(api, root, nodes, handlers) {
    this.api = api;
    this.root = root;
    this.nodes = nodes;
    this.handlers = handlers;
    this.placeholder = root.firstElementChild;
    this.reset(null);
  }

  reset(id) {
    this.token = (this.token ?? 0) + 1; // replies for an earlier open are ignored
    this.id = id;
    this.run = null;
    this.lastSeq = 0;
    this.pending = []; // feed events that arrived before the first load finished
    this.changedMeanwhile = false; // a feed `run` frame arrived before it, too
    this.inflight = null;
    this.again = false;
    this.opening = null;
    this.ui = null;
  }

  /** While the feed is down, an active run's state is not known: say so. */
  setFeedDown(down) {
    this.feedDown = down;
    if (this.run) this.renderHead();
  }

  current() {
    return this.run;
  }

  close() {
    this.reset(null);
    this.root.replaceChildren(this.placeholder);
    this.handlers.onChange(null);
  }

  /** Show run `id`; resolves once it is shown (or its error is). */
  open(id) {
    if (id === this.id && (this.run || this.opening)) return this.opening || Promise.resolve();
    this.reset(id);
    const token = this.token;
    this.opening = this.load(id, token).finally(() => {
      if (token === this.token) this.opening = null;
    });
    return this.opening;
  }

  async load(id, token) {
    this.root.replaceChildren(h('p', { class: 'placeholder muted', role: 'status' }, 'Loading the run…'));
    let data;
    try {
      data = await this.api.get(runPath(id));
    } catch (err) {
      if (token !== this.token) return;
      const message = err.status === 404 ? `There is no run with id ${id}.` : `Could not load the run: ${err.message}`;
      this.root.replaceChildren(h('p', { class: 'notice notice-error', role: 'alert' }, message));
      this.handlers.onError(err);
      return;
    }
    if (token !== this.token) return;
    this.render(data.run);
    this.root.scrollTop = 0;
    this.renderApproval(data.approval);
    this.applyEvents(data.events);
    const early = this.pending;
    this.pending = [];
    this.applyEvents(early.sort((a, b) => a.seq - b.seq));
    this.handlers.onChange(this.run);
    // The reply may predate what the feed said during the load (the answer, say).
    if (this.changedMeanwhile) this.catchUp();
  }

  /** Fetch what the page has not seen of the open run (fields and events after lastSeq). */
  catchUp() {
    if (!this.run) return Promise.resolve();
    if (this.inflight) {
      this.again = true;
      return this.inflight;
    }
    this.inflight = this.fetchMissing().finally(() => {
      this.inflight = null;
    });
    return this.inflight;
  }

  async fetchMissing() {
    const token = this.token;
    do {
      this.again = false;
      let data;
      try {
        data = await this.api.get(runPath(this.id), { after: this.lastSeq });
      } catch (err) {
        // Unreachable: the feed reconnects and calls catchUp again after `ready`.
        if (err.name === 'Unauthorized') this.handlers.onError(err);
        return;
      }
      if (token !== this.token) return;
      this.updateRun(data.run);
      this.renderApproval(data.approval);
      this.applyEvents(data.events, true);
    } while (this.again && token === this.token);
  }

  /** A run summary from the feed. */
  onRun(summary) {
    if (summary.id !== this.id) return;
    if (!this.run) {
      this.changedMeanwhile = true;
      return;
    }
    this.updateRun(summary);
    this.catchUp(); // the summary lacks the answer, usage and effective prompt
  }

  /** An event from the feed. */
  onEvent(runId, event) {
    if (runId !== this.id) return;
    if (!this.run) this.pending.push(event);
    else this.applyEvents([event], true);
    // codex asked, or someone decided: the request's state comes with the run.
    if (event.kind === 'approval' && this.run) this.catchUp();
  }

  /** Apply events in seq order; `follow`: keep a reader who is at the end there. */
  applyEvents(events, follow = false) {
    const stick = follow && this.atBottom();
    for (const event of events) {
      if (event.seq <= this.lastSeq) continue;
      if (event.seq > this.lastSeq + 1) {
        this.catchUp(); // a gap: fetch it rather than show events out of order
        break;
      }
      this.ui.timeline.add(event);
      this.lastSeq = event.seq;
      if (event.kind === 'answer_delta') this.growAnswer(event);
      if (event.kind === 'workspace' && !this.ui.sawWorkspace) {
        this.ui.sawWorkspace = true; // its diff is worth a fetch once the run has ended
        this.ui.changesFor = null;
        this.renderChanges();
      }
      if (event.kind === 'state' && rank(event.state) >= rank(this.run.state)) {
        this.run.state = event.state;
        this.renderHead();
      }
    }
    if (stick) this.root.scrollTop = this.root.scrollHeight;
  }

  // Follow the timeline only when the reader is already at its end.
  atBottom() {
    const el = this.root;
    return el.scrollHeight > el.clientHeight && el.scrollHeight - el.scrollTop - el.clientHeight < 40;
  }

  updateRun(fields) {
    if (rank(fields.state) < rank(this.run.state)) return; // a stale reply
    const before = this.run;
    this.run = { ...this.run, ...fields };
    this.renderHead();
    this.renderPrompts();
    this.renderOutcome();
    if (before.session_key !== this.run.session_key || before.state !== this.run.state) {
      this.handlers.onChange(this.run);
    }
  }

  tick() {
    if (this.run && isActive(this.run.state) && !this.feedDown) {
      setText(this.ui.elapsed, duration(elapsed(this.run, now())));
    }
  }

  // ---- rendering ----

  render(run) {
    this.run = run;
    const ui = {
      title: h('h2', { id: 'detail-title', tabindex: '-1' }, run.id),
      badge: h('span', { class: 'badge' }),
      elapsed: h('span', { class: 'muted', title: 'time since the run arrived' }),
      cancel: h('button', { class: 'btn btn-danger btn-small', type: 'button' }, 'Cancel run'),
      cancelStatus: h('span', { class: 'muted', role: 'status' }),
      approval: h('section', { class: 'detail-section approval', 'aria-label': 'Approval', hidden: true }),
      meta: h('dl', { class: 'detail-meta' }),
      prompt: h('pre', { class: 'text-block prompt', tabindex: '0' }),
      effective: h('div', { class: 'effective' }),
      timelineList: h('ol', { class: 'timeline', 'aria-label': 'Timeline' }),
      outcome: h('div', { class: 'outcome' }),
      changes: h('div', { class: 'changes' }),
      usage: h('div', { class: 'usage-timings' }),
      // The answer being written: its message id and text (app-server engine).
      writing: { item: null, text: '' },
      writingText: h('pre', { class: 'text-block live-answer', tabindex: '0', 'aria-live': 'off' }),
    };
    ui.timeline = new Timeline(ui.timelineList, run.created_at);
    ui.cancel.addEventListener('click', () => this.cancel());
    this.ui = ui;
    const back = h('button', { class: 'btn btn-quiet btn-small back-link', type: 'button' }, '← Back to runs');
    // Back where the reader came from: the run's own row (else the list's heading).
    back.addEventListener('click', () => {
      const link = document.querySelector(`.run-row[data-id="${CSS.escape(run.id)}"] a`);
      (link || document.getElementById('runs-title'))?.focus();
    });
    this.root.replaceChildren(
      back,
      h('header', { class: 'detail-head' }, ui.title, ui.badge, ui.elapsed, ui.cancelStatus, ui.cancel),
      ui.approval,
      ui.meta,
      section('Prompt', ui.prompt),
      section('Prompt codex got', ui.effective),
      section('Timeline', ui.timelineList),
      section('Answer', ui.outcome),
      section('Changes', ui.changes),
      section('Usage and timings', ui.usage),
    );
    this.root.setAttribute('aria-labelledby', 'detail-title');
    this.renderHead();
    this.renderPrompts();
    this.renderOutcome();
  }

  renderHead() {
    const { run, ui } = this;
    const unknown = this.feedDown && isActive(run.state);
    ui.badge.dataset.state = unknown ? 'unknown' : run.state;
    setText(ui.badge, unknown ? `state unknown (last: ${stateLabel(run.state)})` : stateLabel(run.state));
    setText(ui.elapsed, duration(elapsed(run, now())));
    ui.cancel.hidden = !isActive(run.state);
    const items = [
      ['From', originLabel(run)],
      ['Executor', run.executor ? this.nodes.nameOf(run.executor) : 'not assigned'],
      ['Conversation', this.conversationLink(run.session_key)],
      ['Created', clock(run.created_at)],
    ];
    ui.meta.replaceChildren(...items.map(([name, value]) => h('div', {}, h('dt', {}, name), h('dd', {}, value))));
  }

  conversationLink(key) {
    if (!key) return 'none';
    const show = h('button', { class: 'btn btn-quiet btn-small', type: 'button', title: key }, 'its runs');
    show.addEventListener('click', () => this.handlers.onConversation?.(key));
    const read = h('a', { href: `#/conversations/${encodeURIComponent(key)}` }, 'read as a chat');
    return [h('code', {}, key), ' ', show, ' ', read];
  }

  renderPrompts() {
    const { run, ui } = this;
    setText(ui.prompt, run.prompt ?? run.prompt_excerpt ?? '');
    let content;
    if (run.effective_prompt == null) {
      content = h('p', { class: 'muted' }, isActive(run.state) ? 'Not handed to codex yet.' : 'codex never got this run.');
    } else if (run.effective_prompt === run.prompt) {
      content = h('p', { class: 'muted' }, 'The same prompt, unchanged.');
    } else {
      content = h('pre', { class: 'text-block', tabindex: '0' }, run.effective_prompt);
    }
    ui.effective.replaceChildren(content);
  }

  renderOutcome() {
    const { run, ui } = this;
    // Rebuilt only when what it shows changes: a reader scrolled into a long answer
    // stays where they are, and the header (sticky) stays in view when the run ends.
    const live = ui.writing.text ? 'writing' : 'active';
    const key = isActive(run.state) ? live : `${run.state}\u0000${run.answer ?? ''}\u0000${run.error?.message ?? ''}`;
    if (ui.outcomeKey !== key) {
      ui.outcomeKey = key;
      const top = this.root.scrollTop;
      if (isActive(run.state) && ui.writing.text) {
        ui.outcome.replaceChildren(h('p', { class: 'muted' }, 'codex is writing the answer…'), ui.writingText);
      } else if (isActive(run.state)) {
        ui.outcome.replaceChildren(h('p', { class: 'muted' }, 'The answer appears here when codex finishes.'));
      } else {
        ui.outcome.replaceChildren(...this.answerParts());
      }
      this.root.scrollTop = top;
    }
    ui.usage.replaceChildren(usageList(run));
    this.renderChanges();
  }

  /** One piece of the answer as codex writes it: shown while the run works. */
  growAnswer(event) {
    const { ui } = this;
    const writing = ui.writing;
    if (event.item_id !== writing.item) {
      writing.item = event.item_id;
      writing.text = '';
    }
    writing.text += event.delta ?? '';
    setText(ui.writingText, writing.text);
    this.renderOutcome(); // shows the text once, the first time; later deltas just grow it
  }

  /** The run's workspace changes (GET /api/runs/{id}/diff), once it has ended. */
  async renderChanges() {
    const { run, ui } = this;
    if (isActive(run.state)) {
      if (ui.changesFor !== 'active') {
        ui.changesFor = 'active';
        ui.changes.replaceChildren(h('p', { class: 'muted' }, 'What the run changed shows here when it ends.'));
      }
      return;
    }
    if (ui.changesFor === run.id) return;
    ui.changesFor = run.id;
    if (!ui.sawWorkspace) {
      ui.changes.replaceChildren(h('p', { class: 'muted' }, 'This run recorded no repository changes.'));
      return;
    }
    const token = this.token;
    let diff;
    try {
      diff = await this.api.get(`${runPath(run.id)}/diff`);
    } catch (err) {
      if (token !== this.token) return;
      const text = err.status === 404 ? 'This run recorded no repository changes.' : `Could not load the changes: ${err.message}`;
      ui.changes.replaceChildren(h('p', { class: 'muted' }, text));
      if (err.name === 'Unauthorized') this.handlers.onError(err);
      return;
    }
    if (token !== this.token) return;
    ui.changes.replaceChildren(...this.changesParts(diff));
  }

  changesParts(diff) {
    const parts = [];
    const where = [diff.repo, diff.branch && `branch ${diff.branch}`, diff.base_branch && `from ${diff.base_branch}`];
    parts.push(h('p', { class: 'changes-summary' }, [where.filter(Boolean).join(', '), diff.changes ? `: ${diff.changes}` : ''].join('')));
    if (diff.pr_url) {
      parts.push(h('p', { class: 'changes-pr' }, 'Pull request: ', h('a', { href: safeUrl(diff.pr_url), rel: 'noopener noreferrer', target: '_blank' }, diff.pr_url)));
    }
    if (diff.push_error?.message) parts.push(h('p', { class: 'notice notice-error' }, `Not pushed: ${diff.push_error.message}`));
    const text = diff.diff || '';
    if (!text) {
      parts.push(h('p', { class: 'muted' }, 'No changes.'));
      return parts;
    }
    const lines = text.replace(/\n$/, '').split('\n');
    parts.push(h('pre', { class: 'text-block diff', tabindex: '0', 'aria-label': 'The conversation\'s diff' }, lines.map((line) => h('span', { class: diffLineClass(line) }, `${line}\n`))));
    if (diff.truncated) parts.push(h('p', { class: 'muted' }, 'The diff was cut short.'));
    if (!diff.pr_url && this.run.session_key) {
      const status = h('span', { class: 'muted', role: 'status' });
      const button = h('button', { class: 'btn btn-primary btn-small', type: 'button' }, 'Open PR');
      button.addEventListener('click', () => this.openPr(button, status));
      parts.push(h('div', { class: 'answer-bar' }, button, status));
    }
    return parts;
  }

  /** Commit, push and open a pull request: a run in this conversation with open_pr. */
  async openPr(button, status) {
    const run = this.run;
    button.disabled = true;
    setText(status, 'Starting…');
    try {
      const reply = await this.api.post('api/runs', { prompt: '!pr', session_key: run.session_key, open_pr: true });
      setText(status, `Started ${reply.run.id}: its changes show the pull request.`);
      this.handlers.onStarted?.(reply.run);
    } catch (err) {
      setText(status, `Could not open a pull request: ${err.message}`);
      button.disabled = false;
      if (err.name === 'Unauthorized') this.handlers.onError(err);
    }
  }

  answerParts() {
    const { run } = this;
    const parts = [];
    if (run.error?.message) parts.push(errorNotice(run.error));
    if (run.answer) {
      const status = h('span', { class: 'muted', role: 'status' });
      const copy = h('button', { class: 'btn btn-small', type: 'button' }, 'Copy answer');
      copy.addEventListener('click', async () => {
        try {
          await copyText(run.answer);
          setText(status, 'Copied.');
        } catch (err) {
          setText(status, `Could not copy: ${err.message}`);
        }
      });
      parts.push(h('div', { class: 'answer-bar' }, copy, status));
      parts.push(...answerView(run.answer, `answer-${run.id}`));
    } else if (!run.error) {
      parts.push(h('p', { class: 'muted' }, 'codex gave no answer.'));
    }
    return parts;
  }

  /** codex's approval request (GET /api/runs/{id} `approval`): buttons while pending,
   * who decided and when afterwards; nothing when there is none. */
  renderApproval(approval) {
    const { ui } = this;
    if (!ui) return;
    if (!approval) {
      ui.approval.hidden = true;
      ui.approvalKey = null;
      return;
    }
    const key = `${approval.approval_id}\u0000${approval.state}`;
    if (ui.approvalKey === key) return;
    ui.approvalKey = key;
    ui.approval.hidden = false;
    const request = approval.request || {};
    const what = request.kind === 'file_change'
      ? (request.changes || []).map((c) => c.diff || c.path || '').join('\n')
      : request.command || '';
    const parts = [
      h('h3', {}, request.kind === 'file_change' ? 'codex asks to change files' : 'codex asks to run a command'),
      h('pre', { class: 'text-block', tabindex: '0' }, what),
    ];
    if (request.reason) parts.push(h('p', {}, `Why: ${request.reason}`));
    if (approval.state === 'pending') {
      const status = h('span', { class: 'muted', role: 'status' });
      const choices = [
        ['approve', 'Approve', 'btn btn-primary btn-small'],
        ['approve_session', 'Approve for this conversation', 'btn btn-small'],
        ['deny', 'Deny', 'btn btn-danger btn-small'],
      ];
      const buttons = choices.map(([decision, label, cls]) => {
        const button = h('button', { class: cls, type: 'button', 'data-decision': decision }, label);
        button.addEventListener('click', () => this.decide(approval.approval_id, decision, buttons, status));
        return button;
      });
      parts.push(h('div', { class: 'answer-bar approval-choices' }, ...buttons, status));
    } else {
      const words = { approve: 'Approved', approve_session: 'Approved for this conversation', deny: 'Denied', expired: 'No longer waiting' };
      const word = words[approval.decision] || approval.decision;
      const line = approval.by === 'timeout'
        ? `${word}: nobody decided in time (at ${clock(approval.decided_at)}).`
        : `${word} by ${approval.by} at ${clock(approval.decided_at)}.`;
      parts.push(h('p', { class: 'approval-decided', role: 'status' }, line));
    }
    ui.approval.replaceChildren(...parts);
  }

  /** Decide the request (POST /api/runs/{id}/approval); the first decision wins. */
  async decide(approvalId, decision, buttons, status) {
    const id = this.id;
    for (const button of buttons) button.disabled = true;
    setText(status, 'Sending…');
    try {
      await this.api.post(`${runPath(id)}/approval`, { decision, approval_id: approvalId });
      if (id === this.id) this.catchUp();
    } catch (err) {
      if (id !== this.id) return;
      setText(status, err.message);
      if (err.status === 409) this.catchUp();
      else for (const button of buttons) button.disabled = false;
      if (err.name === 'Unauthorized') this.handlers.onError(err);
    }
  }

  async cancel() {
    const { ui } = this;
    const id = this.id;
    ui.cancel.disabled = true;
    setText(ui.cancelStatus, 'Cancelling…');
    try {
      await this.api.post(`${runPath(id)}/cancel`);
      if (id === this.id) setText(ui.cancelStatus, 'Cancel requested.');
    } catch (err) {
      if (id !== this.id) return;
      setText(ui.cancelStatus, err.status === 409 ? 'It had already ended.' : `Could not cancel: ${err.message}`);
      if (err.name === 'Unauthorized') this.handlers.onError(err);
    } finally {
      ui.cancel.disabled = false;
    }
  }
}

/** One clear line (the first of the message), the rest folded below it. */
export function errorNotice(error) {
  const message = String(error.message);
  const first = message.split('\n', 1)[0];
  const line = first.length > 240 ? `${first.slice(0, 240)}…` : first;
  const notice = h('div', { class: 'notice notice-error', role: 'alert' }, h('p', { class: 'error-line' }, line));
  if (line !== message || error.code) {
    notice.append(
      h(
        'details',
        { class: 'error-detail' },
        h('summary', {}, 'Details'),
        error.code ? h('p', {}, `code: ${error.code}`) : null,
        line !== message ? h('pre', { class: 'text-block', tabindex: '0' }, message) : null,
      ),
    );
  }
  return notice;
}

/** The CSS class of one diff line: added, removed, a hunk header, a file header. */
function diffLineClass(line) {
  if (line.startsWith('+++') || line.startsWith('---') || line.startsWith('diff ')) return 'diff-file';
  if (line.startsWith('+')) return 'diff-add';
  if (line.startsWith('-')) return 'diff-del';
  if (line.startsWith('@@')) return 'diff-hunk';
  return 'diff-ctx';
}

/** Only http(s) links are made clickable. */
function safeUrl(url) {
  return /^https?:\/\//i.test(String(url)) ? String(url) : '#';
}

function runPath(id) {
  return `api/runs/${encodeURIComponent(id)}`;
}

function section(title, body) {
  return h('section', { class: 'detail-section' }, h('h3', {}, title), body);
}

function usageList(run) {
  const rows = [];
  const usage = run.usage || {};
  if (run.usage) {
    rows.push(['Input tokens', tokens(usage.input_tokens)]);
    rows.push(['Cached input tokens', tokens(usage.cached_input_tokens)]);
    rows.push(['Output tokens', tokens(usage.output_tokens)]);
  }
  const at = now();
  if (run.started_at) rows.push(['Waited', duration(run.started_at - run.created_at)]);
  if (run.started_at) rows.push(['Ran', duration((run.finished_at || at) - run.started_at)]);
  rows.push(['Total', duration(elapsed(run, at))]);
  if (run.finished_at) rows.push(['Finished', clock(run.finished_at)]);
  return h('dl', { class: 'usage' }, rows.map(([name, value]) => [h('dt', {}, name), h('dd', {}, value)]));
}
