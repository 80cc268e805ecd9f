// Answers as markdown: rendered by marked, sanitised by DOMPurify (both vendored, pinned:
// see vendor/README.md), inserted as DOM nodes. Raw HTML inside the markdown is shown as
// the text it is, so an answer that quotes markup (or an attacker's prompt echoed back)
// never becomes markup; DOMPurify then removes whatever else could run or load.

import DOMPurify from '../vendor/purify.es.js';
import { Marked } from '../vendor/marked.esm.js';
import { copyText, h, setText } from './dom.js';

// Answers longer than this are folded behind "Show all".
export const FOLD_LINES = 40;
export const FOLD_CHARS = 4000;

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

const marked = new Marked({
  gfm: true,
  async: false,
  renderer: {
    html(token) {
      return escapeHtml(token.text);
    },
  },
});

// Nothing that loads (the CSP would refuse it anyway, loudly), nothing that takes input,
// no ids or styles that could clash with the page's own.
const PURIFY = {
  RETURN_DOM_FRAGMENT: true,
  FORBID_TAGS: ['img', 'style', 'form', 'input', 'button', 'textarea', 'select', 'iframe',
    'svg', 'math', 'video', 'audio', 'source', 'picture', 'object', 'embed'],
  FORBID_ATTR: ['style', 'id', 'name'],
};

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A' && node.hasAttribute('href')) {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  }
});

/** A DocumentFragment of the markdown `text`, sanitised. */
export function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(String(text ?? '')), PURIFY);
}

/**
 * The answer as a reader wants it: rendered markdown, each code block with its own copy
 * button and reachable by keyboard (it may scroll sideways), folded when long.
 */
export function answerView(text, id) {
  const body = h('div', { class: 'markdown answer', id });
  body.append(renderMarkdown(text));
  for (const pre of body.querySelectorAll('pre')) decorateCode(pre);
  const lines = String(text).split('\n').length;
  if (lines <= FOLD_LINES && String(text).length <= FOLD_CHARS) return [body];
  body.classList.add('folded');
  const toggle = h(
    'button',
    { class: 'btn btn-small fold-toggle', type: 'button', 'aria-expanded': 'false', 'aria-controls': id },
    `Show all (${lines} lines)`,
  );
  toggle.addEventListener('click', () => {
    const open = body.classList.toggle('folded') === false;
    toggle.setAttribute('aria-expanded', String(open));
    setText(toggle, open ? 'Show less' : `Show all (${lines} lines)`);
  });
  return [body, toggle];
}

function decorateCode(pre) {
  pre.tabIndex = 0;
  const lang = /language-([\w+-]+)/.exec(pre.querySelector('code')?.className || '')?.[1];
  pre.setAttribute('aria-label', lang ? `${lang} code` : 'code');
  const status = h('span', { class: 'muted code-status', role: 'status' });
  const copy = h('button', { class: 'btn btn-small code-copy', type: 'button' }, 'Copy code');
  copy.addEventListener('click', async () => {
    try {
      await copyText(pre.textContent.replace(/\n$/, ''));
      setText(status, 'Copied.');
    } catch (err) {
      setText(status, `Could not copy: ${err.message}`);
    }
  });
  const bar = h('div', { class: 'code-bar' }, lang ? h('span', { class: 'muted' }, lang) : null, status, copy);
  const box = h('div', { class: 'code-block' });
  pre.replaceWith(box);
  box.append(bar, pre);
}
