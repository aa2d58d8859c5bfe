// The status page's script, inlined by page.py (the page's CSP allows it by its hash,
// and nothing else), which sets EVERY_MS there. Every value is set as text, never as HTML.
(() => {
  "use strict";
  const KEY = "meter-gateway-token";
  const EVERY_MS = @REFRESH_MS@;
  const here = new URL(location.href);
  if (here.searchParams.has("token")) {
    // Keep the token in this tab only, and out of the address bar and history.
    sessionStorage.setItem(KEY, here.searchParams.get("token") || "");
    here.searchParams.delete("token");
    history.replaceState(null, "", here.pathname + here.search + here.hash);
  }
  const statusUrl = new URL("status?view=page", here);
  const $ = (id) => document.getElementById(id);
  const el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  };
  const list = (items) => {
    const ul = el("ul");
    for (const t of items) ul.append(el("li", t));
    return ul;
  };
  const banner = (v) => {
    const b = el("div", null, "banner " + (!v.ready ? "bad" : v.attention.length ? "warn" : "ok"));
    b.id = "banner";
    const p = el("p", v.ready_text, "state");
    p.id = "ready";
    b.append(p);
    if (v.reasons.length) b.append(list(v.reasons));
    if (v.attention.length) {
      const a = el("div", null, "attention");
      a.id = "attention";
      a.append(el("h2", "Needs attention"), list(v.attention));
      b.append(a);
    }
    return b;
  };
  const section = (s) => {
    const sec = el("section");
    sec.id = "sec-" + s.id;
    sec.append(el("h2", s.title));
    const table = el("table");
    if (s.head) {
      const tr = el("tr");
      for (const h of s.head) tr.append(el("th", h));
      const thead = el("thead");
      thead.append(tr);
      table.append(thead);
    }
    const tbody = el("tbody");
    for (const r of s.rows) {
      const tr = el("tr", null, r.cls);
      r.cells.forEach((c, i) => tr.append(el(!s.head && i === 0 ? "th" : "td", c)));
      tbody.append(tr);
    }
    table.append(tbody);
    sec.append(table);
    if (s.note) sec.append(el("p", s.note, "note"));
    return sec;
  };
  const draw = (v) => {
    document.title = v.title;
    $("title").textContent = v.title;
    $("view").replaceChildren(banner(v), ...v.sections.map(section));
    $("updated").textContent = v.updated;
    $("updated").className = "muted";
  };
  const login = (message) => {
    $("login").hidden = false;
    $("login-msg").textContent = message;
    $("login-token").focus();
  };
  let timer = 0;
  const refresh = async () => {
    clearTimeout(timer);
    const token = sessionStorage.getItem(KEY);
    try {
      const resp = await fetch(statusUrl, {
        headers: token ? { Authorization: "Bearer " + token } : {},
        cache: "no-store",
      });
      if (resp.status === 401) {
        login(token ? "That token was not accepted." : "");
        return; // no polling until a token is given
      }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const body = await resp.json();
      $("login").hidden = true;
      draw(body.view);
    } catch (err) {
      $("updated").textContent =
        "Cannot reach the gateway (" + err.message + "): showing older data, retrying.";
      $("updated").className = "bad";
    }
    timer = setTimeout(refresh, EVERY_MS);
  };
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("login-token").value);
    $("login-token").value = "";
    refresh();
  });
  if (document.body.dataset.loaded === "1") timer = setTimeout(refresh, EVERY_MS);
  else refresh();
})();
