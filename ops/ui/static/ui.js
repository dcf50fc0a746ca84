// MiniFlow web UI: the live parts of server-rendered pages. No inline script anywhere (the pages'
// Content-Security-Policy allows only this file); every piece of HTML it inserts was rendered, and
// escaped, by the server.
"use strict";

const KNOWN = new Set(["pending", "queued", "running", "succeeded", "failed", "cancelled", "skipped", "upstream_failed"]);

function statusClass(status) {
  return KNOWN.has(status) ? "st-" + status : "st-other";
}

function setStatusClass(element, status) {
  for (const name of [...element.classList]) {
    if (name.startsWith("st-")) element.classList.remove(name);
  }
  element.classList.add(statusClass(status));
}

async function fetchHtml(url) {
  const answer = await fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html", "X-MiniFlow-Poll": "1" } });
  if (answer.redirected || answer.status === 401) {
    window.location.assign("/ui/login?next=" + encodeURIComponent(window.location.pathname));
    return null;
  }
  return answer.ok ? answer.text() : null;
}

// Rows that refresh themselves: <tbody data-refresh="URL" data-every="ms">
function refreshEvery(element) {
  const every = Math.max(1000, parseInt(element.dataset.every || "3000", 10));
  const tick = async () => {
    if (!document.hidden) {
      try {
        const html = await fetchHtml(element.dataset.refresh);
        if (html !== null) element.innerHTML = html;
      } catch (err) { /* the next tick tries again */ }
    }
    window.setTimeout(tick, every);
  };
  window.setTimeout(tick, every);
}

// A section refreshed from the page itself: <div id="X" data-refresh-page="ms">
function refreshFromPage(element) {
  const every = Math.max(1000, parseInt(element.dataset.refreshPage || "5000", 10));
  const tick = async () => {
    if (!document.hidden) {
      try {
        const html = await fetchHtml(window.location.href);
        if (html !== null) {
          const fresh = new DOMParser().parseFromString(html, "text/html").getElementById(element.id);
          if (fresh) element.innerHTML = fresh.innerHTML;
        }
      } catch (err) { /* the next tick tries again */ }
    }
    window.setTimeout(tick, every);
  };
  window.setTimeout(tick, every);
}

// The run page: the DAG's nodes follow the run's events; the rest is re-rendered at most every 0.5 s.
function followRun(box) {
  const body = document.getElementById("live-body");
  let pending = null;
  let ended = false;
  const refresh = () => {
    if (pending !== null) return;
    pending = window.setTimeout(async () => {
      pending = null;
      try {
        const html = await fetchHtml(box.dataset.fragment);
        if (html !== null) body.innerHTML = html;
      } catch (err) { /* the next event refreshes again */ }
    }, 500);
  };
  const stream = new EventSource(box.dataset.events);
  stream.addEventListener("step", (message) => {
    const event = JSON.parse(message.data);
    for (const node of document.querySelectorAll("#dag .node")) {
      if (node.dataset.step === event.step) {
        setStatusClass(node, event.status);
        node.dataset.status = event.status;
      }
    }
    refresh();
  });
  stream.addEventListener("run", (message) => {
    box.dataset.status = JSON.parse(message.data).status;
    refresh();
  });
  stream.addEventListener("end", (message) => {
    ended = true;
    box.dataset.status = JSON.parse(message.data).status;
    box.dataset.ended = "true";
    stream.close();
    refresh();
  });
  stream.addEventListener("error", () => {
    // EventSource reconnects by itself; a stream that was refused (signed out) is closed for good.
    if (ended || stream.readyState === EventSource.CLOSED) stream.close();
  });
}

function confirmForms() {
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  confirmForms();
  for (const element of document.querySelectorAll("[data-refresh]")) refreshEvery(element);
  for (const element of document.querySelectorAll("[data-refresh-page]")) refreshFromPage(element);
  const run = document.getElementById("run");
  if (run && run.dataset.events) followRun(run);
});
