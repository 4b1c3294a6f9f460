// The code both console pages share (/console: approvals, /console/agents: agents), served at
// /console/common.js. Each page loads it before its own inline script and reaches it through
// `window.Portcullis`; what only one page does stays in that page.
//
// Everything that comes from the API (and so, ultimately, from agents and the people who
// configure them) is written with textContent or setAttribute, never parsed as HTML.
(() => {
  'use strict';

  // One sign-in serves both pages: they keep the token under the same key.
  const TOKEN_KEY = 'portcullis.approverToken';
  const REQUEST_TIMEOUT_MS = 10000;

  // ---------------------------------------------------------------- DOM

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };
  const setText = (node, text) => {
    const t = text === undefined || text === null ? '' : String(text);
    if (node.textContent !== t) node.textContent = t;
  };
  const setAttr = (node, name, value) => {
    const v = String(value);
    if (node.getAttribute(name) !== v) node.setAttribute(name, v);
  };
  const setClass = (node, cls) => { if (node.className !== cls) node.className = cls; };
  // Replace a node's children only when what they show changed (keeps focus and selection).
  const replaceIfChanged = (node, key, build) => {
    if (node.dataset.key === key) return;
    node.dataset.key = key;
    node.replaceChildren(...build());
  };

  // Where an arrow key (or Home / End) moves to in `items` from the focused one: its index,
  // or -1 for any other key.
  function arrowMove(key, items) {
    const cur = items.indexOf(document.activeElement);
    if (key === 'ArrowDown') return Math.min(items.length - 1, cur + 1);
    if (key === 'ArrowUp') return Math.max(0, cur - 1);
    if (key === 'Home') return 0;
    if (key === 'End') return items.length - 1;
    return -1;
  }

  // ---------------------------------------------------------------- text and time

  // Agent-supplied text is shown with control, bidi-override and invisible characters as
  // visible escapes (`\u{202e}`), exactly like the CLI and webhook text (the Rust
  // `approval::display::escape`): Unicode categories Cc, Cf, Zl and Zp. Bodies keep \n and \t.
  const UNSAFE_CHARS = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu;
  function escapeUnsafe(s, multiline) {
    return String(s === undefined || s === null ? '' : s).replace(UNSAFE_CHARS, (c) => {
      if (multiline && (c === '\n' || c === '\t')) return c;
      if (c === '\n') return '\\n';
      if (c === '\t') return '\\t';
      if (c === '\r') return '\\r';
      return '\\u{' + c.codePointAt(0).toString(16) + '}';
    });
  }
  // One line of agent-supplied text: every control character escaped.
  const line = (s) => escapeUnsafe(s, false);

  function duration(ms) {
    let s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + 's';
    let m = Math.floor(s / 60); s %= 60;
    if (m < 60) return m + 'm ' + String(s).padStart(2, '0') + 's';
    let h = Math.floor(m / 60); m %= 60;
    if (h < 48) return h + 'h ' + String(m).padStart(2, '0') + 'm';
    return Math.floor(h / 24) + 'd ' + (h % 24) + 'h';
  }

  // A time in the browser's locale. The approvals API gives epoch milliseconds (nothing is
  // shown for an invalid one), the agents API RFC 3339 text (shown escaped if it does not parse).
  function absolute(t) {
    if (typeof t === 'string') {
      const ms = Date.parse(t);
      return Number.isFinite(ms) ? new Date(ms).toLocaleString() : line(t);
    }
    const d = new Date(t);
    return Number.isFinite(d.getTime()) ? d.toLocaleString() : '';
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  const networkError = (e) => new ApiError(0, 'network', 'cannot reach the gateway (' +
    (e && e.name === 'AbortError' ? 'no answer in time' : 'connection failed') + ')');

  // The API as one page calls it. `token()`: the signed-in token (`opts.token` overrides it);
  // `authErrors`: the refusal codes that mean the credential itself is not (or no longer) good;
  // `onResponse(resp)`, optional: sees every answer. A call resolves to the parsed JSON answer
  // (null for an empty one; a Blob with `opts.raw`) and rejects with an ApiError: the
  // gateway's refusal, or code `network` when it cannot be reached or does not answer within
  // the timeout, or `bad_answer` when a success is not JSON.
  function apiClient(cfg) {
    const authErrors = new Set(cfg.authErrors);
    async function api(path, opts) {
      opts = opts || {};
      const ctrl = new AbortController();
      const timer = setTimeout(() => ctrl.abort(), REQUEST_TIMEOUT_MS);
      const headers = { 'Accept': opts.accept || 'application/json', 'Authorization': 'Bearer ' + (opts.token || cfg.token()) };
      if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
      try {
        let resp;
        try {
          resp = await fetch(path, {
            method: opts.method || 'GET',
            headers,
            body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined,
            cache: 'no-store',
            credentials: 'omit',
            signal: ctrl.signal
          });
        } catch (e) {
          throw networkError(e);
        }
        if (cfg.onResponse) cfg.onResponse(resp);
        if (!resp.ok) {
          let data = null;
          try {
            const text = await resp.text();
            data = text ? JSON.parse(text) : null;
          } catch (e) {
            data = null;
          }
          const code = data && typeof data.error === 'string' ? data.error : 'http_' + resp.status;
          const msg = data && typeof data.message === 'string' ? data.message : 'the gateway answered ' + resp.status;
          throw new ApiError(resp.status, code, msg);
        }
        let body;
        try {
          body = opts.raw ? await resp.blob() : await resp.text();
        } catch (e) {
          throw networkError(e);
        }
        if (opts.raw) return body;
        try {
          return body ? JSON.parse(body) : null;
        } catch (e) {
          throw new ApiError(resp.status, 'bad_answer', 'unexpected answer from ' + path + ' (not JSON)');
        }
      } finally {
        clearTimeout(timer);
      }
    }
    const isAuthError = (e) => e instanceof ApiError && authErrors.has(e.code);
    return { api, isAuthError };
  }

  // ---------------------------------------------------------------- session

  // The token lives in this tab's session storage only (if storage is disabled: in the page).
  function savedToken() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; }
  }
  function saveToken(token) {
    try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* storage disabled: this tab only */ }
  }
  function forgetToken() {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage disabled */ }
  }

  // The sign-in form instead of the page, with a notice or (`isError`) an error under it.
  function showSignedOut(message, isError) {
    $('app-view').hidden = true;
    $('session').hidden = true;
    $('signin-view').hidden = false;
    const err = $('sign-in-error');
    const notice = $('sign-in-notice');
    err.hidden = !(message && isError);
    setText(err, message && isError ? message : '');
    notice.hidden = !(message && !isError);
    setText(notice, message && !isError ? message : '');
  }

  // The page instead of the sign-in form, with who is signed in in the top bar.
  function showSignedIn(label) {
    setText($('whoami'), label);
    $('signin-view').hidden = true;
    $('sign-in-error').hidden = true;
    $('sign-in-notice').hidden = true;
    $('session').hidden = false;
    $('app-view').hidden = false;
  }

  // Wire the sign-in form and the sign-out button, then sign in with the token this tab kept,
  // if any. `signIn(token)` checks a token and shows the page (rejecting when it cannot);
  // `signOut(message, isError)` forgets it; `isAuthError(e)`: a refused credential;
  // `noToken`: the error for an empty field; `showSignedOut`: the page's own, if it has one.
  function startSession(cfg) {
    const signedOut = cfg.showSignedOut || showSignedOut;
    $('signin-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const token = $('token').value.trim();
      const err = $('sign-in-error');
      if (!token) {
        err.hidden = false;
        setText(err, cfg.noToken);
        $('token').focus();
        return;
      }
      const btn = $('sign-in');
      btn.disabled = true;
      err.hidden = true;
      $('sign-in-notice').hidden = true;
      try {
        await cfg.signIn(token);
      } catch (e) {
        err.hidden = false;
        setText(err, 'Sign-in failed: ' + (e && e.message ? e.message : String(e)));
        $('token').focus();
      } finally {
        btn.disabled = false;
      }
    });

    $('sign-out').addEventListener('click', () => cfg.signOut('You are signed out.', false));

    const saved = savedToken();
    if (saved) {
      signedOut('Signing in…', false);
      cfg.signIn(saved).catch((e) => {
        if (cfg.isAuthError(e)) cfg.signOut('Your saved session is no longer valid: ' + e.message, true);
        else signedOut('Cannot sign in: ' + e.message + '. Try again.', true);
      });
    } else {
      signedOut('', false);
      $('token').focus();
    }
  }

  // ---------------------------------------------------------------- polling

  function setBanner(text) {
    const b = $('banner');
    b.hidden = !text;
    setText(b, text);
  }

  // Keep a page fresh: `load(gen)` every `everyMs` (the first time at once with `immediate`).
  // It works on the page's `state`: `generation` (every stop bumps it; a load that began under
  // an older one must change nothing), `pollTimer` and `lastOk`. A failed load is shown in the
  // banner and retried; a refused credential (`isAuthError`) signs out (`signOut`).
  // `refresh(gen)` is one load with that handling, for a page that wants one now.
  function poller(cfg) {
    const state = cfg.state;
    const every = cfg.everyMs === 1000 ? 'second' : cfg.everyMs / 1000 + ' seconds';

    function stop() {
      state.generation++;
      clearTimeout(state.pollTimer);
      state.pollTimer = null;
    }

    async function refresh(gen) {
      try {
        await cfg.load(gen);
        if (gen !== state.generation) return;
        state.lastOk = Date.now();
        setBanner('');
      } catch (e) {
        if (gen !== state.generation) return;
        if (cfg.isAuthError(e)) {
          cfg.signOut('Signed out: ' + e.message, true);
          return;
        }
        setBanner('Cannot refresh: ' + e.message + '. Retrying every ' + every +
          (state.lastOk ? ' (last update ' + duration(Date.now() - state.lastOk) + ' ago).' : '.'));
      }
    }

    function start() {
      stop();
      const gen = state.generation;
      const loop = async () => {
        if (gen !== state.generation) return;
        await refresh(gen);
        if (gen !== state.generation) return;
        state.pollTimer = setTimeout(loop, cfg.everyMs);
      };
      if (cfg.immediate) loop();
      else state.pollTimer = setTimeout(loop, cfg.everyMs);
    }

    return { start, stop, refresh };
  }

  // ---------------------------------------------------------------- selection

  // `#/<kind>/<id>` opens one item of a page (the links in notifications carry it).
  function hashId(kind) {
    const m = /^#\/([a-z]+)\/([^/?#]+)$/.exec(location.hash);
    if (!m || m[1] !== kind) return null;
    try { return decodeURIComponent(m[2]); } catch (e) { return null; }
  }
  function showInHash(kind, id) {
    const h = '#/' + kind + '/' + encodeURIComponent(id);
    if (location.hash !== h) history.replaceState(null, '', h);
  }

  // Keep the reason typed for the selected item (`state.selectedId`) in `state.drafts`, for
  // when it is selected again.
  function saveDraft(state) {
    if (!state.selectedId) return;
    const v = $('reason').value;
    if (v) state.drafts.set(state.selectedId, v);
    else state.drafts.delete(state.selectedId);
  }

  window.Portcullis = Object.freeze({
    REQUEST_TIMEOUT_MS,
    $, el, setText, setAttr, setClass, replaceIfChanged, arrowMove,
    escapeUnsafe, line, duration, absolute,
    ApiError, apiClient,
    saveToken, forgetToken, showSignedOut, showSignedIn, startSession,
    setBanner, poller,
    hashId, showInHash, saveDraft
  });
})();
