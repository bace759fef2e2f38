// The entry point for clients/browser.py, which drives this page through Playwright: run one
// transport's client `n` times at once in this page and hand back what each of them saw.
// `cutAfterTokens` > 0: once any client holds that many tokens, ask the server to reset this
// browser's connections (POST /debug/cut), as the page's Cut button does. `options`: the
// client's own (webtransport: {delivery: "datagram"}).

import {CLIENTS, runClient} from "./clients.js";
import {Tally} from "./record.js";

async function runFleet(key, params, n, timeoutMs, {cutAfterTokens = 0, options = null} = {}) {
  if (!(key in CLIENTS)) throw new Error(`unknown client ${key}; one of ${Object.keys(CLIENTS)}`);
  const stop = new AbortController();
  const timer = setTimeout(() => stop.abort(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
  let cut = null;
  const tallies = Array.from({length: n}, () => {
    const rec = new Tally(params.tokens, (what) => {
      if (what === "token" && cutAfterTokens && !cut && rec.count >= cutAfterTokens) {
        cut = fetch("/debug/cut", {method: "POST"}).then((response) => response.json());
      }
    });
    return rec;
  });
  try {
    await Promise.all(tallies.map((rec) => runClient(key, location.origin, params, rec, stop.signal, ...(options ? [options] : []))));
  } finally {
    clearTimeout(timer);
  }
  return {records: tallies.map((rec) => rec.toJSON()), cut: cut && await cut};
}

window.pushlab = {keys: Object.keys(CLIENTS), runFleet};
