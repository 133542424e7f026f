// Live task list: applies the /ws snapshot and patch messages to the server-rendered page.
// Every task field is untrusted text: it only ever goes through textContent and attributes.
"use strict";

(function () {
  const STATES = ["active", "stale", "completed", "failed"];
  const cards = new Map();
  const status = document.getElementById("connection");
  let retryDelay = 500;

  function lists() {
    const result = {};
    for (const state of STATES) {
      result[state] = document.querySelector(`section[data-state="${state}"] .tasks`);
    }
    return result;
  }

  function setConnection(state, text) {
    status.dataset.state = state;
    status.textContent = text;
  }

  function element(tag, className) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    return node;
  }

  function newCard(taskId) {
    const card = element("li", "task");
    card.dataset.taskId = taskId;
    const title = element("div", "title");
    title.append(element("span", "desc"), " ", element("code", "id"));
    card.append(title, element("progress"), element("div", "numbers"),
      element("div", "postfix"), element("div", "error"));
    return card;
  }

  function fill(card, task) {
    card.querySelector(".desc").textContent = task.desc;
    card.querySelector(".id").textContent = task.task_id;
    const bar = card.querySelector("progress");
    bar.max = task.total ? task.total : 1;
    bar.value = task.total ? Math.min(task.n, task.total) : 0;
    let numbers = String(task.n);
    if (task.total !== null) numbers += " / " + task.total;
    numbers += " " + task.unit;
    if (task.percent !== null) numbers += " · " + task.percent.toFixed(1) + "%";
    card.querySelector(".numbers").textContent = numbers;
    card.querySelector(".postfix").textContent = task.postfix;
    card.querySelector(".error").textContent = task.error || "";
  }

  function place(card, state, target) {
    if (card.parentElement !== target[state]) target[state].prepend(card);
  }

  function upsert(taskId, task, target) {
    let card = cards.get(taskId);
    if (!card) {
      card = newCard(taskId);
      cards.set(taskId, card);
    }
    fill(card, task);
    place(card, task.state, target);
  }

  function remove(taskId) {
    const card = cards.get(taskId);
    if (card) card.remove();
    cards.delete(taskId);
  }

  function recount(target) {
    for (const state of STATES) {
      target[state].parentElement.querySelector(".count").textContent =
        String(target[state].children.length);
    }
  }

  function apply(message) {
    const target = lists();
    if (message.type === "snapshot") {
      for (const taskId of Array.from(cards.keys())) {
        if (!(taskId in message.tasks)) remove(taskId);
      }
    }
    for (const [taskId, task] of Object.entries(message.tasks)) upsert(taskId, task, target);
    for (const taskId of message.removed || []) remove(taskId);
    recount(target);
  }

  function adoptServerCards() {
    for (const card of document.querySelectorAll("li.task")) {
      cards.set(card.dataset.taskId, card);
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/ws`);
    socket.onopen = () => { retryDelay = 500; setConnection("live", "live"); };
    socket.onmessage = (event) => apply(JSON.parse(event.data));
    socket.onclose = () => {
      setConnection("offline", "reconnecting…");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 10000);
    };
  }

  adoptServerCards();
  connect();
})();
