// Progressista's dashboard: keeps the server-rendered page live from /ws.
//
// The first paint comes from the server. This script adopts its cards, then follows its window
// of the board over /ws (view and patch messages), updating only the cards that changed,
// batched once per animation frame.
// Every task field is untrusted text: it reaches the page through textContent and attributes
// only, never as markup. No build step, no dependency, works offline.
"use strict";

(function () {
  const STATES = ["active", "stale", "completed", "failed"];
  const SI = ["", "k", "M", "G", "T", "P", "E", "Z"];
  // Where each shown value lives in a card (templates/card.html), by its element's class.
  const FIELDS = {title: ".title", task_id: ".task-id", progress: "progress", amount: ".amount",
    percent: ".percent", rate: ".rate", elapsed: ".elapsed", eta: ".eta", ago: ".ago",
    postfix: ".postfix", labels: ".labels", error: ".error", spark: ".spark"};

  // ---- Formatting: tqdm's, and the same as progressista/server/display.py ----------------

  function sizeof(num, divisor) {  // tqdm.format_sizeof
    for (const prefix of SI) {
      if (Math.abs(num) < 999.5) {
        if (Math.abs(num) < 99.95) {
          return (Math.abs(num) < 9.995 ? num.toFixed(2) : num.toFixed(1)) + prefix;
        }
        return num.toFixed(0) + prefix;
      }
      num /= divisor;
    }
    return num.toFixed(1) + "Y";
  }

  function isScaled(task) {
    return task.unit_scale === true || (typeof task.unit_scale === "number" && task.unit_scale !== 0);
  }

  function scaled(value, task) {
    if (isScaled(task)) {
      const factor = task.unit_scale === true ? 1 : task.unit_scale;
      if (task.unit_scale === true || factor !== 1) return sizeof(value * factor, task.unit_divisor);
    }
    if (Number.isInteger(value)) return value.toLocaleString("en-US");
    return value.toLocaleString("en-US", {minimumFractionDigits: 2, maximumFractionDigits: 2});
  }

  function withUnit(value, task) {
    const text = scaled(value, task);
    if (!isScaled(task)) return text + " " + task.unit;
    const last = text.slice(-1);
    if (/[A-Za-z]/.test(last)) return text.slice(0, -1) + " " + last + task.unit;
    return text + " " + task.unit;
  }

  function amount(task) {
    if (task.total === null) return withUnit(task.n, task);
    if (isScaled(task)) return withUnit(task.n, task) + " / " + withUnit(task.total, task);
    return scaled(task.n, task) + " / " + scaled(task.total, task) + " " + task.unit;
  }

  function rate(task) {
    const value = task.rate;
    if (value === null) return "";
    if (value > 0 && value < 1) return (1 / value).toFixed(2) + " s/" + task.unit;
    if (isScaled(task)) {
      const text = scaled(value, task);
      const last = text.slice(-1);
      if (/[A-Za-z]/.test(last)) return text.slice(0, -1) + " " + last + task.unit + "/s";
      return text + " " + task.unit + "/s";
    }
    return value.toFixed(2) + " " + task.unit + "/s";
  }

  function pad(number) {
    return String(number).padStart(2, "0");
  }

  function interval(seconds) {  // tqdm.format_interval
    if (seconds === null || seconds === undefined) return "";
    const whole = Math.floor(Math.max(seconds, 0));
    const minutes = Math.floor(whole / 60);
    const hours = Math.floor(minutes / 60);
    return hours ? `${hours}:${pad(minutes % 60)}:${pad(whole % 60)}`
      : `${pad(minutes)}:${pad(whole % 60)}`;
  }

  function percent(task) {
    return task.percent === null ? "" : task.percent.toFixed(0) + "%";
  }

  // Same numbers as display.sparkline: whole units of a 1000 by 200 box, floor(v + 0.5).
  function sparkline(history, top) {
    const times = [], values = [];
    for (let i = 0; i + 1 < history.length; i += 2) { times.push(history[i]); values.push(history[i + 1]); }
    if (times.length < 2 || !(times[times.length - 1] > times[0])) return "";
    const span = times[times.length - 1] - times[0];
    let high = top ? top : Math.max(...values);
    if (!high || !(high > 0) || !Number.isFinite(high) || !Number.isFinite(span)) high = 1;
    const points = [];
    for (let i = 0; i < times.length; i++) {
      const x = Math.floor((times[i] - times[0]) / span * 1000 + 0.5);
      const y = Math.floor(200 - Math.min(Math.max(values[i] / high, 0), 1) * 200 + 0.5);
      points.push(`${x},${y}`);
    }
    return points.join(" ");
  }

  function jobRate(value, unit) {  // display.job_rate
    return rate({rate: value, unit: unit, unit_scale: value >= 1000, unit_divisor: 1000});
  }

  function jobView(job) {  // display.job_card
    const counts = job.tasks;
    const bars = counts.active + counts.stale + counts.completed + counts.failed;
    const summary = [`${counts.completed} of ${Math.max(bars, job.size || 0)} done`];
    if (counts.failed) summary.push(`${counts.failed} failed`);
    if (counts.stale) summary.push(`${counts.stale} stale`);
    const details = [];
    if (job.fraction !== null) details.push((job.fraction * 100).toFixed(0) + "%");
    if (job.rate !== null && job.unit !== null) details.push(jobRate(job.rate, job.unit));
    if (job.eta !== null) details.push("ETA " + interval(job.eta));
    return {
      name: job.job, run: job.run > 1 ? `run ${job.run}` : "", state: job.state,
      summary: summary.join(", "), details: details.join(" · "),
      fraction: job.fraction, error: job.error === null ? "" : `${job.error_task}: ${job.error}`,
      spark: sparkline(job.history || [], 1),
    };
  }

  function ago(seconds) {  // display.ago
    if (!Number.isFinite(seconds) || seconds < 1) return "updated just now";
    const whole = Math.floor(seconds);
    if (whole < 60) return `updated ${whole} s ago`;
    if (whole < 3600) return `updated ${Math.floor(whole / 60)} min ago`;
    if (whole < 86400) return `updated ${Math.floor(whole / 3600)} h ago`;
    return `updated ${Math.floor(whole / 86400)} d ago`;
  }

  // The server's clock minus this page's: "updated 4 s ago" is right even when ours is off.
  let clockOffset = Number(document.getElementById("board").dataset.now) - Date.now() / 1000 || 0;

  function serverNow() {
    return Date.now() / 1000 + clockOffset;
  }

  const HIDDEN_LABELS = new Set(["job", "parent", "leave"]);
  const RUN_LABELS = new Set([...HIDDEN_LABELS, "role", "processes", "bars", "bars_open"]);

  function view(task) {
    const elapsed = task.elapsed !== null ? task.elapsed
      : (task.closed_at || Date.now() / 1000) - task.created_at;
    const labels = [];
    const meta = task.meta || {};
    // As display.card: progressista run's own task has no rate or ETA, and its counts are in
    // its postfix; the parent and leave=false show in how the board nests and drops bars.
    const run = meta.role === "run";
    const hidden = run ? RUN_LABELS : HIDDEN_LABELS;
    if (meta.job !== undefined && meta.job !== null) labels.push("job=" + meta.job);
    for (const [key, value] of Object.entries(meta)) {
      if (!hidden.has(key)) labels.push(key + "=" + value);
    }
    return {
      title: task.desc || task.task_id,
      task_id: task.task_id,
      amount: amount(task),
      percent: percent(task),
      rate: run ? "" : rate(task),
      elapsed: interval(elapsed),
      eta: task.state === "active" && !run ? interval(task.eta) : "",
      ago: ago(serverNow() - task.updated_at),
      postfix: task.postfix || "",
      error: task.error || "",
      labels: labels,
      job: meta.job === undefined || meta.job === null ? "" : String(meta.job),
      total: task.total || 0,
      n: task.total ? Math.min(task.n, task.total) : 0,
    };
  }

  // ---- The board ---------------------------------------------------------------------
  //
  // The server keeps the board; this page holds only its window: per state, the newest tasks
  // matching the filter (at most `limit` of them) and the counts for everything. Messages:
  // "view" replaces the window, "patch" merges changed fields, drops `removed` ids, and may
  // carry the new order of a section and the counts.

  const board = document.getElementById("board");
  const byState = document.getElementById("by-state");
  const byJob = document.getElementById("by-job");
  const empty = document.getElementById("empty");
  const status = document.getElementById("connection");
  const filterBox = document.getElementById("filter");
  const groupBox = document.getElementById("group-by-job");
  const cardTemplate = document.getElementById("card-template");
  const jobTemplate = document.getElementById("job-template");

  const stateLists = {};
  const stateCounts = {};
  const moreButtons = {};
  for (const section of byState.querySelectorAll("section[data-state]")) {
    const state = section.dataset.state;
    stateLists[state] = section.querySelector(".tasks");
    stateCounts[state] = section.querySelector(".count");
    moreButtons[state] = section.querySelector(".more");
  }

  const STEP = Number(board.dataset.step) || 50;
  let limit = Number(board.dataset.limit) || STEP;
  const tasks = new Map();     // id → latest task, for the tasks in the window
  const cards = new Map();     // id → {el, fields, shown, job}
  const jobs = new Map();      // job → {el, list, fields, ids}
  let sections = {active: [], stale: [], completed: [], failed: []};  // ids, newest first
  let counts = null;           // state → [matching, total]
  const dirty = new Set();     // ids to redraw in the next frame
  let placeDue = false;        // sections or grouping changed: put cards in order
  let frameRequested = false;
  let query = (filterBox.value || "").trim();
  let groupByJob = groupBox.checked;
  const sortBox = document.getElementById("sort");
  const compactBox = document.getElementById("compact");
  let sortBy = sortBox.value;
  const applyTimes = [];       // ms per frame of DOM work, read by the benchmark

  function fieldsOf(el, shown) {
    const fields = {};
    for (const [name, selector] of Object.entries(FIELDS)) {
      fields[name] = el.querySelector(selector);
      // A server-rendered card already shows its text: read it once, so that the first
      // view rewrites only what changed since the page was rendered.
      if (shown && name !== "progress" && name !== "labels" && name !== "spark") {
        shown[name] = fields[name].textContent;
      }
    }
    return fields;
  }

  function adopt() {
    for (const state of STATES) {
      sections[state] = [];
      for (const el of stateLists[state].querySelectorAll("li.card")) {
        const id = el.dataset.taskId;
        sections[state].push(id);
        cards.set(id, {el: el, fields: null, shown: {}, job: el.dataset.job});
      }
    }
  }

  function newCard(id) {
    const el = cardTemplate.content.firstElementChild.cloneNode(true);
    el.dataset.taskId = id;
    return {el: el, fields: fieldsOf(el, null), shown: {}, job: null};
  }

  function setText(card, name, text) {
    if (card.shown[name] !== text) {
      card.fields[name].textContent = text;
      card.shown[name] = text;
    }
  }

  function fill(card, task) {
    if (!card.fields) card.fields = fieldsOf(card.el, card.shown);
    const v = view(task);
    for (const name of ["title", "task_id", "amount", "percent", "rate", "elapsed", "eta",
      "ago", "postfix", "error"]) {
      setText(card, name, v[name]);
    }
    // Long text is clamped to a few lines (CSS); the whole of it on hover, or a click.
    if (card.shown.hover !== v.title) { card.fields.title.title = v.title; card.shown.hover = v.title; }
    card.el.dataset.updated = String(task.updated_at);
    const bar = card.fields.progress;
    const hasTotal = Boolean(task.total);
    if (bar.hidden === hasTotal) bar.hidden = !hasTotal;
    if (hasTotal) {
      if (card.shown.max !== v.total) { bar.max = v.total; card.shown.max = v.total; }
      if (card.shown.value !== v.n) { bar.value = v.n; card.shown.value = v.n; }
    }
    if (card.shown.aria !== v.title) { bar.setAttribute("aria-label", v.title); card.shown.aria = v.title; }
    const labels = v.labels.join("\u0000");
    if (card.shown.labels !== labels) {
      const list = card.fields.labels;
      list.replaceChildren(...v.labels.map((text, i) => {
        const item = document.createElement("li");
        item.className = i === 0 && v.job ? "label job" : "label";
        item.textContent = text;
        return item;
      }));
      card.shown.labels = labels;
    }
    if (card.el.dataset.state !== task.state) card.el.dataset.state = task.state;
    if (card.el.dataset.job !== v.job) { card.el.dataset.job = v.job; placeDue = true; }
    setSpark(card.fields.spark, card.shown, sparkline(task.history || [], task.total));
  }

  function setSpark(svg, shown, points) {
    if (shown.spark === points) return;
    svg.hidden = !points;
    svg.firstElementChild.setAttribute("points", points);
    shown.spark = points;
  }

  // A partial update brings n and updated_at, not the history: extend it here, as the server
  // does (a sample at least a second apart, at most 32 of them).
  function extendHistory(task) {
    const history = task.history || (task.history = []);
    const last = history.length >= 2 ? history[history.length - 2] : null;
    if (last === null || task.updated_at - last >= 1) {
      history.push(task.updated_at, task.n);
      if (history.length > 64) history.splice(0, history.length - 64);
    }
  }

  function jobGroup(name) {
    let group = jobs.get(name);
    if (!group) {
      const el = jobTemplate.content.firstElementChild.cloneNode(true);
      el.dataset.job = name;
      group = {el: el, list: el.querySelector(".tasks"), ids: [], fields: {
        name: el.querySelector('[data-field="name"]'),
        count: el.querySelector('[data-field="count"]'),
        progress: el.querySelector('[data-field="progress"]'),
        summary: el.querySelector('[data-field="summary"]'),
      }};
      group.fields.name.textContent = name || "(no job)";
      group.fields.progress.setAttribute("aria-label", `${name || "(no job)"}: all tasks`);
      jobs.set(name, group);
      byJob.prepend(el);
    }
    return group;
  }

  function order(list, ids) {
    // Put the cards of `ids` into `list` in that order, moving only those out of place.
    let at = list.firstElementChild;
    for (const id of ids) {
      const card = cards.get(id);
      if (!card) continue;
      if (card.el === at) { at = at.nextElementSibling; continue; }
      list.insertBefore(card.el, at);
    }
    while (at) {  // what is left is no longer in this list
      const next = at.nextElementSibling;
      const id = at.dataset.taskId;
      if (!ids.includes(id)) at.remove();
      at = next;
    }
  }

  const SORTERS = {
    updated: (a, b) => b.updated_at - a.updated_at,
    progress: (a, b) => (b.percent ?? -1) - (a.percent ?? -1),
    eta: (a, b) => (a.eta ?? Infinity) - (b.eta ?? Infinity),
    name: (a, b) => (a.desc || a.task_id).localeCompare(b.desc || b.task_id),
  };

  function sorted(ids) {
    // The server sends each section newest first; another order sorts the cards shown.
    // Cards discarded on this page (waiting for their undo to lapse) stay out.
    const shown = hiddenIds.size ? ids.filter((id) => !hiddenIds.has(id)) : ids;
    const compare = SORTERS[sortBy];
    if (!compare) return shown;
    return shown.filter((id) => tasks.has(id)).sort((a, b) => compare(tasks.get(a), tasks.get(b)));
  }

  // A task whose meta.parent is another card of its section goes inside that card (folded,
  // "12 bars"), not beside it: a run's bars under the run, inner loops under their outer bar.
  function nest(ids) {
    const here = new Set(ids);
    const top = [];
    const children = new Map();
    for (const id of ids) {
      const task = tasks.get(id);
      const parent = task && task.meta ? task.meta.parent : undefined;
      if (typeof parent === "string" && parent !== id && here.has(parent)) {
        if (!children.has(parent)) children.set(parent, []);
        children.get(parent).push(id);
      } else {
        top.push(id);
      }
    }
    for (const id of ids) {
      const card = cards.get(id);
      if (!card) continue;
      const kids = children.get(id) || [];
      const list = card.el.querySelector(".children");
      const toggle = card.el.querySelector(".kids");
      order(list, kids);
      toggle.hidden = kids.length === 0;
      if (kids.length) {
        const open = toggle.getAttribute("aria-expanded") === "true";
        toggle.textContent = `${open ? "▾" : "▸"} ${kids.length} ${kids.length === 1 ? "bar" : "bars"}`;
        list.hidden = !open;
      } else {
        list.hidden = true;
      }
    }
    return top;
  }

  function place() {
    placeDue = false;
    if (!groupByJob) {
      for (const state of STATES) order(stateLists[state], nest(sorted(sections[state])));
      return;
    }
    for (const group of jobs.values()) group.ids = [];
    for (const state of STATES) {
      for (const id of sorted(sections[state])) {
        const card = cards.get(id);
        if (card) jobGroup(card.el.dataset.job).ids.push(id);
      }
    }
    for (const [name, group] of jobs) {
      if (group.ids.length === 0) { group.el.remove(); jobs.delete(name); continue; }
      order(group.list, group.ids);
    }
    summarizeJobs();
  }

  function summarizeJobs() {
    for (const group of jobs.values()) {
      // Each task weighs the same: bytes and rows do not add up, fractions do. A completed task
      // is whole; one without a total has no fraction and sits out. The job's ETA is its
      // slowest active task's. Of the tasks shown: the board's window, not every task.
      let fractions = 0, weighed = 0, done = 0, failed = 0, eta = 0;
      for (const id of group.ids) {
        const task = tasks.get(id);
        if (!task) continue;
        if (task.state === "completed") { fractions += 1; weighed += 1; done += 1; }
        else if (task.total) { fractions += Math.min(task.n / task.total, 1); weighed += 1; }
        if (task.state === "failed") failed += 1;
        if (task.state === "active" && task.eta) eta = Math.max(eta, task.eta);
      }
      group.fields.count.textContent = String(group.ids.length);
      group.fields.progress.hidden = weighed === 0;
      if (weighed) { group.fields.progress.max = weighed; group.fields.progress.value = fractions; }
      let summary = `${done} of ${group.ids.length} done`;
      if (failed) summary += `, ${failed} failed`;
      if (weighed) summary += ` · ${(100 * fractions / weighed).toFixed(0)}%`;
      if (eta) summary += ` · ETA ${interval(eta)}`;
      group.fields.summary.textContent = summary;
    }
  }

  function recount() {
    if (!counts) return;
    let total = 0;
    const hidden = {active: 0, stale: 0, completed: 0, failed: 0};
    for (const id of hiddenIds) {
      const task = tasks.get(id);
      if (task && Object.hasOwn(hidden, task.state)) hidden[task.state] += 1;
    }
    for (const state of STATES) {
      const matching = counts[state][0] - hidden[state];
      const all = counts[state][1] - hidden[state];
      total += all;
      const text = matching === all ? String(all) : `${matching} of ${all}`;
      if (stateCounts[state].textContent !== text) stateCounts[state].textContent = text;
      const more = matching - sorted(sections[state]).length;
      const button = moreButtons[state];
      if (button.hidden !== (more <= 0)) button.hidden = more <= 0;
      if (more > 0) button.textContent = `Show more (${more} not shown)`;
    }
    empty.hidden = total > 0;
  }

  function redraw() {
    frameRequested = false;
    const started = performance.now();
    for (const id of dirty) {
      const task = tasks.get(id);
      if (!task) {
        const card = cards.get(id);
        if (card) card.el.remove();
        cards.delete(id);
        continue;
      }
      let card = cards.get(id);
      if (!card) { card = newCard(id); cards.set(id, card); placeDue = true; }
      fill(card, task);
    }
    if (dirty.size && SORTERS[sortBy]) placeDue = true;
    dirty.clear();
    if (placeDue) place();
    else if (groupByJob) summarizeJobs();
    recount();
    if (jobsDirty) redrawJobs();
    applyTimes.push(performance.now() - started);
    if (applyTimes.length > 1000) applyTimes.splice(0, 500);
  }

  function schedule() {
    if (!frameRequested) {
      frameRequested = true;
      requestAnimationFrame(redraw);
    }
  }

  // ---- Jobs overview ----------------------------------------------------------------

  const jobsSection = document.getElementById("jobs");
  const jobList = jobsSection.querySelector(".job-list");
  const jobHistoryList = document.getElementById("job-history-list");
  const jobHistoryButton = document.getElementById("job-history");
  const jobCardTemplate = document.getElementById("job-card-template");
  const jobRuns = new Map();    // id → job run (from "jobs" messages)
  const jobCards = new Map();   // id → {el, fields, shown}
  let jobsDirty = false;

  function jobCardFor(id) {
    let card = jobCards.get(id);
    if (!card) {
      const el = jobList.querySelector(`li[data-job-id="${CSS.escape(id)}"]`)
        || jobCardTemplate.content.firstElementChild.cloneNode(true);
      el.dataset.jobId = id;
      card = {el: el, shown: {}, fields: {
        name: el.querySelector(".job-name"), run: el.querySelector(".job-run"),
        state: el.querySelector(".job-state"), progress: el.querySelector("progress"),
        summary: el.querySelector(".job-summary"), details: el.querySelector(".job-details"),
        error: el.querySelector(".error"), spark: el.querySelector(".spark"),
      }};
      jobCards.set(id, card);
    }
    return card;
  }

  function fillJob(card, job) {
    const v = jobView(job);
    for (const name of ["name", "run", "state", "summary", "details", "error"]) {
      if (card.shown[name] !== v[name]) { card.fields[name].textContent = v[name]; card.shown[name] = v[name]; }
    }
    const bar = card.fields.progress;
    bar.hidden = v.fraction === null;
    if (v.fraction !== null) bar.value = v.fraction;
    card.el.dataset.state = job.state;
    card.el.dataset.job = job.job;
    setSpark(card.fields.spark, card.shown, v.spark);
  }

  // Finished runs shown, as in the server's overview: every unfinished run and the 20 finished
  // ones updated last. The feed tells of every run that changes, and a day of one-off jobs
  // would otherwise pile up as cards (older ones are in History). The runs themselves are all
  // kept (the server drops them past job_retention): a finished run can still change (its
  // head closed while its bars run on) and comes as its changed fields only.
  const RECENT_JOBS = 20;

  function redrawJobs() {
    jobsDirty = false;
    // Unfinished runs first, then finished ones; the most recently updated first in each.
    const ordered = Array.from(jobRuns.values()).sort((a, b) =>
      (a.finished_at === null) === (b.finished_at === null)
        ? b.updated_at - a.updated_at : (a.finished_at === null ? -1 : 1));
    const shown = new Set();
    let at = jobList.firstElementChild;
    let finished = 0;
    for (const job of ordered) {
      if (job.finished_at !== null && ++finished > RECENT_JOBS) continue;
      const card = jobCardFor(job.id);
      fillJob(card, job);
      shown.add(job.id);
      if (card.el === at) at = at.nextElementSibling; else jobList.insertBefore(card.el, at);
    }
    for (const [id, card] of jobCards) {
      if (!shown.has(id)) { card.el.remove(); jobCards.delete(id); }
    }
    jobsSection.hidden = jobRuns.size === 0 && jobHistoryList.hidden;
    markNotifyButtons();
  }

  function applyJobs(message) {
    if (message.whole) jobRuns.clear();
    for (const id of message.removed) jobRuns.delete(id);
    for (const [id, fields] of Object.entries(message.jobs)) {
      const known = jobRuns.get(id);
      if (known) {
        const before = known.state;
        Object.assign(known, fields);
        notifyChange(before, known);
        // Sampled as the server samples (a flat fraction too): changes carry only what moved.
        if (known.fraction !== null && known.fraction !== undefined) {
          const history = known.history || (known.history = []);
          const last = history.length >= 2 ? history[history.length - 2] : null;
          if (last === null || known.updated_at - last >= 1) history.push(known.updated_at, known.fraction);
          if (history.length > 64) history.splice(0, history.length - 64);
        }
      } else {
        jobRuns.set(id, fields);
      }
    }
    jobsDirty = true;
    schedule();
  }

  function showJob(name) {
    // A job's tasks are the board filtered to its label; the URL keeps it, as any filter.
    filterBox.value = `job=${name}`;
    query = filterBox.value;
    limit = STEP;
    subscribe();
  }

  // ---- "Notify me": the browser's own notifications, while the page is open ---------------

  const notifyNote = document.getElementById("notify-note");
  const watched = new Set(JSON.parse(localStorage.getItem("progressista.notify") || "[]"));

  function notificationsUnavailable() {
    if (!("Notification" in window)) return "this browser cannot show notifications";
    if (!window.isSecureContext) {
      return "browsers show notifications only for pages over HTTPS or on localhost";
    }
    if (Notification.permission === "denied") return "notifications are blocked for this page";
    return null;
  }

  function showNote(text) {
    notifyNote.textContent = text;
    notifyNote.hidden = !text;
  }

  function markNotifyButtons() {
    const reason = notificationsUnavailable();
    for (const button of jobsSection.querySelectorAll(".job-notify")) {
      const name = button.closest("li").dataset.job;
      const on = !reason && watched.has(name);
      button.setAttribute("aria-pressed", String(on));
      button.textContent = on ? "notifying" : "notify me";
      if (reason) { button.setAttribute("aria-disabled", "true"); button.title = reason; }
    }
  }

  async function toggleNotify(name) {
    const reason = notificationsUnavailable();
    if (reason) { showNote(`Notifications unavailable: ${reason}.`); return; }
    if (watched.has(name)) {
      watched.delete(name);
    } else {
      if (Notification.permission !== "granted" && await Notification.requestPermission() !== "granted") {
        showNote("Notifications unavailable: permission was not given.");
        return;
      }
      watched.add(name);
    }
    localStorage.setItem("progressista.notify", JSON.stringify(Array.from(watched)));
    showNote(watched.size ? `Notifying you about ${Array.from(watched).join(", ")}.` : "");
    markNotifyButtons();
  }

  const TOLD = {failed: "✗ failed", stalled: "⏸ stalled", completed: "✓ completed"};

  function notifyChange(before, job) {
    // A watched job that changed state: tell the person, once per change.
    if (!watched.has(job.job) || !before || before === job.state || !TOLD[job.state]) return;
    if (notificationsUnavailable() || Notification.permission !== "granted") return;
    const v = jobView(job);
    new Notification(`${job.job} ${TOLD[job.state]}`, {body: [v.summary, v.details, v.error]
      .filter(Boolean).join(" · "), tag: `${job.id}:${job.state}`});
  }

  jobsSection.addEventListener("click", (event) => {
    const text = event.target.closest(".clamp");  // a job's error, cut as a task's is
    if (text) text.classList.toggle("open");
    const open = event.target.closest(".job-open");
    if (open) showJob(open.closest("li").dataset.job);
    const notify = event.target.closest(".job-notify");
    if (notify) toggleNotify(notify.closest("li").dataset.job);
  });

  jobHistoryButton.addEventListener("click", async () => {
    const opening = jobHistoryList.hidden;
    jobHistoryButton.setAttribute("aria-expanded", String(opening));
    if (!opening) { jobHistoryList.hidden = true; return; }
    try {
      const response = await fetch("/jobs?state=completed,failed", {credentials: "same-origin"});
      const body = response.ok ? await response.json() : {jobs: []};
      jobHistoryList.replaceChildren(...body.jobs.map((job) => {
        const el = jobCardTemplate.content.firstElementChild.cloneNode(true);
        const card = {el: el, shown: {}, fields: {
          name: el.querySelector(".job-name"), run: el.querySelector(".job-run"),
          state: el.querySelector(".job-state"), progress: el.querySelector("progress"),
          summary: el.querySelector(".job-summary"), details: el.querySelector(".job-details"),
          error: el.querySelector(".error"), spark: el.querySelector(".spark"),
        }};
        el.dataset.jobId = job.id;
        fillJob(card, job);
        return el;
      }));
      jobHistoryList.hidden = false;
    } catch (error) {
      setConnection("error", "could not load the job history");
    }
  });

  // Tasks as sent (docs/protocol.md): a whole task leaves out its id (the key it comes under),
  // percent (it follows from n and total) and every field at its default, which the server
  // names in the page; a partial one carries what changed, and updated_at only when it is not
  // the message's `at`.
  const TASK_DEFAULTS = JSON.parse(board.dataset.taskDefaults);

  function percentOf(task) {
    const percent = task.total ? 100 * task.n / task.total : null;
    return Number.isFinite(percent) ? percent : null;  // as the server stores it
  }

  function wholeTask(id, sent) {
    const task = Object.assign(structuredClone(TASK_DEFAULTS), sent);
    task.task_id = id;
    task.percent = percentOf(task);
    return task;
  }

  function completePartial(task, fields, at) {
    if (at !== undefined && !Object.hasOwn(fields, "updated_at")) task.updated_at = at;
    if (Object.hasOwn(fields, "n") || Object.hasOwn(fields, "total")) task.percent = percentOf(task);
  }

  function apply(message) {
    if (message.type === "jobs") {
      applyJobs(message);
      return;
    }
    if (message.type === "status") {
      storeProblem = message.store === "ok" ? null : message.reason;
      showConnection();
      return;
    }
    if (message.type === "refused") {
      // The board stays on the filter it had: say so at the box, rather than show a filter
      // the board does not follow.
      filterBox.setCustomValidity(`not applied: ${message.reason}`);
      filterBox.setAttribute("aria-invalid", "true");
      filterBox.title = filterBox.validationMessage;
      filterBox.reportValidity();
      return;
    }
    if (message.type === "view") {
      filterBox.setCustomValidity("");
      filterBox.removeAttribute("aria-invalid");
      filterBox.title = "";
      if (typeof message.now === "number") clockOffset = message.now - Date.now() / 1000;
      for (const id of cards.keys()) if (!Object.hasOwn(message.tasks, id)) dirty.add(id);
      tasks.clear();
      sections = message.sections;
      counts = message.counts;
      placeDue = true;
    }
    for (const id of message.removed || []) {
      tasks.delete(id);
      dirty.add(id);
    }
    // Object.hasOwn and Map, not `in` on plain objects: a task may be called "constructor".
    const whole = message.type === "view" ? message.tasks : message.replace;
    for (const [id, sent] of Object.entries(whole || {})) {
      tasks.set(id, wholeTask(id, sent));
      dirty.add(id);
    }
    if (message.type === "patch") {
      for (const [id, fields] of Object.entries(message.tasks || {})) {
        const known = tasks.get(id);
        if (!known) continue;  // (a patch changes only tasks sent whole before)
        Object.assign(known, fields);
        completePartial(known, fields, message.at);
        if ("n" in fields && !("history" in fields)) extendHistory(known);
        dirty.add(id);
      }
    }
    if (message.sections) { Object.assign(sections, message.sections); placeDue = true; }
    if (message.counts) counts = message.counts;
    schedule();
  }

  // ---- Controls ----------------------------------------------------------------------

  function rememberInUrl() {
    const params = new URLSearchParams(location.search);
    if (query) params.set("q", query); else params.delete("q");
    if (groupByJob) params.set("group", "job"); else params.delete("group");
    if (sortBy !== "newest") params.set("sort", sortBy); else params.delete("sort");
    if (compactBox.checked) params.set("view", "compact"); else params.delete("view");
    if (limit !== STEP) params.set("limit", String(limit)); else params.delete("limit");
    const search = params.toString();
    history.replaceState(null, "", search ? "?" + search : location.pathname);
  }

  function subscribe() {
    rememberInUrl();
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({type: "subscribe", q: query, limit: limit}));
    } else if (polling) {
      poll();
    }
  }

  function regroup() {
    board.dataset.group = groupByJob ? "job" : "state";
    byState.hidden = groupByJob;
    byJob.hidden = !groupByJob;
    placeDue = true;
    schedule();
  }

  let filterTimer = null;
  filterBox.form.addEventListener("submit", (event) => event.preventDefault());
  filterBox.addEventListener("input", () => {
    // Ask the server once typing pauses, not once per key.
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      const next = filterBox.value.trim();
      if (next === query) return;
      query = next;
      limit = STEP;
      subscribe();
    }, 200);
  });
  groupBox.addEventListener("change", () => {
    groupByJob = groupBox.checked;
    regroup();
    rememberInUrl();
  });
  sortBox.addEventListener("change", () => {
    sortBy = sortBox.value;
    placeDue = true;
    schedule();
    rememberInUrl();
  });
  compactBox.addEventListener("change", () => {
    board.dataset.view = compactBox.checked ? "compact" : "cards";
    rememberInUrl();
  });

  // "updated 4 s ago" moves on by itself: refresh the cards shown every few seconds.
  setInterval(() => {
    for (const [id, card] of cards) {
      const task = tasks.get(id);
      if (task && card.fields) setText(card, "ago", ago(serverNow() - task.updated_at));
    }
  }, 5000);

  // A clamped text opens with a click (and closes with another); Enter does it for the keyboard.
  board.addEventListener("click", (event) => {
    const text = event.target.closest(".clamp");
    if (text && !event.target.closest("button")) text.classList.toggle("open");
    const kids = event.target.closest(".kids");
    if (kids) {
      kids.setAttribute("aria-expanded", String(kids.getAttribute("aria-expanded") !== "true"));
      placeDue = true;
      schedule();
    }
  });

  // ---- Discarding: undoable for a few seconds, then exactly what was shown ----------------

  const toasts = document.getElementById("toasts");
  const toastTemplate = document.getElementById("toast-template");
  const UNDO_SECONDS = 6;
  const hiddenIds = new Set();  // discarded on the page, not yet on the server

  function later(text, ids, commit) {
    // Hide ids now; commit after UNDO_SECONDS unless the person clicks Undo.
    for (const id of ids) { hiddenIds.add(id); dirty.add(id); }
    placeDue = true;
    schedule();
    const toast = toastTemplate.content.firstElementChild.cloneNode(true);
    toast.querySelector(".toast-text").textContent = text;
    toasts.append(toast);
    const timer = setTimeout(async () => {
      toast.remove();
      await commit();
      for (const id of ids) hiddenIds.delete(id);
    }, UNDO_SECONDS * 1000);
    toast.querySelector(".undo").addEventListener("click", () => {
      clearTimeout(timer);
      toast.remove();
      for (const id of ids) { hiddenIds.delete(id); dirty.add(id); }
      placeDue = true;
      schedule();
    });
  }

  async function deleteIds(ids) {
    // In pieces: a body holds a few thousand ids at most.
    for (let start = 0; start < ids.length; start += 5000) {
      try {
        const response = await fetch("/tasks", {
          method: "DELETE", credentials: "same-origin",
          headers: {"Content-Type": "application/json"},
          body: JSON.stringify({ids: ids.slice(start, start + 5000)}),
        });
        if (!response.ok) setConnection("error", `could not discard (HTTP ${response.status})`);
      } catch (error) {
        setConnection("error", "could not discard: server unreachable");
      }
    }
  }

  async function matchingIds(state) {
    // Every task of this state that matches the filter now: what the section counts.
    const ids = [];
    let after = null;
    do {
      const params = new URLSearchParams({state: state, limit: "10000"});
      if (query) params.set("q", query);
      if (after) params.set("after", after);
      const response = await fetch("/tasks?" + params, {credentials: "same-origin", cache: "no-store"});
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = await response.json();
      ids.push(...Object.keys(body.tasks));
      after = body.next;
    } while (after);
    return ids;
  }

  board.addEventListener("click", async (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.classList.contains("discard")) {
      const id = button.closest("li.card").dataset.taskId;
      const title = tasks.has(id) ? (tasks.get(id).desc || id) : id;
      later(`Discarded ${title}.`, [id], () => deleteIds([id]));
    } else if (button.dataset.clear) {
      const state = button.dataset.clear;
      let ids;
      try {
        ids = await matchingIds(state);
      } catch (error) {
        setConnection("error", "could not list the tasks to clear");
        return;
      }
      if (!ids.length) return;
      const which = query ? ` matching ${query}` : "";
      const noun = ids.length === 1 ? "task" : "tasks";
      later(`Cleared ${ids.length} ${state} ${noun}${which}.`, ids, () => deleteIds(ids));
    } else if (button.dataset.more) {
      limit += STEP;
      subscribe();
    }
  });

  // ---- Connection: WebSocket with backoff, polling /tasks when it cannot open ---------------

  let socket = null;
  let failures = 0;
  let everOpened = false;
  let polling = false;
  let pollTimer = null;
  let storeProblem = null;
  let connection = {state: "connecting", text: "connecting…"};

  function setConnection(state, text) {
    connection = {state: state, text: text};
    showConnection();
  }

  function showConnection() {
    // A live page whose server cannot reach its store says so: it shows the last known state.
    const degraded = storeProblem && (connection.state === "live" || connection.state === "polling");
    status.dataset.state = degraded ? "degraded" : connection.state;
    status.textContent = degraded ? `${connection.text}; not receiving progress: ${storeProblem}`
      : connection.text;
  }

  function windowQuery() {
    const params = new URLSearchParams({limit: String(limit)});
    if (query) params.set("q", query);
    return params.toString();
  }

  async function poll() {
    clearTimeout(pollTimer);
    pollTimer = null;
    try {
      const response = await fetch("/view?" + windowQuery(), {credentials: "same-origin", cache: "no-store"});
      const body = response.ok ? await response.json() : null;
      // The socket may have opened while this was in flight: its view is newer, keep it.
      if (!polling) return;
      if (body) {
        apply(body);
        setConnection("polling", "polling (no live connection)");
      }
    } catch (error) {
      if (!polling) return;
      setConnection("offline", "server unreachable; retrying");
    }
    if (polling) pollTimer = setTimeout(poll, 2000);
  }

  function startPolling() {
    if (polling) return;
    polling = true;
    poll();
  }

  function stopPolling() {
    polling = false;
    if (pollTimer !== null) { clearTimeout(pollTimer); pollTimer = null; }
  }

  // A socket that neither opens nor closes (blocked by a policy or a proxy, which Chromium
  // reports to nobody) counts as failed after this long.
  const OPEN_TIMEOUT = 5000;

  function failed(attempt) {
    if (attempt.done) return;
    attempt.done = true;
    socket = null;
    failures += 1;
    // Backoff with jitter, so a restarted server is not met by every page at once.
    const delay = Math.min(10000, 500 * 2 ** Math.min(failures - 1, 5)) * (0.5 + Math.random());
    setConnection(polling ? "polling" : "offline",
      polling ? "polling (no live connection)" : `reconnecting in ${Math.ceil(delay / 1000)} s…`);
    if (!everOpened && failures >= 3) startPolling();
    setTimeout(connect, delay);
  }

  function connect() {
    if (typeof WebSocket !== "function") { startPolling(); return; }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const attempt = {done: false};
    let opened = false;
    try {
      socket = new WebSocket(`${scheme}//${location.host}/ws?${windowQuery()}`);
    } catch (error) {
      failed(attempt);
      return;
    }
    const current = socket;
    const watchdog = setTimeout(() => {
      if (!opened) {
        current.onclose = null;
        try { current.close(); } catch (error) { /* already gone */ }
        failed(attempt);
      }
    }, OPEN_TIMEOUT);
    current.onopen = () => {
      opened = true;
      clearTimeout(watchdog);
      failures = 0;
      everOpened = true;
      stopPolling();
      setConnection("live", "live");
    };
    current.onmessage = (event) => apply(JSON.parse(event.data));
    current.onclose = () => {
      clearTimeout(watchdog);
      failed(attempt);
    };
  }

  // Exposed for tests and the benchmark: read-only views and the message entry point.
  window.progressista = {
    apply: apply,
    applyTimes: applyTimes,
    format: {amount: amount, rate: rate, interval: interval, sizeof: sizeof, sparkline: sparkline,
      job: jobView},
    taskCount: () => tasks.size,
    polling: () => polling,
  };

  adopt();
  markNotifyButtons();
  // The server paints state sections; a URL asking for jobs is honoured once the first view
  // brings the tasks (every card is redrawn and placed then).
  if (groupByJob) regroup();
  connect();
})();
