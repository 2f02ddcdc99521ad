// The slurm-llm console: one plain ES module, no framework, nothing loaded from elsewhere.
// Every figure comes from the router's own APIs, called with the key the user typed (kept in
// this browser only): /v1/models and /v1/chat/completions (streamed) for the chat,
// /v1/map_reduce for long texts, /v1/deployments, /v1/stats and /v1/verdicts for the rest.

const $ = (selector) => document.querySelector(selector);
const KEY = "slurm-llm-key";
const CONVERSATION = "slurm-llm-conversation";
const POLL_MS = 2000;

const state = {
  key: localStorage.getItem(KEY) || "",
  conversation: JSON.parse(localStorage.getItem(CONVERSATION) || "[]"),
  streaming: null, // the AbortController of the answer being received
  poller: null, // the next poll's timer
  tab: "chat",
  round: 0, // tab changes so far: a poll of an earlier round stops
  keysDenied: false, // usage per key needs an operator's key: asked for once, then not again
};

// ---- talking to the router ---------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = {};
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await errorOf(response);
  return response;
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = body.error?.message ?? body.error ?? message;
  } catch {
    // not JSON: the status says it
  }
  return new ApiError(response.status, message);
}

// An error stays until what showed it succeeds: a poll's until that poll's next success, an
// action's (send, scale, stop) until the next action, a key or a tab change.
function showError(error, source = "action") {
  const box = $("#error");
  box.textContent = error.status === 401
    ? `Refused: ${error.message}. Enter a valid key above.`
    : error.message;
  box.dataset.source = source;
  box.hidden = false;
}

function clearError(source = null) {
  const box = $("#error");
  if (source === null || box.dataset.source === source) box.hidden = true;
}

// Folded sections (logs, rounds) stay open across a redraw: by their data-key.
function redraw(container, children) {
  const open = new Set([...container.querySelectorAll("details[open]")].map((d) => d.dataset.key));
  container.replaceChildren(...children);
  for (const details of container.querySelectorAll("details")) {
    if (open.has(details.dataset.key)) details.open = true;
  }
}

// Server-sent events of a streamed answer: each event's data, as it arrives.
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const dataOf = (block) => block.split("\n").filter((line) => line.startsWith("data:"))
    .map((line) => line.slice(5).trimStart()).join("\n");
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) {
      const last = dataOf(buffer); // a last event without its blank line
      if (last) yield last;
      return;
    }
    buffer = (buffer + value).replaceAll("\r\n", "\n"); // a CR and its LF may come apart
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = dataOf(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (data) yield data;
    }
  }
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== undefined && child !== null));
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function clock(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleTimeString();
}

// ---- chat --------------------------------------------------------------------------------

function save() {
  localStorage.setItem(CONVERSATION, JSON.stringify(state.conversation));
}

async function loadModels() {
  const { data } = await (await api("/v1/models")).json();
  const select = $("#model");
  const chosen = select.value;
  select.replaceChildren(...data.map((card) => element("option", { value: card.id },
    card.state === "ready" ? card.id : `${card.id} (${card.state})`)));
  if (data.some((card) => card.id === chosen)) select.value = chosen;
}

function tribunalView(run) {
  const outcome = run.outcome.replace(" ", "-");
  const rounds = run.rounds.map((round, index) => element("details",
    { class: "round", "data-key": `round:${run.started}:${index}` },
    element("summary", {}, `Round ${index + 1}: `, ...round.verdicts.map((v) =>
      element("span", { class: `badge ${v.outcome}` }, `${v.law}: ${v.outcome}`))),
    element("pre", {}, round.draft),
    element("table", {},
      element("tr", {}, element("th", {}, "law"), element("th", {}, "verdict"),
        element("th", {}, "reasons")),
      ...round.verdicts.map((v) => element("tr", { class: "verdict" },
        element("td", {}, v.law), element("td", { class: v.outcome }, v.outcome),
        element("td", {}, v.reasons))))));
  return element("div", { class: "tribunal" },
    element("span", { class: `badge outcome ${outcome}` }, run.outcome),
    ` ${run.mode} (${run.reason}); ${run.laws}; ${run.rounds.length} round(s), `,
    `${run.seconds.toFixed(1)} s`, ...rounds);
}

function messageView(message) {
  const view = element("li", { class: `message ${message.role}` },
    element("div", { class: "text" }, message.content));
  if (message.tribunal) view.append(tribunalView(message.tribunal));
  if (message.note) view.append(element("div", { class: "note" }, message.note));
  if (message.failed) view.classList.add("failed");
  return view;
}

function render() {
  $("#messages").replaceChildren(...state.conversation.map(messageView));
}

// The conversation as the model gets it: a question whose answer failed or was stopped before
// any text is left out with it, so user and assistant turns still alternate.
function sent() {
  const system = $("#system").value.trim();
  const history = [];
  const turns = state.conversation;
  for (let i = 0; i < turns.length; i++) {
    const reply = turns[i + 1];
    if (turns[i].role === "user" && reply && (reply.failed || !reply.content)) {
      i++;
      continue;
    }
    history.push({ role: turns[i].role, content: turns[i].content });
  }
  return system ? [{ role: "system", content: system }, ...history] : history;
}

function settings() {
  return {
    model: $("#model").value,
    temperature: Number($("#temperature").value),
    max_tokens: Number($("#max-tokens").value),
  };
}

function busy(controller) {
  state.streaming = controller;
  $("#send").disabled = controller !== null;
  $("#stop").disabled = controller === null;
}

async function answer(reply, ask) {
  const view = messageView(reply);
  $("#messages").append(view);
  const controller = new AbortController();
  busy(controller);
  clearError("action");
  try {
    await ask(view, controller.signal);
  } catch (error) {
    if (error.name === "AbortError") {
      reply.note = "stopped";
    } else {
      reply.failed = true;
      reply.note = error.message;
      showError(error);
    }
  } finally {
    busy(null);
    save();
    view.replaceWith(messageView(reply));
  }
}

function streamed(reply, messages) {
  return async (view, signal) => {
    const response = await api("/v1/chat/completions", {
      method: "POST", signal, body: { ...settings(), messages, stream: true },
    });
    const text = view.querySelector(".text");
    let pieces = 0;
    for await (const data of serverSentEvents(response.body)) {
      if (data === "[DONE]") break;
      const event = JSON.parse(data);
      if (event.error) throw new ApiError(event.error.code, event.error.message);
      const piece = event.choices?.[0]?.delta?.content ?? "";
      if (piece) {
        reply.content += piece;
        text.textContent = reply.content;
        view.dataset.pieces = String(++pieces);
      }
    }
  };
}

function judged(reply, messages) {
  return async (_view, signal) => {
    const tribunal = { laws: $("#laws").value.trim(), max_rounds: Number($("#rounds").value),
      max_tokens: Number($("#max-tokens").value) };
    const response = await api("/v1/chat/completions", {
      method: "POST", signal, body: { ...settings(), messages, tribunal },
    });
    const body = await response.json();
    reply.content = body.choices[0].message.content;
    reply.tribunal = body.tribunal;
  };
}

function mapReduced(reply, instruction, text) {
  return async (_view, signal) => {
    const { model, max_tokens } = settings();
    const response = await api("/v1/map_reduce", {
      method: "POST", signal, body: { model, max_tokens, instruction, text },
    });
    const body = await response.json();
    reply.content = body.answer;
    reply.note = `map-reduce: ${body.chunks} chunk(s), ${body.calls} call(s), ` +
      `${body.levels} level(s), context ${body.context} tokens`;
  };
}

async function send(event) {
  event.preventDefault();
  const text = $("#prompt").value.trim();
  if (!text || state.streaming) return;
  $("#prompt").value = "";
  const longText = $("#long-text").value.trim();
  state.conversation.push({ role: "user", content: longText ? `${text}\n\n[long text: ${longText.length} characters]` : text });
  $("#messages").append(messageView(state.conversation.at(-1)));
  const messages = sent(); // before the reply is added: it ends with this question
  const reply = { role: "assistant", content: "" };
  state.conversation.push(reply);
  if (longText) await answer(reply, mapReduced(reply, text, longText));
  else if ($("#tribunal").checked) await answer(reply, judged(reply, messages));
  else await answer(reply, streamed(reply, messages));
}

// ---- deployments -------------------------------------------------------------------------

function replicaRow(replica) {
  const wall = replica.walltime_left_s === null ? "" : duration(replica.walltime_left_s);
  const problem = replica.reason ?? "";
  const row = element("tr", { "data-replica": replica.replica, "data-job": replica.job_id,
    "data-state": replica.state },
    element("td", {}, String(replica.replica)),
    element("td", { class: `state ${replica.state}` }, replica.state),
    element("td", {}, replica.job_id),
    element("td", {}, replica.node ?? ""),
    element("td", {}, replica.gpus.join(",") || "–"), // known once the replica is ready
    element("td", {}, wall),
    element("td", {}, replica.url ?? ""),
    element("td", { class: "problem" }, problem));
  if (!replica.log_tail.length) return [row];
  const log = element("tr", { class: "log-row" }, element("td", { colspan: 8 },
    element("details", { "data-key": `log:${replica.job_id}` },
      element("summary", {}, `log: ${replica.log_path}`),
      element("pre", { class: "log" }, replica.log_tail.join("\n")))));
  return [row, log];
}

async function operate(action) {
  clearError("action");
  try {
    await action();
    await refreshDeployments();
  } catch (error) {
    showError(error, "action");
  }
}

function deploymentView(deployment) {
  const name = deployment.name;
  const controller = deployment.controller;
  const scaleTo = element("input", { type: "number", min: 0, value: deployment.replicas_wanted,
    "aria-label": `replicas of ${name}` });
  const scale = element("button", { type: "button", class: "secondary" }, "Scale");
  scale.addEventListener("click", () => {
    const replicas = Number(scaleTo.value);
    if (!confirm(`Scale ${name} to ${replicas} replica(s)?`)) return;
    operate(() => api(`/v1/deployments/${encodeURIComponent(name)}/scale`,
      { method: "POST", body: { replicas } }));
  });
  const stop = element("button", { type: "button", class: "danger" }, "Stop");
  stop.addEventListener("click", () => {
    if (!confirm(`Stop ${name}? Its jobs are cancelled and it is forgotten.`)) return;
    operate(() => api(`/v1/deployments/${encodeURIComponent(name)}`, { method: "DELETE" }));
  });
  const header = ["replica", "state", "job", "node", "GPUs", "wall-time left", "URL",
    "reason / last error"].map((text) => element("th", {}, text));
  return element("div", { class: "card deployment", "data-name": name },
    element("h2", {}, name),
    element("div", { class: "facts" },
      `${deployment.model} · ${deployment.engine} · ${deployment.executor} · ` +
      `${deployment.replicas_wanted} replica(s) wanted`,
      deployment.scaling ? ` · elastic: ${deployment.scaling.ready} ready, ` +
        `${deployment.scaling.desired} desired` : ""),
    element("div", { class: `controller ${controller?.alive ? "alive" : "dead"}` },
      controller ? `controller: ${controller.text}`
        : `no controller: dead replicas are not replaced; start one with: slurm-llm controller start ${name}`),
    element("div", { class: "actions" }, scaleTo, scale, stop),
    element("table", { class: "replicas" }, element("tr", {}, ...header),
      ...deployment.replicas.flatMap(replicaRow)),
    element("ol", { class: "events" }, ...deployment.events.slice().reverse().map((event) =>
      element("li", {}, `${clock(event.time)} ${event.text}`))));
}

async function refreshDeployments() {
  const { deployments } = await (await api("/v1/deployments")).json();
  const list = $("#deployment-list");
  // A scale field the user is typing in keeps its text: the list waits until it loses focus.
  if (list.contains(document.activeElement) && document.activeElement.tagName === "INPUT") return;
  redraw(list, (deployments.length
    ? deployments.map(deploymentView)
    : [element("p", { class: "hint" }, "No deployment behind this router (it routes fixed replicas, or none is running).")]));
  $("#deployments-updated").textContent = `Updated ${new Date().toLocaleTimeString()}; every 2 s.`;
}

// ---- load --------------------------------------------------------------------------------

function chart(title, times, lines, unit = "") {
  const width = 300, height = 90;
  const values = lines.flatMap((line) => line.values).filter((v) => v !== null);
  const top = Math.max(...values, 1e-9);
  const start = times[0], span = Math.max(times.at(-1) - start, 1);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  lines.forEach((line, index) => {
    const points = line.values.map((v, i) => v === null ? null :
      `${((times[i] - start) / span * width).toFixed(1)},${(height - 2 - v / top * (height - 4)).toFixed(1)}`)
      .filter((p) => p !== null);
    const polyline = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    polyline.setAttribute("points", points.join(" "));
    polyline.setAttribute("class", `s${index}`);
    svg.append(polyline);
  });
  const legend = lines.map((line, index) => {
    const last = line.values.filter((v) => v !== null).at(-1);
    const shown = last === undefined ? "–" : `${Number(last.toPrecision(3))}${unit}`;
    return element("span", { class: `s${index}` }, `${line.name} ${shown}`);
  });
  return element("div", { class: "chart", "data-title": title },
    element("h3", {}, values.some((v) => v > 0) ? `${title} (max ${Number(top.toPrecision(3))}${unit})` : title),
    svg,
    element("div", { class: "legend" }, ...legend));
}

function modelLoadView(model, series) {
  const t = series.t;
  return element("div", { class: "card model-load", "data-model": model },
    element("h2", {}, model),
    element("div", { class: "charts" },
      chart("Requests per second", t, [{ name: "answered", values: series.requests_per_s },
        { name: "5xx", values: series.errors_per_s }]),
      chart("Tokens per second", t, [{ name: "tokens", values: series.tokens_per_s }]),
      chart("In flight / capacity / queue", t, [{ name: "in flight", values: series.in_flight },
        { name: "capacity", values: series.capacity }, { name: "queued", values: series.queued }]),
      chart("Latency", t, [{ name: "p50", values: series.latency_p50_s },
        { name: "p99", values: series.latency_p99_s }], " s"),
      chart("Time to first token", t, [{ name: "p50", values: series.ttft_p50_s },
        { name: "p99", values: series.ttft_p99_s }], " s")));
}

async function stats(minutes) {
  if (!state.keysDenied) {
    try {
      return await (await api(`/v1/stats?minutes=${minutes}&keys=1`)).json();
    } catch (error) {
      if (error.status !== 403) throw error;
      state.keysDenied = true;
    }
  }
  return (await api(`/v1/stats?minutes=${minutes}`)).json();
}

async function refreshLoad() {
  const report = await stats($("#minutes").value);
  const models = Object.entries(report.models).filter(([, series]) => series.t.length);
  $("#load-models").replaceChildren(...(models.length
    ? models.map(([model, series]) => modelLoadView(model, series))
    : [element("p", { class: "hint" }, "Collecting the first samples…")]));
  const keys = Object.entries(report.keys ?? {});
  $("#key-usage").replaceChildren(...(keys.length ? [element("div", { class: "card" },
    element("h2", {}, "Usage per key"),
    element("table", { id: "key-table" },
      element("tr", {}, element("th", {}, "key"), element("th", {}, "requests"),
        element("th", {}, "tokens")),
      ...keys.map(([key, used]) => element("tr", {}, element("td", {}, key === "-" ? "(no key)" : key),
        element("td", {}, String(used.requests)), element("td", {}, String(used.tokens))))))]
    : []));
}

// ---- verdicts ----------------------------------------------------------------------------

function verdictView(run) {
  return element("li", { class: "card verdict-run", "data-outcome": run.outcome },
    element("div", { class: "facts" }, `${clock(run.started)} · ${run.models.generator}`),
    element("div", {}, element("strong", {}, "Prompt: "), run.prompt),
    element("div", {}, element("strong", {}, "Answer: "), run.answer),
    tribunalView(run));
}

async function refreshVerdicts() {
  const query = new URLSearchParams({ limit: "50" });
  for (const select of document.querySelectorAll("#verdict-filters select")) {
    if (select.value) query.set(select.dataset.filter, select.value);
  }
  const report = await (await api(`/v1/verdicts?${query}`)).json();
  for (const select of document.querySelectorAll("#verdict-filters select")) {
    const chosen = select.value;
    const values = report.filters[select.dataset.filter];
    select.replaceChildren(element("option", { value: "" }, "any"),
      ...values.map((value) => element("option", { value }, value)));
    select.value = values.includes(chosen) ? chosen : "";
  }
  $("#verdict-count").textContent = `${report.runs.length} shown of ${report.total} run(s)` +
    (report.damaged_lines ? `; ${report.damaged_lines} damaged line(s) skipped` : "");
  redraw($("#verdict-list"), report.runs.map(verdictView));
}

// ---- tabs and start-up -------------------------------------------------------------------

const REFRESH = { chat: loadModels, deployments: refreshDeployments, load: refreshLoad,
  verdicts: refreshVerdicts };

async function refresh(tab) {
  try {
    await REFRESH[tab]();
    clearError(tab);
  } catch (error) {
    if (state.tab === tab) showError(error, tab); // not a late answer for a tab left since
  }
}

// One poll at a time: the next is planned once this one has been answered, so a slow router
// is not sent a pile of them; leaving the tab ends its polling.
async function poll(tab, round) {
  await refresh(tab);
  if (state.tab === tab && state.round === round) {
    state.poller = setTimeout(() => poll(tab, round), POLL_MS);
  }
}

function show(tab) {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.classList.toggle("active", button.dataset.tab === tab);
  }
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = section.id !== tab;
  }
  clearTimeout(state.poller);
  clearError();
  state.tab = tab;
  state.round += 1;
  if (tab === "chat") refresh(tab);
  else poll(tab, state.round);
}

function start() {
  $("#api-key").value = state.key;
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("#api-key").value.trim();
    state.keysDenied = false;
    localStorage.setItem(KEY, state.key);
    show(document.querySelector("#tabs button.active").dataset.tab);
  });
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => show(button.dataset.tab));
  }
  $("#prompt-form").addEventListener("submit", send);
  $("#prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("#prompt-form").requestSubmit();
    }
  });
  $("#stop").addEventListener("click", () => state.streaming?.abort());
  $("#clear").addEventListener("click", () => {
    state.conversation = [];
    save();
    render();
  });
  $("#minutes").addEventListener("change", () => refresh("load"));
  $("#verdict-filters").addEventListener("change", () => refresh("verdicts"));
  render();
  show("chat");
}

start();
