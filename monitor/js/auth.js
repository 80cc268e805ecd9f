// The API key: asked for once, kept in this browser's localStorage, never shown again.

import { setText } from './dom.js';

const STORAGE_KEY = 'codex-hub.api-key';

export function loadKey() {
  try {
    return localStorage.getItem(STORAGE_KEY) || '';
  } catch {
    return ''; // storage disabled: the key lives as long as the page
  }
}

export function saveKey(key) {
  try {
    localStorage.setItem(STORAGE_KEY, key);
  } catch {
    // storage disabled: signed in for this page only
  }
}

/**
 * A key handed over in the address, `#key=...` (the link `codex-hub up` prints; a
 * fragment never reaches a server or its logs): kept like a typed key, and removed from
 * the address bar and this history entry at once. '' when the address holds none.
 */
export function takeKeyFromAddress() {
  const match = /^#key=([^&]*)/.exec(window.location.hash);
  if (!match) return '';
  window.history.replaceState(null, '', window.location.pathname + window.location.search);
  let key = '';
  try {
    key = decodeURIComponent(match[1]).trim();
  } catch {
    return ''; // malformed: as if there were none
  }
  if (key) saveKey(key);
  return key;
}

export function forgetKey() {
  try {
    localStorage.removeItem(STORAGE_KEY);
  } catch {
    // nothing stored
  }
}

/** The sign-in form. `tryKey(key)` resolves to an error message, or null when signed in. */
export class SignIn {
  constructor(parts, tryKey) {
    this.parts = parts;
    parts.form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const key = parts.input.value.trim();
      if (!key) {
        this.error('Enter an API key.');
        return;
      }
      const button = parts.form.querySelector('button[type="submit"]');
      button.disabled = true;
      setText(parts.error, '');
      try {
        const problem = await tryKey(key);
        if (problem) this.error(problem);
      } finally {
        button.disabled = false;
      }
    });
  }

  /** Show the form; `tone` 'info' is for news that is not a failure (signed out). */
  show(message = '', tone = 'error') {
    const { view, input, error } = this.parts;
    view.hidden = false;
    input.value = '';
    error.dataset.tone = tone;
    setText(error, message);
    input.focus();
  }

  hide() {
    this.parts.view.hidden = true;
    // The key must not linger in the DOM once it has been used.
    this.parts.input.value = '';
    setText(this.parts.error, '');
  }

  error(message) {
    this.parts.error.dataset.tone = 'error';
    setText(this.parts.error, message);
    this.parts.input.select();
    this.parts.input.focus();
  }
}
