// The review page: one image at a time, class by class, decided with the keyboard.
// A decision is shown as saved only when the server answers, which it does once the decision
// is durable in the catalog; until then its strip item is dashed and the status says "saving".
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const state = { session: null, classes: [], classIdx: 0, filters: [], filterIdx: 0, images: [], idx: 0,
                pending: 0, answered: 0, lastDecided: null, showMasks: true, details: null };
const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const headers = { "X-Diffspec-Token": token, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers, credentials: "same-origin" });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function setStatus(text, error = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", error);
  el.dataset.pending = String(state.pending);
  el.dataset.answered = String(state.answered);  // answers to decisions so far, saved or not
}

function currentClass() { return state.classes[state.classIdx]; }
function current() { return state.images[state.idx]; }

function renderCounts() {
  const c = currentClass();
  if (!c) return;
  $("counts").textContent = `${c.total} images · ${c.accepted} accepted · ${c.rejected} rejected · ` +
    `${c.unreviewed} unreviewed · ${c.filtered} rejected by a filter · ${c.decided} decided by a person`;
  const option = $("class").options[state.classIdx];
  if (option) option.textContent = `${c.name} (${c.total - c.decided} to review)`;
}

function updateClass(counts) {
  const i = state.classes.findIndex((c) => c.name === counts.name);
  if (i >= 0) state.classes[i] = counts;
  renderCounts();
}

function renderStrip() {
  const strip = $("strip");
  strip.replaceChildren(...state.images.map((im, i) => {
    const item = document.createElement("div");
    item.className = "item" + (i === state.idx ? " current" : "");
    item.dataset.fp = im.fingerprint;
    item.dataset.state = im.state;
    item.dataset.by = im.by || "";
    item.title = `${im.fingerprint.slice(0, 12)}: ${im.state}`;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.src = `/api/images/${im.fingerprint}/file`;
    item.appendChild(img);
    item.addEventListener("click", () => { state.idx = i; show(); });
    return item;
  }));
}

function stripItem(fp) { return document.querySelector(`#strip .item[data-fp="${fp}"]`); }

function verdictText(d) {
  if (d.state === "accepted") return d.failed_filters.length ? `accepted by a person (over ${d.failed_filters.join(", ")})` : "accepted by a person";
  if (d.state === "rejected") return d.by === "review" ? "rejected by a person" : `rejected by a filter: ${d.failed_filters.join(", ")}`;
  return "not yet reviewed";
}

function renderDetails(d) {
  state.details = d;
  $("frame").className = d.state;
  const verdict = $("verdict");
  verdict.className = d.state;
  verdict.textContent = verdictText(d);
  const facts = [["fingerprint", d.fingerprint.slice(0, 16)], ["prompt", d.prompt], ["negative", d.negative_prompt || "—"],
    ["seed", d.seed], ["model", `${d.model_name} (${d.model_source})`], ["scheduler", d.scheduler],
    ["steps · guidance", `${d.steps} · ${d.guidance}`], ["size", `${d.width}×${d.height}`],
    ["decisions", d.history.length ? d.history.join(" → ") : "none"]];
  $("facts").replaceChildren(...facts.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v === null || v === undefined ? "—" : String(v);
    return [dt, dd];
  }));
  const body = $("scores").tBodies[0];
  body.replaceChildren(...(d.scores.length ? d.scores : [{ filter: "no filter has run", passed: null, value: null }]).map((s) => {
    const tr = document.createElement("tr");
    const name = document.createElement("td"); name.textContent = s.filter;
    const value = document.createElement("td"); value.textContent = s.value === null ? "" : s.value.toFixed(3);
    const passed = document.createElement("td");
    passed.textContent = s.passed === null ? "" : s.passed ? "passed" : "failed";
    passed.className = s.passed === null ? "" : s.passed ? "pass" : "fail";
    tr.append(name, value, passed);
    return tr;
  }));
  const masks = $("masks");
  $("mask-info").textContent = d.masks.length
    ? `${d.masks.length} kept mask${d.masks.length === 1 ? "" : "s"}: ${d.masks.map((m) => `${m.label || "?"} ${m.score === null ? "" : m.score.toFixed(2)}`).join(", ")} (m toggles)`
    : "none";
  masks.hidden = !(d.masks.length && state.showMasks);
  if (d.masks.length) masks.src = `/api/images/${d.fingerprint}/masks.png`;
}

async function show() {
  document.querySelectorAll("#strip .item.current").forEach((el) => el.classList.remove("current"));
  const im = current();
  $("position").textContent = im ? `${state.idx + 1} / ${state.images.length}` : "no images here";
  if (!im) {
    $("image").removeAttribute("src"); $("masks").hidden = true; $("facts").replaceChildren(); $("verdict").textContent = "";
    return;
  }
  stripItem(im.fingerprint)?.classList.add("current");
  $("image").src = `/api/images/${im.fingerprint}/file`;
  $("masks").hidden = true;
  try {
    const d = await api(`/api/images/${im.fingerprint}`);
    if (current() && current().fingerprint === d.fingerprint) renderDetails(d);
  } catch (e) { setStatus(`could not load the image: ${e.message}`, true); }
}

let loads = 0;
async function loadImages() {
  const c = currentClass();
  const f = state.filters[state.filterIdx];
  const mine = ++loads;
  const body = await api(`/api/images?class=${encodeURIComponent(c.name)}&filter=${encodeURIComponent(f)}`);
  if (mine !== loads) return; // a later switch of class or list asked for another one meanwhile
  state.images = body.images;
  state.idx = 0;
  renderCounts();
  renderStrip();
  $("strip").dataset.list = `${c.name}/${f}`;  // what the strip shows, once it shows it
  await show();
}

async function decide(decision) {
  let im = current();
  if (decision === "undo" && im && im.by !== "review" && state.lastDecided && state.lastDecided !== im.fingerprint) {
    // Nothing to undo here: undo the last decision of this page instead, and go back to it.
    const back = state.images.findIndex((x) => x.fingerprint === state.lastDecided);
    if (back >= 0) { state.idx = back; im = current(); await show(); }
  }
  if (!im) return;
  const fp = im.fingerprint;
  if (decision !== "undo") state.lastDecided = fp; // in the order pressed, not the order answered
  const item = stripItem(fp);
  state.pending += 1;
  if (item) item.dataset.saving = "1";
  setStatus(`saving ${decision} of ${fp.slice(0, 8)}…`);
  if (decision === "accept" || decision === "reject") { // straight on to the next image
    if (state.idx < state.images.length - 1) { state.idx += 1; show(); }
  }
  try {
    const result = await api("/api/decisions", { method: "POST", headers: { "Content-Type": "application/json" },
                                                 body: JSON.stringify({ fingerprint: fp, decision }) });
    state.pending -= 1;
    state.answered += 1;
    const entry = state.images.find((x) => x.fingerprint === fp);
    if (entry) { entry.state = result.image.state; entry.by = result.image.by; }
    if (item) { item.dataset.state = result.image.state; item.dataset.by = result.image.by || ""; delete item.dataset.saving; }
    updateClass(result.counts);
    if (current() && current().fingerprint === fp) renderDetails(result.image);
    setStatus(result.saved ? `saved: ${result.decision} ${fp.slice(0, 8)} (${result.image.state})` : `nothing to undo for ${fp.slice(0, 8)}`);
  } catch (e) {
    state.pending -= 1;
    state.answered += 1;
    if (item) delete item.dataset.saving;
    setStatus(`NOT saved (${decision} ${fp.slice(0, 8)}): ${e.message}`, true);
  }
}

function move(step) {
  const next = state.idx + step;
  if (next >= 0 && next < state.images.length) { state.idx = next; show(); }
}

function switchClass(step) {
  state.classIdx = (state.classIdx + step + state.classes.length) % state.classes.length;
  $("class").selectedIndex = state.classIdx;
  loadImages();
}

function switchFilter(step) {
  state.filterIdx = (state.filterIdx + step + state.filters.length) % state.filters.length;
  $("filter").selectedIndex = state.filterIdx;
  loadImages();
}

const KEYS = {
  a: () => decide("accept"), r: () => decide("reject"), u: () => decide("undo"), c: () => decide("clear"),
  n: () => move(1), ArrowRight: () => move(1), p: () => move(-1), ArrowLeft: () => move(-1),
  "]": () => switchClass(1), "[": () => switchClass(-1), f: () => switchFilter(1), F: () => switchFilter(-1),
  m: () => { state.showMasks = !state.showMasks; if (state.details) renderDetails(state.details); },
};

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const action = KEYS[event.key];
  if (!action) return;
  event.preventDefault();
  if (document.activeElement instanceof HTMLSelectElement) document.activeElement.blur();
  action();
});

async function start() {
  try {
    state.session = await api("/api/session");
  } catch (e) { setStatus(`cannot reach the review server: ${e.message}`, true); return; }
  state.classes = state.session.classes;
  state.filters = state.session.filters;
  $("title").textContent = `review: ${state.session.dataset}`;
  $("class").replaceChildren(...state.classes.map((c) => new Option(c.name, c.name)));
  $("filter").replaceChildren(...state.filters.map((f) => new Option({ all: "all images", filtered: "rejected by a filter",
    unreviewed: "not yet reviewed", accepted: "accepted", rejected: "rejected" }[f] || f, f)));
  $("class").addEventListener("change", (e) => { state.classIdx = e.target.selectedIndex; e.target.blur(); loadImages(); });
  $("filter").addEventListener("change", (e) => { state.filterIdx = e.target.selectedIndex; e.target.blur(); loadImages(); });
  state.classIdx = Math.max(0, state.classes.findIndex((c) => c.total > 0));
  $("class").selectedIndex = state.classIdx;
  await loadImages();
  setStatus(`session ${state.session.session_id}: ready`);
}

start();
