// The search page: plain JavaScript, no build. Every text from the server is set with textContent.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const project = body.dataset.project;
  const modality = body.dataset.modality;
  const maxResults = Number(body.dataset.maxResults);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const PAGE = 60;
  const state = {query: "", like: null, results: [], selected: new Map(), more: false, focus: -1, busy: false};

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function getJSON(url) {
    const resp = await fetch(url, {credentials: "same-origin"});
    const data = await resp.json().catch(() => ({error: resp.statusText}));
    if (!resp.ok) throw new Error(data.error || resp.statusText);
    return data;
  }

  async function postJSON(url, payload) {
    const resp = await fetch(url, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: JSON.stringify(payload)});
    const data = await resp.json().catch(() => ({error: resp.statusText}));
    if (!resp.ok) throw new Error(data.error || resp.statusText);
    return data;
  }

  function status(text) { $("status").textContent = text; }
  function result(text, warn) { const r = $("result"); r.textContent = text; r.classList.toggle("warn", !!warn); }

  function searchURL(offset) {
    const params = new URLSearchParams({offset: String(offset), limit: String(PAGE)});
    if (state.like !== null) params.set("like", String(state.like)); else params.set("q", state.query);
    return `/ui/api/${project}/search?${params}`;
  }

  async function search(query, like) {
    state.query = query; state.like = like; state.results = []; state.selected.clear(); state.focus = -1;
    $("grid").replaceChildren();
    $("threshold").value = "1"; $("threshold-value").textContent = "–";
    result("");
    await loadMore();
  }

  async function loadMore() {
    if (state.busy) return;
    state.busy = true;
    status("searching…");
    try {
      const data = await getJSON(searchURL(state.results.length));
      const start = state.results.length;
      state.results.push(...data.results);
      state.more = data.more;
      data.results.forEach((item, n) => $("grid").appendChild(card(item, start + n)));
      const what = state.like !== null ? `more like task ${state.like}` : `“${state.query}”`;
      status(`${state.results.length} results for ${what} (best first) among ${data.embedded} embedded items · ${data.took_ms} ms`);
      if (!state.results.length) status(`no unlabeled embedded item found for ${what}`);
    } catch (err) {
      status(`search failed: ${err.message}`);
    } finally {
      state.busy = false;
      $("load-more").hidden = !state.more;
      refresh();
    }
  }

  function card(item, index) {
    const node = el("div", "card");
    node.dataset.task = String(item.task);
    node.dataset.index = String(index);
    node.tabIndex = -1;
    if (item.thumb) {
      const img = el("img");
      img.loading = "lazy"; img.alt = `task ${item.task}`; img.src = item.thumb;
      node.appendChild(img);
    } else {
      node.appendChild(el("p", "text", item.text || ""));
    }
    const meta = el("div", "meta");
    meta.appendChild(el("span", "score", item.score.toFixed(3)));
    meta.appendChild(el("span", "task", `#${item.task}`));
    const like = el("button", "like", "more like this");
    like.type = "button";
    like.addEventListener("click", (e) => { e.stopPropagation(); moreLike(item.task); });
    meta.appendChild(like);
    node.appendChild(meta);
    node.addEventListener("click", () => { toggle(index); setFocus(index); });
    return node;
  }

  function moreLike(task) { $("query").value = ""; search("", task); }

  function toggle(index) {
    const item = state.results[index];
    if (!item) return;
    if (state.selected.has(item.task)) state.selected.delete(item.task); else state.selected.set(item.task, item);
    refresh();
  }

  function refresh() {
    document.querySelectorAll("#grid .card").forEach((node) => {
      node.classList.toggle("selected", state.selected.has(Number(node.dataset.task)));
      node.classList.toggle("focus", Number(node.dataset.index) === state.focus);
    });
    const n = state.selected.size;
    $("selected-count").textContent = `${n} selected`;
    $("apply").disabled = n === 0;
    $("open-view").disabled = n === 0;
  }

  function setFocus(index) {
    if (!state.results.length) return;
    state.focus = Math.max(0, Math.min(index, state.results.length - 1));
    const node = document.querySelector(`#grid .card[data-index="${state.focus}"]`);
    if (node) { node.focus({preventScroll: true}); node.scrollIntoView({block: "nearest"}); }
    refresh();
  }

  async function selectAbove(threshold) {
    $("threshold-value").textContent = threshold.toFixed(3);
    // load further pages while the ranking's tail is still above the threshold
    while (state.more && state.results.length < maxResults && state.results.length &&
           state.results[state.results.length - 1].score >= threshold && !state.busy) {
      await loadMore();
    }
    state.selected.clear();
    state.results.filter((r) => r.score >= threshold).forEach((r) => state.selected.set(r.task, r));
    refresh();
  }

  function mode() { return document.querySelector('input[name="mode"]:checked').value; }

  function applyPayload() {
    return {label: $("label").value, mode: mode(), query: state.like !== null ? `like:${state.like}` : state.query,
            items: [...state.selected.values()].map((r) => ({task: r.task, score: r.score}))};
  }

  function askApply() {
    const n = state.selected.size;
    if (!n) return;
    if (mode() === "predictions") { apply(applyPayload()); return; }
    $("confirm-text").textContent =
      `Create ${n} annotation${n === 1 ? "" : "s"} “${$("label").value}” in project ${project}? ` +
      "Each one counts as an annotator's label and trains the model.";
    $("confirm").hidden = false;
    $("confirm-yes").focus();
  }

  async function apply(payload) {
    result(`writing ${payload.items.length} ${payload.mode} to Label Studio…`);
    $("apply").disabled = true;
    try {
      const r = await postJSON(`/ui/api/${project}/apply`, payload);
      const skipped = Object.entries(r.skipped).filter(([, n]) => n).map(([why, n]) => `${n} ${why}`);
      const stored = r.mode === "annotations"
        ? `${r.stored.annotated} of the ${r.stored.tasks} selected tasks now hold an annotation “${r.label}”`
        : `${r.stored.predicted} of the ${r.stored.tasks} selected tasks now hold a prediction “${r.label}” (${r.model_version})`;
      result(`Label Studio stored: ${stored}; written now: ${r.written}` + (skipped.length ? `; skipped: ${skipped.join(", ")}` : ""));
      if (r.mode === "annotations") {  // labeled tasks leave the results
        state.results = state.results.filter((x) => !state.selected.has(x.task));
        document.querySelectorAll("#grid .card").forEach((node) => {
          if (state.selected.has(Number(node.dataset.task))) node.remove();
        });
        document.querySelectorAll("#grid .card").forEach((node, i) => { node.dataset.index = String(i); });
        state.selected.clear();
      }
    } catch (err) {
      result(`not applied: ${err.message}`, true);
    } finally {
      refresh();
    }
  }

  async function openView() {
    const tasks = [...state.selected.keys()];
    if (!tasks.length) return;
    const title = state.like !== null ? `More like ${state.like}` : `Search: ${state.query}`;
    try {
      const r = await postJSON(`/ui/api/${project}/view`, {tasks, title});
      const link = el("a", "", `Open “${r.title}” in Label Studio`);
      link.href = r.url; link.target = "_blank"; link.rel = "noopener"; link.id = "view-link";
      $("result").replaceChildren(document.createTextNode(`Data Manager tab created with ${r.tasks} tasks: `), link);
    } catch (err) {
      result(`no tab created: ${err.message}`, true);
    }
  }

  async function showBoundary() {
    const box = $("boundary-pairs");
    box.replaceChildren(el("p", "note", "searching the boundaries…"));
    try {
      const r = await getJSON(`/ui/api/${project}/boundary`);
      box.replaceChildren();
      if (r.note) box.appendChild(el("p", "note", r.note));
      r.pairs.forEach((pair) => {
        const section = el("div", "pair");
        section.appendChild(el("h3", "", `${pair.labels[0]} ↔ ${pair.labels[1]}`));
        const grid = el("div", `grid ${modality}`);
        pair.items.forEach((item) => {
          const node = el("div", "card readonly");
          if (item.thumb) { const img = el("img"); img.loading = "lazy"; img.alt = `task ${item.task}`; img.src = item.thumb; node.appendChild(img); }
          else node.appendChild(el("p", "text", item.text || ""));
          const p = Object.entries(item.proba).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(" · ");
          node.appendChild(el("div", "meta", `#${item.task} · margin ${item.margin.toFixed(3)} · ${p}`));
          grid.appendChild(node);
        });
        section.appendChild(grid);
        box.appendChild(section);
      });
      if (!r.pairs.length && !r.note) box.appendChild(el("p", "note", "no confused pair found"));
    } catch (err) {
      box.replaceChildren(el("p", "warn", `boundary unavailable: ${err.message}`));
    }
  }

  async function pollOverview() {
    try {
      const o = await getJSON(`/ui/api/${project}/overview`);
      $("embedded").textContent = String(o.embedded);
      if ($("tasks") && o.tasks !== null) $("tasks").textContent = String(o.tasks);
      $("embed-progress").max = o.tasks || 1; $("embed-progress").value = o.embedded;
      $("pending").textContent = o.pending ? `${o.pending} being pre-annotated` : "";
      $("serving").textContent = o.serving;
      if (o.pending) setTimeout(pollOverview, 5000);
    } catch (err) { /* the page keeps what it shows */ }
  }

  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("query").value.trim();
    if (q) search(q, null);
  });
  $("load-more").addEventListener("click", loadMore);
  $("threshold").addEventListener("change", (e) => selectAbove(Number(e.target.value)));
  $("threshold").addEventListener("input", (e) => { $("threshold-value").textContent = Number(e.target.value).toFixed(3); });
  $("select-none").addEventListener("click", () => { state.selected.clear(); refresh(); });
  $("apply").addEventListener("click", askApply);
  $("open-view").addEventListener("click", openView);
  $("confirm-yes").addEventListener("click", () => { $("confirm").hidden = true; apply({...applyPayload(), confirm: state.selected.size}); });
  $("confirm-no").addEventListener("click", () => { $("confirm").hidden = true; result("nothing created"); });
  $("boundary-button").addEventListener("click", showBoundary);

  document.addEventListener("keydown", (e) => {
    if (!$("confirm").hidden) { if (e.key === "Escape") $("confirm-no").click(); return; }
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName) &&
                   document.activeElement.type !== "range" && document.activeElement.type !== "radio";
    if (typing) { if (e.key === "Escape") document.activeElement.blur(); return; }
    const keys = {
      "/": () => $("query").focus(),
      "ArrowRight": () => setFocus(state.focus + 1), "j": () => setFocus(state.focus + 1),
      "ArrowLeft": () => setFocus(state.focus - 1), "k": () => setFocus(state.focus - 1),
      "x": () => toggle(state.focus), " ": () => toggle(state.focus),
      "m": () => { const r = state.results[state.focus]; if (r) moreLike(r.task); },
      "a": () => { state.results.forEach((r) => state.selected.set(r.task, r)); refresh(); },
      "Escape": () => { state.selected.clear(); refresh(); },
      "l": () => { if (state.more) loadMore(); },
      "Enter": askApply,
    };
    if (keys[e.key] && !e.ctrlKey && !e.metaKey && !e.altKey) { e.preventDefault(); keys[e.key](); }
  });

  if (Number($("embed-progress").value) < Number($("embed-progress").max) || $("pending").textContent) pollOverview();
})();
