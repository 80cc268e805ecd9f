// Building DOM from data without ever parsing it as HTML.
//
// Prompts, outputs and answers are untrusted: every string handed to h() becomes a text
// node (or textContent), and attributes are set one by one, so nothing a run says can
// turn into markup or script.

/**
 * Create an element.
 * props: `class`, `text` (textContent), `on<event>` (listener), `dataset` (object);
 * `true` sets a boolean attribute, `null`/`undefined`/`false` is skipped, anything else
 * is set as an attribute string. children: nodes, strings, or (nested) arrays of them.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (name === 'class') el.className = value;
    else if (name === 'text') el.textContent = value;
    else if (name === 'dataset') Object.assign(el.dataset, value);
    else if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else el.setAttribute(name, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

/** Append children (nodes, strings, arrays; null is skipped) to `parent`. */
export function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** Set textContent only when it changed (keeps layout and selection stable). */
export function setText(el, text) {
  const value = text == null ? '' : String(text);
  if (el.textContent !== value) el.textContent = value;
}

/** Look an element up by id; a missing one is a bug in index.html, so fail loudly. */
export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`monitor: #${id} is missing from index.html`);
  return el;
}

/** Copy text to the clipboard, also on plain http where navigator.clipboard is absent. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = h('textarea', { class: 'visually-hidden', readonly: true, 'aria-hidden': 'true' });
  area.value = text;
  document.body.append(area);
  area.select();
  try {
    if (!document.execCommand('copy')) throw new Error('the browser refused to copy');
  } finally {
    area.remove();
  }
}
