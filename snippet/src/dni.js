/*
 * The DNI tracking snippet: swaps a site's phone number for a tracking number held by
 * the broker for this visitor, so that a call can be tied back to the visit's source.
 *
 * Install (once, site-wide, before </head>):
 *   <script async src="https://BROKER/snippet.js" data-pools="POOL_ID,POOL_ID"></script>
 *
 * Options, as data-* attributes on that tag:
 *   data-pools       comma-separated pool ids (required)
 *   data-consent     "page": until window.dni.consent() nothing is read from or stored on
 *                    the device; numbers are swapped for this page view only.
 *                    "wait": until window.dni.consent() the snippet does nothing at all.
 *   data-hide        anti-flicker: hide target numbers for at most this many ms (<= 3000)
 *                    while the broker answers.
 *   data-timeout     ms to wait for the broker before keeping the page's number (1500).
 *   data-heartbeat   seconds between heartbeats, overriding the broker's heartbeat_s.
 *   data-idle        minutes a tab may stay hidden and still keep its number (30; 0:
 *                    always): after that it stops beating, so the session ends and the
 *                    number goes back to the pool; shown again, it checks the session.
 *
 * API: window.dni.consent() (store the visitor from now on), window.dni.revoke() (consent
 * withdrawn: delete what was stored, store nothing more on this page), window.dni.swap()
 * (rescan the page, e.g. after a single-page app rendered without a DOM the snippet could
 * observe), window.dni.add("POOL_ID,POOL_ID") (more pools: a second tag on the page calls
 * it with its own, and its other options are ignored).
 * Before the snippet loads, a site may queue calls: (window.dni = window.dni || []).push("consent").
 *
 * Everything fails open: every failure leaves the page's own number and throws nothing.
 */
(() => {
  const d = document;
  const me = d.currentScript || d.querySelector("script[data-pools]");
  const queued = window.dni;
  const opt = (name) => me.dataset[name] || ""; // data-<name>: every name is one word
  if (!me) return;
  // A second tag (a theme's and a tag manager's, say): its pools join the running snippet.
  if (queued && queued.swap) return queued.add && queued.add(opt("pools"));

  const base = me.src.replace(/\/snippet[^/]*$/, "");
  const mode = opt("consent"); // null | "page" | "wait"
  const timeout = +opt("timeout") || 1500;
  const beatS = +opt("heartbeat");
  const idleMs = (opt("idle") || 30) * 6e4 || 1 / 0; // data-idle="0": never
  let hiddenAt = d.hidden && Date.now(); // when the tab was last hidden (falsy: shown)
  // The address the page shows (sent as landing_page): where a site removed a one-time
  // token (?token_hash=, ?email=) with history.replaceState, it stays removed.
  const href = location.href;
  // The tags are read from the address the visitor landed on, the navigation entry's: the
  // site's own script may have cleaned the utm_* tags away before this one ran.
  const landed = (performance.getEntriesByType("navigation")[0] || {}).name || href;
  // Hidden since `at` for longer than data-idle: beats stop (a tab left in the background).
  const lapsed = (at) => at && Date.now() - at > idleMs;
  const hideUntil = Date.now() + Math.min(opt("hide"), 3000); // NaN: never hidden
  const TAGS = "utm_source utm_medium utm_campaign utm_term utm_content gclid fbclid msclkid"
    .split(" ");

  let allowed = !mode; // may the snippet read and write storage?
  let visitor; // visitor id
  let source; // attribution fields of this visit
  // {id, cc, ns (numbers, E.164: the page's, then those shown), to, re (the page's number),
  //  re2 (the earlier ones), on (the target is on the page), nr (session requests made),
  //  nf (failures in a row), hidden, tm (timer), sid}
  let pools = [];
  let started; // the config was asked for

  const noop = () => {};
  // Callbacks the page's event loop runs (timers, observers, the API) never throw.
  const safe = (fn) => (...args) => {
    try {
      return fn(...args);
    } catch (e) {}
  };

  // GET /v1/dni/<path> (no body) or POST, the body as text/plain: a simple request, no
  // preflight. Given up after `timeout` ms. An HTTP error with the broker's error body
  // rejects with its status, or with `true` for its 404 pool_not_found; any other (a
  // proxy's own 404 page, say) rejects as a network error does.
  const call = (path, body) => {
    const ctl = new AbortController();
    setTimeout(() => ctl.abort(), timeout);
    return fetch(base + "/v1/dni/" + path, {method: body && "POST",
      body: body && JSON.stringify(body), keepalive: path == "heartbeat", signal: ctl.signal})
      .then((res) => res.json().then((b) => {
        if (!res.ok) throw b.error.code == "pool_not_found" || res.status;
        return b;
      }));
  };

  // ---- visitor and attribution -------------------------------------------------------
  // At most n characters, never half of one (a lone surrogate is not valid JSON text).
  const cut = (v, n) => [...v].slice(0, n).join("");

  const ident = () => {
    let stored = {};
    const now = Date.now();
    const params = new URL(landed).searchParams;
    const fresh = {landing_page: cut(href, 4096)};
    let tagged;
    if (d.referrer) fresh.referrer = cut(d.referrer, 4096);
    TAGS.forEach((k) => {
      const v = params.get(k);
      if (v) fresh[k] = cut(v, 512), tagged = 1;
    });
    if (allowed) {
      try { // storage and cookies may be off, or throw (sandboxed frames)
        stored = JSON.parse(localStorage.dni) || {};
      } catch (e) {}
      try {
        stored.v = stored.v || d.cookie.match(/(^|; )dni_vid=([^;]+)/)[2];
      } catch (e) {}
    }
    visitor = /^[\w.:-]{1,128}$/.test(stored.v) && stored.v || visitor ||
      now.toString(36) + "." + crypto.getRandomValues(new Uint32Array(2)).join("");
    // A visit's source holds for the session (30 min of inactivity) unless the visitor
    // comes back through a tagged link.
    source = !tagged && stored.a && now - stored.t < 18e5 ? stored.a : fresh;
    if (allowed) {
      try { // each on its own: one may throw (a consent tool's cookie guard) and not the other
        d.cookie = "dni_vid=" + visitor + ";path=/;max-age=34560000;samesite=lax" +
          (/^https:/.test(href) ? ";secure" : "");
      } catch (e) {}
      try {
        localStorage.dni = JSON.stringify({v: visitor, a: source, t: now});
      } catch (e) {}
    }
  };

  // ---- finding and writing numbers ---------------------------------------------------
  const digits = (s) => s.replace(/\D/g, "");

  // A number as a pattern: its national digits with up to two separators (any non-word
  // characters: also non-breaking hyphens, dashes) between any two of them, after an
  // optional country code (+1, 1-, +1 ) or trunk 0.
  const pattern = (p, e164) => "(?:\\+?" + p.cc + "[-.\\s]{0,2}|0)?\\(?" +
    digits(e164).slice(p.cc.length).split("").join("\\W{0,2}");

  // Write `to` in the format of `match`: the national digits are replaced from the right,
  // so separators, brackets and a country code stay where they were.
  const render = (p, match) => {
    const nat = digits(p.to).slice(p.cc.length);
    let k = nat.length - digits(match).length; // < 0: leading digits that stay (+1, 0)
    // (a number of another length than the page's, both E.164: written as it is)
    return p.to.length != p.ns[0].length ? p.to
      : match.replace(/\d/g, (c) => k++ < 0 ? c : nat[k - 1]);
  };

  const hide = (p, el) => {
    if (Date.now() < hideUntil && el.style && !el.dniH) {
      p.hidden.push([el, el.style.visibility]);
      el.dniH = 1;
      el.style.visibility = "hidden";
    }
  };

  const unhide = (p) => {
    p.hidden.forEach(([el, v]) => {
      el.style.visibility = v;
      el.dniH = 0;
    });
    p.hidden = [];
  };

  // Text nodes and links this snippet wrote a number into: only there are the numbers it
  // showed before (a backup number, an earlier tracking number) its to replace; the same
  // number written elsewhere by the site (say, the backup number as the main office's)
  // stays.
  const mine = new WeakSet();

  // `value` with every number of every pool rewritten (el: the element it belongs to;
  // ours: whether the snippet wrote into it before).
  const rewrite = (value, el, ours) => {
    pools.forEach((p) => {
      [p.re, ours && p.re2].forEach((re) => {
        if (re) value = value.replace(re, (m, before, num) => {
          // :read-write: textareas, inputs, contenteditable (what the visitor types stays)
          if (!el || el.closest("[data-dni-noswap],script,style,noscript,:read-write")) return m;
          if (p.to) return before + render(p, num);
          p.on = 1; // the target is on the page: a session is worth asking for
          hide(p, el);
          return m;
        });
      });
    });
    return value;
  };

  const text = (node) => {
    const v = node.nodeValue;
    // text placed directly in a shadow root belongs to its host
    const r = rewrite(v, node.parentElement || node.getRootNode().host, mine.has(node));
    if (r != v) node.nodeValue = r, mine.add(node);
  };

  const link = (a) => {
    const v = a.getAttribute("href");
    const ours = mine.has(a);
    let r = rewrite(v, a, ours);
    if (r == v) {
      // tel:+1%20555%20010%200000 (site builders encode spaces): matched with spaces,
      // written back encoded; nothing else in the link is decoded
      const spaced = v.replace(/%20/g, " ");
      r = rewrite(spaced, a, ours);
      r = r == spaced ? v : r.replace(/ /g, "%20");
    }
    if (r != v) a.setAttribute("href", r), mine.add(a);
  };

  // Scan one subtree (a text node, an element, a shadow root or the whole document), and
  // the open shadow roots in it, which are watched from then on.
  const scan = (root) => {
    const walker = d.createTreeWalker(root, 5); // elements and text
    for (let n = root; n; n = walker.nextNode()) {
      if (n.nodeType == 3) text(n);
      else {
        if (n.matches && n.matches('[href^="tel:" i],[href^="sms:" i]')) link(n);
        if (n.shadowRoot) observer.observe(n.shadowRoot, WATCH), scan(n.shadowRoot);
      }
    }
  };

  // ---- sessions ----------------------------------------------------------------------
  // A pattern matching any of `numbers` (E.164) as a whole number; 0 when none.
  const any = (p, numbers) => numbers.length &&
    new RegExp("(^|\\D)(" + numbers.map((n) => pattern(p, n)).join("|") + ")(?!\\d)", "g");

  // Show `number` (E.164) wherever the pool's target is, and where the snippet showed an
  // earlier number of this pool.
  const show = (p, number) => {
    p.ns.includes(number) || p.ns.push(number);
    p.to = number;
    const other = (n) => n != number;
    p.re = any(p, [p.ns[0]].filter(other));
    p.re2 = any(p, p.ns.slice(1).filter(other));
    unhide(p);
    scan(d);
  };

  const session = (p) => {
    if (lapsed(hiddenAt)) return; // a retry in a tab left in the background: not now
    // Counts the requests: only the answer to the latest one is used (after consent the
    // visitor can change while a request for the page view's visitor is on its way).
    const n = p.nr = -~p.nr; // + 1, from undefined too
    call("session", {pool_id: p.id, visitor_id: visitor, ...source})
      .then((res) => {
        if (n != p.nr) return;
        clearInterval(p.tm);
        p.nf = 0;
        p.sid = res.session_id;
        const every = (beatS || res.heartbeat_s || 60) * 1e3;
        // A session: keep it alive. The pool was full (fallback, unavailable): ask again
        // as often, so the visitor gets a tracking number once one is free.
        if (p.sid) p.tm = setInterval(() => beat(p), every);
        else if (res.status != "excluded") p.tm = setTimeout(safe(() => session(p)), every);
        // new, reused, fallback: the number given; unavailable, excluded: the page's own.
        show(p, /^(new|reused|fallback)$/.test(res.status) && res.number || p.ns[0]);
      }, (e) => n == p.nr && fail(p, e))
      .catch(noop);
  };

  // The broker failed or was slow: show the page's number, and ask again later. A pool it
  // does not know (its 404 pool_not_found: deleted since the config was read) is dropped
  // for the page view.
  const fail = (p, e) => {
    clearInterval(p.tm);
    show(p, p.ns[0]);
    if (e === true) pools = pools.filter((q) => q != p);
    else later(p, () => session(p));
  };

  // Run `fn` again after a failure of `o`'s request: after 5 s, then 5 s longer each time,
  // at most every minute.
  const later = (o, fn) =>
    o.tm = setTimeout(safe(fn), Math.min(5e3 * (o.nf = -~o.nf), 6e4)); // + 1

  const beat = safe((p) => {
    if (lapsed(hiddenAt)) return;
    call("heartbeat", {pool_id: p.id, visitor_id: visitor, session_id: p.sid})
      .then((res) => res.status == "expired" && session(p), (e) => e === true && fail(p, e))
      .catch(noop);
  });

  // Scan the page and ask for a session in each pool whose target has shown up.
  const run = safe(() => {
    ident();
    scan(d);
    ask();
  });

  const ask = () => pools.forEach((p) => p.on && !p.nr && session(p));

  // Ask for the config of the pools in `ids` (comma-separated); while that fails (the
  // broker is down or slow), ask again on the session requests' schedule.
  const load = (ids, o = {}) => call("config?pools=" + ids.replace(/\s/g, ""))
    .then((res) => {
      for (const id in res.pools) {
        const c = res.pools[id];
        const t = c.target_number;
        if (!t || pools.some((q) => q.id == id)) continue; // no target, or already here
        const p = {id, cc: "" + (c.country_code || 1), ns: [t], hidden: []};
        p.re = any(p, [t]);
        pools.push(p);
      }
      run();
      init();
    }, (e) => !(e < 500) && later(o, () => load(ids, o))) // a 4xx is final
    .catch(noop);

  // Later content: scan only what was added or changed, never the whole page.
  const observer = new MutationObserver(safe((records) => {
    records.forEach((m) => m.type == "childList" ? m.addedNodes.forEach(scan) : scan(m.target));
    ask();
  }));
  const WATCH = {childList: 1, subtree: 1, characterData: 1, attributeFilter: ["href"]};

  // Once, after the first config answer: watch the page and the tab.
  let init = () => {
    init = noop;
    observer.observe(d.documentElement, WATCH);
    if (d.readyState == "loading") d.addEventListener("DOMContentLoaded", run);
    // No hook on history.pushState, replaceState or popstate: a single-page app's new
    // content is the observer's, and what a session request carries is the landing
    // address (fixed for the page view), so a navigation has nothing to rescan. (Some
    // sites call replaceState on every scroll step: a rescan each time would jank them.)
    // Back from the back/forward cache: timers were frozen, check the session now.
    // (a pool without a session asks again: its retries stopped while lapsed)
    const check = () => pools.forEach((p) => p.nr && (p.sid ? beat : session)(p));
    addEventListener("pageshow", (e) => e.persisted && check());
    // Shown again after its beats stopped: check the session (a new one if it lapsed).
    d.addEventListener("visibilitychange", () => {
      const at = hiddenAt;
      hiddenAt = d.hidden && Date.now();
      lapsed(at) && check();
    });
  };

  // The pools to load once started, one config request for each tag's: one tag's bad id
  // (a 422, final) leaves the other's pools working.
  const ids = [opt("pools")];
  const start = () => started || (started = ids.map((i) => load(i)));

  const api = window.dni = {
    consent: safe(() => {
      allowed = 1;
      // The stored visitor may differ from this page view's: ask again (reused if not).
      ident();
      pools.forEach((p) => p.nr && session(p));
      start();
    }),
    // Consent withdrawn: forget the stored visitor and store nothing more on this page.
    revoke: safe(() => {
      allowed = 0;
      d.cookie = "dni_vid=;path=/;max-age=0";
      delete localStorage.dni;
    }),
    swap: () => started && run(),
    // A second tag's pools: loaded now, or with the others once started.
    add: safe((more) => started ? load(more) : ids.push(more)),
    // the queue's own method, for calls made after the snippet loaded
    push: (name) => api[name] && api[name](),
  };

  // Anti-flicker cap: whatever is still hidden then is shown as it is.
  setTimeout(safe(() => pools.forEach(unhide)), hideUntil - Date.now());
  if (mode != "wait") start();
  if (queued && queued.forEach) queued.forEach(api.push);
})();
