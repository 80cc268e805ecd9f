// A conversation read as a chat: its runs oldest first, each prompt and its answer
// (markdown, as in a run's detail), with totals. Reached from a run (#/conversations/<key>).

import { h } from './dom.js';
import { duration, stateLabel, tokens } from './fmt.js';
import { answerView } from './markdown.js';

const MAX_RUNS = 100;
const NO_EVENTS = 2 ** 53 - 1;

/** Render conversation `key` into `root`; resolves once shown (or its error is). */
export async function showConversation(api, root, key) {
  root.replaceChildren(h('p', { class: 'placeholder muted', role: 'status' }, 'Loading the conversation…'));
  let runs;
  try {
    const page = await api.get('api/runs', { session_key: key, limit: MAX_RUNS });
    // Full runs (the answers), oldest first.
    runs = await Promise.all(
      page.runs.reverse().map(async (run) => (await api.get(`api/runs/${encodeURIComponent(run.id)}`, { after: NO_EVENTS })).run),
    );
  } catch (err) {
    root.replaceChildren(h('p', { class: 'notice notice-error', role: 'alert' }, `Could not load the conversation: ${err.message}`));
    throw err;
  }
  const used = runs.reduce((n, run) => n + (run.usage?.input_tokens || 0) + (run.usage?.output_tokens || 0), 0);
  const took = runs.reduce((n, run) => n + (run.finished_at && run.started_at ? run.finished_at - run.started_at : 0), 0);
  const title = h('h2', { id: 'detail-title', tabindex: '-1' }, 'Conversation');
  root.replaceChildren(
    h('header', { class: 'detail-head' }, title, h('code', { class: 'muted' }, key)),
    h(
      'p',
      { class: 'muted conversation-totals' },
      `${runs.length} run${runs.length === 1 ? '' : 's'} · ${tokens(used)} tokens · ${duration(took)} of work`,
    ),
    h(
      'ol',
      { class: 'chat', 'aria-label': 'Runs, oldest first' },
      runs.map((run) =>
        h(
          'li',
          { class: 'chat-turn', dataset: { id: run.id, state: run.state } },
          h('div', { class: 'chat-ask' }, h('p', { class: 'chat-who muted' }, run.user || run.source), h('p', { class: 'chat-prompt' }, run.prompt)),
          h(
            'div',
            { class: 'chat-answer' },
            h('p', { class: 'chat-who muted' }, 'codex · ', h('a', { href: `#/runs/${encodeURIComponent(run.id)}` }, stateLabel(run.state))),
            run.answer ? answerView(run.answer, `chat-${run.id}`) : h('p', { class: 'muted' }, run.error?.message?.split('\n', 1)[0] || 'No answer (yet).'),
          ),
        ),
      ),
    ),
  );
  root.setAttribute('aria-labelledby', 'detail-title');
}
