// The hub's clock, as seen from the browser. Run times come from the hub; a browser
// whose clock is off would show wrong elapsed times without this correction.

let skew = 0;

/** Align with the hub, from the `now` of the feed's `ready` frame. */
export function syncClock(hubNow) {
  if (typeof hubNow === 'number' && Number.isFinite(hubNow)) skew = hubNow - Date.now() / 1000;
}

/** Now, in epoch seconds on the hub's clock. */
export function now() {
  return Date.now() / 1000 + skew;
}
