// Parley admin console: live overview charts, the log tail and the Try-it chat.
// Plain browser JavaScript, no build step and nothing fetched from elsewhere. Text from the
// server is only ever set with textContent, never parsed as HTML.
"use strict";

(function () {
  const page = document.body.dataset.page;
  const csrf = document.body.dataset.csrf || "";
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Server-sent events over fetch(): EventSource cannot POST. Calls onEvent(name, data).
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) name = line.slice(7);
          else if (line.startsWith("data: ")) data.push(line.slice(6));
        }
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  }

  // -- overview: numbers and SVG line charts, refreshed every sample ---------------------------
  function formatValue(value, unit) {
    if (value === null || value === undefined) return "—";
    if (unit === "s") return value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(2)} s`;
    return `${value.toFixed(value < 10 ? 1 : 0)} ${unit}`;
  }

  function drawChart(figure, series) {
    const svg = figure.querySelector("svg");
    const points = series.points.filter((p) => p[1] !== null);
    const latest = points.length ? points[points.length - 1][1] : null;
    figure.querySelector(".latest").textContent = formatValue(latest, series.unit);
    svg.setAttribute("aria-label", `${series.title}: ${points.length ? "latest " + formatValue(latest, series.unit) : "no data yet"}`);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    if (series.points.length < 2) return;
    const t0 = series.points[0][0];
    const t1 = series.points[series.points.length - 1][0];
    const max = Math.max(...points.map((p) => p[1]), 1e-9);
    const coords = series.points.map((p) => {
      const x = t1 > t0 ? ((p[0] - t0) / (t1 - t0)) * 300 : 0;
      const y = 96 - ((p[1] || 0) / max) * 90;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    const area = document.createElementNS(SVG, "polygon");
    area.setAttribute("class", "area");
    area.setAttribute("points", `0,100 ${coords.join(" ")} 300,100`);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", coords.join(" "));
    svg.append(area, line);
    let axis = figure.querySelector(".axis");
    if (!axis) {
      axis = el("div", "axis");
      figure.append(axis);
    }
    axis.replaceChildren(
      el("span", "", t1 - t0 < 120 ? `${Math.round(t1 - t0)} s ago` : `${Math.round((t1 - t0) / 60)} min ago`),
      el("span", "", `max ${formatValue(max, series.unit)}`),
      el("span", "", "now"),
    );
  }

  function statusItem(ok, name, detail) {
    const li = el("li", ok ? "ok" : "bad");
    const dot = el("span", "dot");
    dot.setAttribute("aria-hidden", "true");
    li.append(dot, el("strong", "wrap", name), el("span", "", detail));
    return li;
  }

  async function refreshOverview() {
    const response = await fetch("/admin/api/overview", { credentials: "same-origin" });
    if (response.status === 401) { window.location.assign("/admin/login?next=/admin"); return; }
    if (!response.ok) return;
    const data = await response.json();
    document.getElementById("health").replaceChildren(...data.health.map((c) =>
      statusItem(c.ok, c.name, c.ok ? (["database", "llm"].includes(c.name) ? "ok" : "connected") : c.problem)));
    document.getElementById("backends").replaceChildren(...data.backends.map((b) =>
      statusItem(b.healthy, b.url, (b.healthy ? "answers" : "not answering") +
        (b.slots !== null ? ` · ${b.busy} of ${b.slots} slots busy` : ""))));
    for (const key of ["busy", "slots", "queue"]) document.getElementById(key).textContent = data.engine[key];
    for (const key of ["messages_in", "replies", "tokens_out", "rate_limited", "cache_hits", "cache_misses"]) {
      document.getElementById(`t-${key}`).textContent = data.totals[key];
    }
    for (const series of data.series) {
      const figure = document.querySelector(`figure[data-series="${series.key}"]`);
      if (figure) drawChart(figure, series);
    }
  }

  if (page === "overview") {
    const every = Math.max(1, Number(document.getElementById("overview").dataset.every || 5));
    const tick = () => refreshOverview().catch(() => {}).finally(() => setTimeout(tick, every * 1000));
    tick();
  }

  // -- logs: the live tail --------------------------------------------------------------------
  if (page === "logs") {
    const list = document.getElementById("log");
    const level = document.getElementById("level");
    const pause = document.getElementById("pause");
    const state = document.getElementById("log-state");
    const RANK = { DEBUG: 10, INFO: 20, WARNING: 30, ERROR: 40, CRITICAL: 50 };
    const MAX_LINES = 1000;
    let paused = false;
    const shown = (li) => (RANK[li.dataset.level] || 0) >= RANK[level.value];
    const filter = () => { for (const li of list.children) li.hidden = !shown(li); };
    level.addEventListener("change", filter);
    filter();
    pause.addEventListener("click", () => {
      paused = !paused;
      pause.setAttribute("aria-pressed", String(paused));
      pause.textContent = paused ? "Resume" : "Pause";
      state.textContent = paused ? "Paused" : "Live";
    });
    const atBottom = () => list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.scrollTop = list.scrollHeight;
    const stream = new EventSource(`/admin/logs/stream?after=${list.dataset.after}`);
    stream.addEventListener("log", (event) => {
      const e = JSON.parse(event.data);
      list.dataset.after = e.seq;
      const li = el("li", `lvl-${e.level}`);
      li.dataset.level = e.level;
      li.append(el("time", "", e.clock), " ", el("span", "lvl", e.level), " ",
        el("span", "logger", e.logger), " ", el("span", "msg", e.message));
      li.hidden = !shown(li);
      const follow = atBottom();
      list.append(li);
      while (list.children.length > MAX_LINES) list.firstElementChild.remove();
      if (follow && !paused) list.scrollTop = list.scrollHeight;
    });
    stream.addEventListener("error", () => { state.textContent = "Reconnecting…"; });
    stream.addEventListener("open", () => { state.textContent = paused ? "Paused" : "Live"; });
  }

  // -- try it: the reply streams into its bubble ----------------------------------------------
  if (page === "try") {
    const form = document.getElementById("try-form");
    const box = document.getElementById("message");
    const send = document.getElementById("send");
    const bubbles = document.getElementById("bubbles");
    const state = document.getElementById("try-state");
    const parts = new Map();
    bubbles.scrollTop = bubbles.scrollHeight;

    function bubble(cls, text) {
      const li = el("li", `bubble ${cls}`, text);
      bubbles.append(li);
      bubbles.scrollTop = bubbles.scrollHeight;
      return li;
    }

    function onEvent(name, data) {
      if (name === "message") { parts.set(data.id, bubble("bot", data.text)); state.textContent = "Writing…"; }
      else if (name === "edit" || name === "final") {
        const li = parts.get(data.id) || bubble("bot", "");
        parts.set(data.id, li);
        li.textContent = data.text;
        if (name === "final") li.dataset.final = "true";
        bubbles.scrollTop = bubbles.scrollHeight;
      } else if (name === "delete") { const li = parts.get(data.id); if (li) li.remove(); }
      else if (name === "notice") bubble("notice", data.text);
      else if (name === "queued") state.textContent = `Waiting: #${data.position} in line`;
      else if (name === "typing") state.textContent = "Thinking…";
      else if (name === "voice") {
        const li = bubble("bot", "");
        const audio = el("audio");
        audio.controls = true;
        audio.src = `data:audio/ogg;base64,${data.audio}`;
        audio.setAttribute("aria-label", `Voice reply: ${data.text}`);
        li.append(audio);
      } else if (name === "done") state.textContent = "";
    }

    async function submit(event) {
      event.preventDefault();
      const text = box.value.trim();
      if (!text || send.disabled) return;
      bubble("me", text);
      box.value = "";
      send.disabled = true;
      state.textContent = "Sending…";
      try {
        const body = new URLSearchParams({ message: text, csrf_token: csrf });
        const response = await fetch(form.action, { method: "POST", body, credentials: "same-origin" });
        if (response.status === 401) { window.location.assign("/admin/login?next=/admin/try"); return; }
        if (!response.ok) { bubble("notice", `The server refused the message (HTTP ${response.status}).`); return; }
        await readEvents(response, onEvent);
      } catch (error) {
        bubble("notice", "The connection was lost; the reply is kept in the conversation.");
      } finally {
        send.disabled = false;
        state.textContent = "";
        box.focus();
      }
    }

    form.addEventListener("submit", submit);
    box.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) submit(event);
    });
  }
})();
