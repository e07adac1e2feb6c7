// The playground: one page over the server's own API (/v1/models, /v1/chat/completions, /v1/classify, /v1/tag).
// No framework, no build step, nothing fetched from elsewhere (the server's Content-Security-Policy forbids it).
// Every text from a model or a file goes into the page as text (textContent), never as HTML.
"use strict";

const KEY_STORE = "tuneforge-api-key"; // this tab only: nothing about the key is kept by the server
const state = { key: sessionStorage.getItem(KEY_STORE) || "", models: [], mode: "chat", rows: [], row: 0 };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

// ---- the API -------------------------------------------------------------------------------------------------

class ApiFailure extends Error {}

function headers() {
  const sent = { "Content-Type": "application/json" };
  if (state.key) sent.Authorization = `Bearer ${state.key}`;
  return sent;
}

async function failureOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) { /* not JSON: the status line says it */ }
  return new ApiFailure(message);
}

async function call(path, body) {
  let response;
  try {
    response = await fetch(path, body === undefined ? { headers: headers() }
      : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  } catch (error) {
    throw new ApiFailure(`the server did not answer (${error.message})`);
  }
  if (!response.ok) throw await failureOf(response);
  return response.json();
}

// Server-sent events of a streamed completion: calls onEvent with each parsed `data:` payload.
async function stream(path, body, onEvent) {
  let response;
  try {
    response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  } catch (error) {
    throw new ApiFailure(`the server did not answer (${error.message})`);
  }
  if (!response.ok) throw await failureOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const payload = JSON.parse(data);
        if (payload.error) throw new ApiFailure(payload.error.message);
        onEvent(payload);
      }
    }
  }
}

function say(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// ---- models --------------------------------------------------------------------------------------------------

const KIND_NAMES = { chat: "generates", classify: "classifies", tag: "tags" };

async function loadModels() {
  try {
    const listed = await call("v1/models");
    state.models = listed.data.map((m) => ({ id: m.id, ...(m.tuneforge || { kind: "chat" }) }));
    say(`${state.models.length} model${state.models.length === 1 ? "" : "s"} served`);
  } catch (error) {
    state.models = [];
    say(error.message, true);
  }
  renderModels();
  prefillSystemPrompt();
}

function renderModels() {
  const box = $("models");
  box.replaceChildren();
  // a mode shows only where a model can answer it (held-out rows take any kind)
  for (const button of document.querySelectorAll(".mode")) {
    const mode = button.dataset.mode;
    button.classList.toggle("hidden", mode !== "rows" && state.models.length > 0 &&
                                      !state.models.some((m) => usableIn(m, mode)));
  }
  for (const model of state.models) {
    const usable = usableIn(model, state.mode);
    const tick = el("input", { type: "checkbox", value: model.id, "data-kind": model.kind });
    tick.checked = usable;
    tick.disabled = !usable;
    tick.addEventListener("change", prefillSystemPrompt);
    box.append(el("label", { class: `model${usable ? "" : " unusable"}`, title: `engine: ${model.engine || "?"}` },
      tick, model.id, el("span", { class: "kind", text: KIND_NAMES[model.kind] || model.kind })));
  }
}

function usableIn(model, mode) {
  if (mode === "chat") return model.kind === "chat";
  if (mode === "rows") return true;
  return model.kind === mode;
}

function chosen(kind) {
  const ticked = [...document.querySelectorAll("#models input:checked")].map((t) => t.value);
  return state.models.filter((m) => ticked.includes(m.id) && (!kind || m.kind === kind));
}

function prefillSystemPrompt() {
  const system = $("system");
  if (system.dataset.edited) return;
  const withPrompt = chosen("chat").find((m) => m.system_prompt);
  system.value = withPrompt ? withPrompt.system_prompt : "";
}

// ---- generation ----------------------------------------------------------------------------------------------

function settings() {
  const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  const stop = $("stop").value.split(",").map((s) => s.trim()).filter(Boolean);
  return { max_tokens: number("max-tokens"), temperature: number("temperature"), top_p: number("top-p"),
           seed: number("seed"), stop: stop.length ? stop : undefined };
}

function responseFormat() {
  const mode = $("constrain").value;
  if (mode === "json") return { type: "json_object" };
  if (mode === "run") {
    const owner = chosen("chat").find((m) => m.answer_schema);
    if (!owner) throw new ApiFailure("none of the ticked models has a run schema: tick a run trained on JSON answers");
    // the run's schema sent to every model, so base and tuned answer under the same constraint
    return { type: "json_schema", json_schema: { name: "answer_schema", schema: owner.answer_schema } };
  }
  if (mode === "pasted") {
    let schema;
    try {
      schema = JSON.parse($("schema").value);
    } catch (error) {
      throw new ApiFailure(`the pasted schema is not JSON: ${error.message}`);
    }
    return { type: "json_schema", json_schema: { name: "pasted", schema } };
  }
  return undefined;
}

function answerCard(model, note) {
  const text = el("pre", { class: "answer-text" });
  const stats = el("div", { class: "stats" });
  const verdict = el("div", { class: "verdict" });
  const card = el("article", { class: "answer", "data-model": model },
    el("h3", {}, model, note ? el("span", { class: "muted", text: note }) : null), text, verdict, stats);
  return { card, text, stats, verdict };
}

// Streams one model's answer into its card; resolves with the answer text (null after an error).
async function generate(model, messages, view, format) {
  const started = performance.now();
  let first = null, pieces = 0, finish = "", usage = null, answer = "";
  view.card.dataset.state = "streaming";
  try {
    await stream("v1/chat/completions", { model, messages, stream: true, stream_options: { include_usage: true },
                                           response_format: format, ...settings() }, (chunk) => {
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      const piece = choice.delta && choice.delta.content;
      if (piece) {
        if (first === null) first = performance.now();
        pieces += 1;
        answer += piece;
        view.text.textContent = answer;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
  } catch (error) {
    view.verdict.replaceChildren(el("p", { class: "error", text: error.message }));
    view.card.dataset.state = "error";
    return null;
  }
  const ended = performance.now();
  const tokens = usage ? usage.completion_tokens : pieces;
  const decodeSeconds = first === null ? 0 : (ended - first) / 1000;
  const rate = tokens > 1 && decodeSeconds > 0 ? ((tokens - 1) / decodeSeconds).toFixed(1) : "–";
  view.stats.replaceChildren(
    el("span", { "data-stat": "ttft", text: `first token ${first === null ? "–" : Math.round(first - started)} ms` }),
    el("span", { "data-stat": "rate", text: `${rate} tokens/s` }),
    el("span", { "data-stat": "tokens", text: `${tokens} tokens` }),
    el("span", { "data-stat": "finish", text: `finish: ${finish || "?"}` }));
  view.card.dataset.state = "done";
  showJson(view, answer, format !== undefined);
  return answer;
}

function parseJson(text) {
  try {
    return { value: JSON.parse(text) };
  } catch (error) {
    return { error: error.message };
  }
}

// A valid/invalid badge and the parsed object, for answers that are (or were asked to be) JSON.
function showJson(view, answer, asked) {
  const trimmed = answer.trim();
  if (!asked && !/^[[{]/.test(trimmed)) return;
  const parsed = parseJson(trimmed);
  const badge = el("span", { class: `badge ${parsed.error ? "invalid" : "valid"}`, "data-json": parsed.error ? "invalid" : "valid",
                             text: parsed.error ? "invalid JSON" : "valid JSON" });
  view.card.querySelector("h3").append(badge);
  if (parsed.error) view.verdict.append(el("p", { class: "error", text: parsed.error }));
  else view.text.textContent = JSON.stringify(parsed.value, null, 2);
}

async function sendChat(event) {
  event.preventDefault();
  const models = chosen("chat");
  const answers = $("answers");
  if (!models.length) return say("tick at least one model that generates", true);
  if (!$("prompt").value.trim()) return say("type a message first", true);
  let format;
  try {
    format = responseFormat();
  } catch (error) {
    return say(error.message, true);
  }
  const messages = [];
  if ($("system").value.trim()) messages.push({ role: "system", content: $("system").value });
  messages.push({ role: "user", content: $("prompt").value });
  answers.replaceChildren();
  say(`sent to ${models.map((m) => m.id).join(", ")}`);
  $("send").disabled = true;
  const views = models.map((m) => answerCard(m.id));
  views.forEach((v) => answers.append(v.card));
  await Promise.all(models.map((m, i) => generate(m.id, messages, views[i], format)));
  $("send").disabled = false;
}

// ---- classification and tagging ------------------------------------------------------------------------------

function classCard(model, prediction) {
  const ranked = Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1]);
  const bars = el("div", { class: "bars" });
  for (const [label, probability] of ranked) {
    const fill = el("span");
    fill.style.width = `${(probability * 100).toFixed(1)}%`;
    bars.append(el("div", { class: `bar-row${label === prediction.label ? " top" : ""}`, "data-label": label,
                            "data-probability": String(probability) },
      el("span", { text: label }), el("div", { class: "bar" }, fill), el("span", { text: probability.toFixed(3) })));
  }
  return el("article", { class: "answer", "data-model": model },
    el("h3", {}, model), el("p", { "data-predicted": prediction.label },
      el("strong", { text: prediction.label }), ` — confidence ${prediction.confidence.toFixed(3)}`), bars);
}

async function classify(event) {
  event.preventDefault();
  await runEach("classify", $("classify-results"), async (model) => {
    const answer = await call("v1/classify", { model: model.id, input: $("classify-text").value });
    return classCard(model.id, answer.data[0]);
  });
}

function entityTypes() {
  const types = new Set();
  for (const model of state.models) for (const label of model.labels || []) types.add(label);
  return [...types].sort();
}

function taggedText(text, entities) {
  const types = entityTypes();
  const box = el("div", { class: "text tagged" });
  let at = 0;
  for (const entity of [...entities].sort((a, b) => a.start - b.start)) {
    if (entity.start < at) continue; // overlapping spans are not produced by the tagger; keep the first
    box.append(text.slice(at, entity.start));
    const colour = Math.max(0, types.indexOf(entity.label)) % 8;
    box.append(el("mark", { class: `entity ent-${colour}`, "data-start": entity.start, "data-end": entity.end,
                            "data-label": entity.label, "data-score": entity.score,
                            title: `${entity.label} ${entity.score.toFixed(3)}` },
      text.slice(entity.start, entity.end), el("sub", { text: `${entity.label} ${entity.score.toFixed(2)}` })));
    at = entity.end;
  }
  box.append(text.slice(at));
  return box;
}

async function tag(event) {
  event.preventDefault();
  const text = $("tag-text").value;
  await runEach("tag", $("tag-results"), async (model) => {
    const answer = await call("v1/tag", { model: model.id, input: text });
    const entities = answer.data[0].entities;
    return el("article", { class: "answer", "data-model": model.id },
      el("h3", {}, model.id, el("span", { class: "muted", text: `${entities.length} entities` })),
      taggedText(text, entities));
  });
}

async function runEach(kind, into, render) {
  const models = chosen(kind);
  if (!models.length) return say(`tick at least one model that ${KIND_NAMES[kind]}`, true);
  into.replaceChildren();
  say(`sent to ${models.map((m) => m.id).join(", ")}`);
  for (const model of models) await runOne(into, model.id, () => render(model));
}

// ---- held-out rows -------------------------------------------------------------------------------------------

// A reference row as the playground uses it: what to send, and the answer it expects.
function referenceRow(data, where) {
  if (Array.isArray(data.messages) && data.messages.length > 1) {
    const last = data.messages[data.messages.length - 1];
    if (last.role !== "assistant") throw new Error(`${where}: the last message is not the assistant's answer`);
    return { kind: "chat", messages: data.messages.slice(0, -1), expected: String(last.content) };
  }
  if (typeof data.prompt === "string" && typeof data.completion === "string") {
    return { kind: "chat", messages: [{ role: "user", content: data.prompt }], expected: data.completion };
  }
  if (typeof data.text === "string" && typeof data.label === "string") {
    return { kind: "classify", text: data.text, expected: data.label };
  }
  if (typeof data.text === "string" && Array.isArray(data.entities)) {
    return { kind: "tag", text: data.text, expected: data.entities };
  }
  throw new Error(`${where}: not a reference row (messages ending with the assistant's answer, prompt + completion, ` +
                  "text + label, or text + entities)");
}

function loadRows(lines, source) {
  const rows = [];
  lines.forEach((line, index) => {
    if (!line.trim()) return;
    let data;
    try {
      data = JSON.parse(line);
    } catch (error) {
      throw new Error(`${source} line ${index + 1}: not JSON (${error.message})`);
    }
    rows.push(referenceRow(data, `${source} line ${index + 1}`));
  });
  if (!rows.length) throw new Error(`${source}: no rows`);
  state.rows = rows;
  state.row = 0;
  showRow();
  say(`${rows.length} reference rows from ${source}`);
}

async function rowsFromFile() {
  const file = $("rows-file").files[0];
  if (!file) return;
  try {
    loadRows((await file.text()).split("\n"), file.name);
  } catch (error) {
    say(error.message, true);
  }
}

async function rowsFromRun() {
  const run = state.models.find((m) => m.has_samples && chosen().some((c) => c.id === m.id));
  if (!run) return say("tick a served run: its validation samples are kept with it", true);
  try {
    const samples = await call(`ui/samples/${encodeURIComponent(run.id)}`);
    loadRows(samples.data.map((row) => JSON.stringify(row)), `${run.id}'s validation samples`);
  } catch (error) {
    say(error.message, true);
  }
}

function showRow() {
  const row = state.rows[state.row];
  $("row-position").textContent = row ? `row ${state.row + 1} of ${state.rows.length}` : "no rows loaded";
  const shown = $("row-prompt");
  shown.replaceChildren();
  $("row-answers").replaceChildren();
  if (!row) return;
  if (row.kind === "chat") {
    for (const message of row.messages) {
      shown.append(el("div", { class: "turn" }, el("span", { class: "role", text: message.role }), message.content));
    }
  } else {
    shown.append(el("div", { class: "turn" }, el("span", { class: "role", text: "text" }), row.text));
  }
}

function step(by) {
  if (!state.rows.length) return;
  state.row = (state.row + by + state.rows.length) % state.rows.length;
  showRow();
}

// Field by field for JSON objects, whole text otherwise: which parts of an answer differ from the expected one.
function compare(expected, answer) {
  const wanted = parseJson(expected.trim()), got = parseJson(answer.trim());
  const isObject = (v) => v.value && typeof v.value === "object" && !Array.isArray(v.value);
  if (!isObject(wanted) || !isObject(got)) return { exact: expected.trim() === answer.trim(), fields: null };
  const keys = [...new Set([...Object.keys(wanted.value), ...Object.keys(got.value)])];
  const differ = keys.filter((k) => JSON.stringify(wanted.value[k]) !== JSON.stringify(got.value[k]));
  return { exact: differ.length === 0, fields: keys.map((k) => [k, got.value[k], differ.includes(k)]) };
}

function matchBadge(hit) {
  return el("span", { class: `badge ${hit ? "match" : "mismatch"}`, "data-match": hit ? "yes" : "no",
                      text: hit ? "matches" : "differs" });
}

function markAnswer(view, expected, answer) {
  const verdict = compare(expected, answer);
  view.card.querySelector("h3").append(matchBadge(verdict.exact));
  if (!verdict.fields) return;
  const lines = el("pre", { class: "answer-text" });
  for (const [key, value, differs] of verdict.fields) {
    lines.append(el("div", { class: differs ? "field-mismatch" : "", "data-field": key, "data-differs": String(differs),
                             text: `${key}: ${value === undefined ? "(missing)" : JSON.stringify(value)}` }));
  }
  view.text.replaceWith(lines);
}

async function sendRow() {
  const row = state.rows[state.row];
  if (!row) return say("load reference rows first", true);
  const into = $("row-answers");
  into.replaceChildren();
  const expectedText = row.kind === "tag" ? null : row.expected;
  if (row.kind === "tag") into.append(el("article", { class: "answer expected" }, el("h3", { text: "expected" }),
                                          taggedText(row.text, row.expected)));
  else into.append(el("article", { class: "answer expected" }, el("h3", { text: "expected" }),
                      el("pre", { class: "answer-text", text: expectedText })));
  const models = chosen(row.kind);
  if (!models.length) return say(`tick at least one model that ${KIND_NAMES[row.kind]}`, true);
  say(`row ${state.row + 1} sent to ${models.map((m) => m.id).join(", ")}`);
  for (const model of models) {
    if (row.kind === "chat") {
      const view = answerCard(model.id);
      into.append(view.card);
      const answer = await generate(model.id, row.messages, view, undefined);
      if (answer !== null) markAnswer(view, row.expected, answer);
    } else if (row.kind === "classify") {
      await runOne(into, model.id, async () => {
        const card = classCard(model.id, (await call("v1/classify", { model: model.id, input: row.text })).data[0]);
        const hit = card.querySelector("[data-predicted]").dataset.predicted === row.expected;
        card.querySelector("h3").append(matchBadge(hit));
        return card;
      });
    } else {
      await runOne(into, model.id, async () => {
        const found = (await call("v1/tag", { model: model.id, input: row.text })).data[0].entities;
        const key = (e) => `${e.start}:${e.end}:${e.label}`;
        const hit = JSON.stringify(found.map(key).sort()) === JSON.stringify(row.expected.map(key).sort());
        return el("article", { class: "answer", "data-model": model.id },
          el("h3", {}, model.id, matchBadge(hit)), taggedText(row.text, found));
      });
    }
  }
}

async function runOne(into, model, render) {
  try {
    into.append(await render());
  } catch (error) {
    into.append(el("article", { class: "answer", "data-model": model }, el("h3", {}, model),
      el("p", { class: "error", text: error.message })));
  }
}

// ---- wiring --------------------------------------------------------------------------------------------------

function switchMode(mode) {
  state.mode = mode;
  document.querySelectorAll(".mode").forEach((b) => b.classList.toggle("active", b.dataset.mode === mode));
  document.querySelectorAll(".panel").forEach((p) => p.classList.toggle("hidden", p.dataset.panel !== mode));
  renderModels();
}

function start() {
  $("api-key").value = state.key;
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    sessionStorage.setItem(KEY_STORE, state.key);
    loadModels();
  });
  document.querySelectorAll(".mode").forEach((b) => b.addEventListener("click", () => switchMode(b.dataset.mode)));
  $("system").addEventListener("input", () => { $("system").dataset.edited = "yes"; });
  $("constrain").addEventListener("change", () => $("schema").classList.toggle("hidden", $("constrain").value !== "pasted"));
  $("chat-form").addEventListener("submit", sendChat);
  $("classify-form").addEventListener("submit", classify);
  $("tag-form").addEventListener("submit", tag);
  $("rows-file").addEventListener("change", rowsFromFile);
  $("rows-samples").addEventListener("click", rowsFromRun);
  $("row-prev").addEventListener("click", () => step(-1));
  $("row-next").addEventListener("click", () => step(1));
  $("row-run").addEventListener("click", sendRow);
  // The server says whether it wants a key: without one, ask for it rather than send a request it must refuse.
  const keyRequired = document.querySelector("meta[name=tuneforge-api-key]").content === "required";
  if (keyRequired && !state.key) {
    say("this server wants its API key: enter it above");
    $("api-key").focus();
  } else {
    loadModels();
  }
}

start();
