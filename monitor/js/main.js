// The monitor page: signs in, then keeps runs, the open run and the nodes live.
//
// Order matters for catching up without gaps: the feed connects first, and only after
// its `ready` frame are the runs list and the open run (re)loaded over HTTP. Whatever
// happens in between arrives twice and is deduped (runs by id, events by seq).

import { createApi, feedUrl, Unauthorized, Unreachable } from './api.js';
import { forgetKey, loadKey, saveKey, SignIn, takeKeyFromAddress } from './auth.js';
import { syncClock } from './clock.js';
import { Composer } from './composer.js';
import { showConversation as renderConversation } from './conversation.js';
import { RunDetail } from './detail.js';
import { byId, setText } from './dom.js';
import { Feed } from './feed.js';
import { FleetView } from './fleet.js';
import { stateLabel } from './fmt.js';
import { NodesPanel } from './nodes.js';
import { TabNotice } from './notice.js';
import { Overview } from './overview.js';
import { RunsList } from './runs.js';
import { showSettings } from './settings.js';

const BOOT_RETRY_MAX_MS = 15000;
const SEARCH_DEBOUNCE_MS = 300;
const NARROW = window.matchMedia('(max-width: 899px)');

const CONN_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  offline: 'Hub unreachable, retrying…',
  'signed-out': 'Signed out',
};

let key = takeKeyFromAddress() || loadKey();
let signedIn = false;
let ticker = null;
let ticks = 0;

const api = createApi(() => key);
const conn = byId('conn');
const appView = byId('app');
const signOutButton = byId('sign-out');
const retryButton = byId('retry');

const nodes = new NodesPanel(byId('nodes-list'), byId('nodes-count'));
const fleet = new FleetView(byId('detail'), nodes);
const notice = new TabNotice(byId('favicon'), byId('c-notify'));
const overview = new Overview(api, byId('overview'), (err) => handleError(err));
const runs = new RunsList(
  api,
  { list: byId('runs'), more: byId('more'), status: byId('runs-status') },
  nodes,
  handleError,
);
const composer = new Composer(
  api,
  {
    form: byId('composer'),
    prompt: byId('c-prompt'),
    repo: byId('c-repo'),
    target: byId('c-target'),
    keep: byId('c-continue'),
    keepLabel: byId('c-continue-label'),
    send: byId('c-send'),
    status: byId('c-status'),
  },
  (run) => {
    notice.started(run);
    runs.upsert(run);
    location.hash = `#/runs/${encodeURIComponent(run.id)}`;
  },
  handleError,
);
const detail = new RunDetail(api, byId('detail'), nodes, {
  onError: handleError,
  onChange: (run) => composer.follow(run),
  onConversation: (key) => showConversation(key),
  // "Open PR" in the Changes section started a run: open it, as the composer does.
  onStarted: (run) => {
    notice.started(run);
    runs.upsert(run);
    location.hash = `#/runs/${encodeURIComponent(run.id)}`;
  },
});

/** The runs of one conversation (the filter, shown as a chip with a way out). */
function showConversation(key) {
  byId('f-conversation').hidden = !key;
  setText(byId('f-conversation-key'), key || '');
  runs.setFilters({ session_key: key || '' });
  if (key) byId('runs-title').focus();
}
const feed = new Feed(feedUrl(), () => key, {
  onReady,
  onMessage,
  onStatus: setConn,
  onUnauthorized: () => signOut('The hub refused your API key (it may have been revoked). Sign in again.'),
});
const signIn = new SignIn(
  { view: byId('signin'), form: byId('signin-form'), input: byId('signin-key'), error: byId('signin-error') },
  tryKey,
);

function setConn(state) {
  conn.dataset.state = state;
  setText(conn, CONN_TEXT[state] || state);
  const down = signedIn && (state === 'reconnecting' || state === 'offline');
  retryButton.hidden = !down;
  // Without the feed nothing says when a run moves on: never show "running" as a fact.
  runs.setFeedDown(down);
  detail.setFeedDown(down);
}

// ---- signing in and out ----

async function boot(attempt = 0) {
  setConn('connecting');
  try {
    const data = await api.get('api/nodes');
    start(data.nodes);
  } catch (err) {
    if (err instanceof Unauthorized) {
      setConn('signed-out');
      signIn.show(key ? 'The hub refused the saved API key. Sign in again.' : '');
      return;
    }
    setConn('offline');
    const delay = Math.min(BOOT_RETRY_MAX_MS, 500 * 2 ** attempt);
    setTimeout(() => boot(attempt + 1), delay);
  }
}

async function tryKey(candidate) {
  const previous = key;
  key = candidate;
  try {
    const data = await api.get('api/nodes');
    saveKey(candidate);
    start(data.nodes);
    return null;
  } catch (err) {
    key = previous;
    if (err instanceof Unauthorized) return 'The hub refused this key. Check it and try again.';
    if (err instanceof Unreachable) return 'The hub is not reachable right now. Try again in a moment.';
    return `Could not sign in: ${err.message}`;
  }
}

function start(nodeList) {
  signedIn = true;
  signIn.hide();
  appView.hidden = false;
  signOutButton.hidden = !key;
  nodes.update(nodeList);
  feed.start();
  overview.start();
  clearInterval(ticker);
  ticker = setInterval(tick, 1000);
  route(false);
}

/** Forget the key and everything shown: without a valid key the page shows nothing. */
function signOut(message, tone = 'error') {
  signedIn = false;
  feed.stop();
  clearInterval(ticker);
  forgetKey();
  key = '';
  runs.clear();
  detail.close();
  nodes.clear();
  fleet.hide();
  notice.clear();
  overview.stop();
  byId('c-prompt').value = '';
  appView.hidden = true;
  signOutButton.hidden = true;
  setConn('signed-out');
  signIn.show(message, tone);
}

function handleError(err) {
  if (err instanceof Unauthorized && signedIn) {
    signOut('The hub refused your API key (it may have been revoked). Sign in again.');
  }
  // Anything else is shown where it happened (list, detail, composer); a lost hub is
  // reported by the connection status and healed by the feed's reconnect.
}

// ---- the live feed ----

function onReady(frame) {
  syncClock(frame.now);
  nodes.update(frame.nodes || []);
  fleet.refresh();
  composer.learnTargets(frame.nodes || []);
  composer.refreshTargets();
  runs.setQueue(frame.queue);
  notice.load(frame.nodes || [], frame.queue?.total);
  overview.load(frame.nodes || [], frame.queue?.total);
  overview.refresh();
  runs.renameExecutors();
  runs.refresh();
  // A load that began before this `ready` may have missed events: catch up after it.
  if (detail.id) detail.open(detail.id).then(() => detail.catchUp());
}

function onMessage(frame) {
  switch (frame.type) {
    case 'run':
      runs.upsert(frame.run);
      detail.onRun(frame.run);
      notice.onRun(frame.run);
      overview.runChanged(frame.run);
      break;
    case 'event':
      detail.onEvent(frame.run_id, frame.event);
      runs.progress(frame.run_id, progressText(frame.event));
      break;
    case 'nodes':
      nodes.update(frame.nodes || []);
      fleet.refresh();
      composer.learnTargets(frame.nodes || []);
      runs.renameExecutors();
      notice.load(frame.nodes || [], null);
      overview.load(frame.nodes || [], null);
      break;
    case 'queue':
      runs.setQueue(frame);
      notice.load(null, frame.total);
      overview.load(null, frame.total);
      break;
    default:
      break; // a newer hub may send more; this page ignores what it does not know
  }
}

function progressText(event) {
  if (event.summary) return event.summary;
  if (event.kind === 'state') return stateLabel(event.state);
  if (event.kind === 'assigned') return `assigned to ${event.executor}`;
  return event.message || '';
}

function tick() {
  runs.tick();
  detail.tick();
  ticks += 1;
  if (ticks % 5 === 0) {
    nodes.tick();
    fleet.refresh();
  }
}

// ---- routing: #/runs/<id> opens a run (links work, the back button works) ----

function route(userAction) {
  if (!signedIn) return;
  fleet.hide();
  const focusTitle = () => {
    if (userAction) document.getElementById('detail-title')?.focus({ preventScroll: true });
  };
  if (location.hash === '#/fleet' || location.hash === '#/settings') {
    runs.select(null);
    detail.close();
    if (location.hash === '#/fleet') {
      fleet.show();
      focusTitle();
    } else {
      showSettings(api, byId('detail'), () => location.hash === '#/settings').then(focusTitle).catch(handleError);
    }
    return;
  }
  const chat = /^#\/conversations\/(.+)$/.exec(location.hash);
  if (chat) {
    const key = decodeURIComponent(chat[1]);
    runs.select(null);
    detail.close();
    renderConversation(api, byId('detail'), key)
      .then(() => {
        if (userAction) document.getElementById('detail-title')?.focus({ preventScroll: true });
      })
      .catch(handleError);
    return;
  }
  const match = /^#\/runs\/(.+)$/.exec(location.hash);
  const id = match ? decodeURIComponent(match[1]) : null;
  runs.select(id);
  if (id) {
    detail.open(id).then(() => {
      if (!userAction || detail.id !== id) return;
      // The reader's focus goes to the run they opened (its title), so Tab continues
      // into it; stacked, the run is also brought into view.
      if (NARROW.matches) byId('detail').scrollIntoView({ block: 'start' });
      document.getElementById('detail-title')?.focus({ preventScroll: true });
    });
  } else if (!location.hash || location.hash === '#/') {
    detail.close();
  }
}

window.addEventListener('hashchange', () => route(true));

// ---- filters ----

let searchTimer = null;
byId('filters').addEventListener('submit', (event) => {
  event.preventDefault();
  clearTimeout(searchTimer);
  runs.setFilters({ q: byId('f-q').value });
});
byId('f-q').addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => runs.setFilters({ q: byId('f-q').value }), SEARCH_DEBOUNCE_MS);
});
byId('f-state').addEventListener('change', (event) => runs.setFilters({ state: event.target.value }));
byId('f-source').addEventListener('change', (event) => runs.setFilters({ source: event.target.value }));

retryButton.addEventListener('click', () => feed.retryNow());
byId('f-conversation-clear').addEventListener('click', () => showConversation(''));

signOutButton.addEventListener('click', () =>
  signOut('Signed out. The key was removed from this browser.', 'info'),
);

boot();
