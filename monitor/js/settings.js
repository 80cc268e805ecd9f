// The settings view (#/settings): the hub's effective settings, read-only, from
// GET /api/settings. Operators only: the hub answers 403 to any other key, and the view
// says so. A secret arrives from the hub as "set" or "not set", never its value; the
// page only ever shows what the hub sent.

import { h } from './dom.js';

/**
 * Render the hub's settings into `root`; resolves once shown (or its error is).
 * `isCurrent()` says whether the reader still wants them when the answer arrives.
 */
export async function showSettings(api, root, isCurrent = () => true) {
  root.replaceChildren(h('p', { class: 'placeholder muted', role: 'status' }, 'Loading the settings…'));
  const title = h('h2', { id: 'detail-title', tabindex: '-1' }, 'Settings');
  const head = h('header', { class: 'detail-head' }, title);
  let data;
  try {
    data = await api.get('api/settings');
  } catch (err) {
    if (!isCurrent()) return;
    const message =
      err.status === 403
        ? 'Only operators see the settings of this hub: sign in with a key of HUB_OPERATOR_KEYS.'
        : `Could not load the settings: ${err.message}`;
    root.replaceChildren(head, h('p', { class: 'notice notice-error', role: 'alert' }, message));
    root.setAttribute('aria-labelledby', 'detail-title');
    if (err.status !== 403) throw err;
    return;
  }
  if (!isCurrent()) return;
  const settings = data.settings || [];
  root.replaceChildren(
    head,
    h('p', { class: 'muted' }, 'What this hub runs with, read-only. Secrets show only whether they are set.'),
    h(
      'div',
      { class: 'table-scroll', tabindex: '0', role: 'region', 'aria-labelledby': 'detail-title' },
      h(
        'table',
        { class: 'settings-table' },
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Setting'), h('th', { scope: 'col' }, 'Value'))),
        h('tbody', {}, settings.map(settingRow)),
      ),
    ),
  );
  root.setAttribute('aria-labelledby', 'detail-title');
}

function settingRow(setting) {
  return h(
    'tr',
    { class: 'setting', dataset: { env: setting.env, secret: String(Boolean(setting.secret)) } },
    h('th', { scope: 'row' }, h('code', {}, setting.env)),
    h('td', {}, valueView(setting), setting.default ? h('span', { class: 'muted' }, ' (default)') : null),
  );
}

function valueView(setting) {
  if (setting.secret) return h('span', { class: 'setting-secret' }, setting.value === 'set' ? 'set' : 'not set');
  const value = setting.value;
  if (Array.isArray(value)) return value.length ? h('code', {}, value.join(', ')) : h('span', { class: 'muted' }, 'empty');
  if (value === '' || value === null || value === undefined) return h('span', { class: 'muted' }, 'empty');
  return h('code', {}, String(value));
}
