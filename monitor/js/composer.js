// The composer: a prompt typed on the page starts a run (POST /api/runs), optionally in
// the open run's conversation, and the new run is opened so its answer shows up there.
// Into a conversation whose run is working, the hub may add the prompt to that run's
// running turn instead (STEER_MODE): the reply says `steered`, and that run is opened.
// Its picker offers where the run may go: every label and executor name ever announced
// (GET /api/targets), and those of the executors that connect meanwhile.

import { setText } from './dom.js';

export class Composer {
  /** parts: { form, prompt, repo, target, keep, keepLabel, send, status }; onStarted(runSummary). */
  constructor(api, parts, onStarted, onError) {
    this.api = api;
    this.parts = parts;
    this.onStarted = onStarted;
    this.onError = onError;
    this.sessionKey = null;
    this.labels = new Set();
    this.names = new Set();
    parts.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submit();
    });
    parts.prompt.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.submit();
      }
    });
    this.follow(null);
  }

  /** The open run changed: offer to continue its conversation (when it has one). */
  follow(run) {
    const key = run?.session_key || null;
    const { keep, keepLabel } = this.parts;
    if (key !== this.sessionKey) keep.checked = false;
    this.sessionKey = key;
    keep.disabled = !key;
    keepLabel.title = key ? `Continue the conversation of ${run.id}` : 'Open a run to continue its conversation';
  }

  /** Ask the hub for every label and name ever announced (the picker's choices). */
  async refreshTargets() {
    try {
      const known = await this.api.get('api/targets');
      for (const label of known.labels || []) this.labels.add(label);
      for (const name of known.names || []) this.names.add(name);
      this.renderTargets();
    } catch (err) {
      this.onError(err); // the picker keeps what it has; the connected executors still fill it
    }
  }

  /** Executors connected now: their labels and names join the picker. */
  learnTargets(nodeList) {
    const before = this.labels.size + this.names.size;
    for (const node of nodeList) {
      if (node.role !== 'executor') continue;
      for (const label of node.labels || []) this.labels.add(label);
      if (node.name) this.names.add(node.name);
    }
    if (this.labels.size + this.names.size !== before) this.renderTargets();
  }

  renderTargets() {
    const select = this.parts.target;
    if (!select) return;
    const chosen = select.value;
    const any = document.createElement('option');
    any.value = '';
    any.textContent = 'Any executor';
    const groups = [any];
    for (const [title, values, prefix] of [
      ['Labels', this.labels, ''],
      ['Executors', this.names, '@'],
    ]) {
      if (!values.size) continue;
      const group = document.createElement('optgroup');
      group.label = title;
      for (const value of [...values].sort()) {
        const option = document.createElement('option');
        option.value = `${prefix}${value}`;
        option.textContent = prefix ? value : `label: ${value}`;
        group.append(option);
      }
      groups.push(group);
    }
    select.replaceChildren(...groups);
    select.value = chosen;
    if (select.value !== chosen) select.value = '';
  }

  async submit() {
    const { prompt, keep, send, status } = this.parts;
    const text = prompt.value;
    if (!text.trim()) {
      setText(status, 'Type a prompt first.');
      prompt.focus();
      return;
    }
    const body = { prompt: text };
    if (keep.checked && this.sessionKey) body.session_key = this.sessionKey;
    const repo = this.parts.repo?.value.trim();
    if (repo) body.repo = repo;
    const target = this.parts.target?.value;
    if (target) body.target = target;
    send.disabled = true;
    setText(status, 'Starting…');
    try {
      const reply = await this.api.post('api/runs', body);
      prompt.value = '';
      const ahead = reply.position ? ` (${reply.position} ahead of it in the conversation)` : '';
      const where = { slack: 'the Slack thread', telegram: 'the Telegram chat' }[reply.reply_to];
      const also = where ? `; the answer also goes to ${where}` : '';
      if (reply.steered) {
        setText(status, `Added to the running turn of ${reply.run.id}.`);
      } else if (reply.steer_error) {
        setText(status, `Could not add it to the running turn (${reply.steer_error}); started ${reply.run.id}${ahead}${also}.`);
      } else {
        setText(status, `Started ${reply.run.id}${ahead}${also}.`);
      }
      this.onStarted(reply.run);
    } catch (err) {
      setText(status, `Could not start the run: ${err.message}`);
      this.onError(err);
    } finally {
      send.disabled = false;
    }
  }
}
