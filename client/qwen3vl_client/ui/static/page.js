// The search page: sends the query to /api/search and draws the results. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
let media = null; // {kind: "image" | "video", data: base64, name}
let searches = 0; // finished searches, in body[data-searches]: tests wait on it

function format(ms) {
  return ms == null ? "–" : `${Math.round(ms)} ms`;
}

async function showIndex() {
  try {
    const response = await fetch("/api/index");
    const info = await response.json();
    if (!response.ok) throw new Error(info.error || response.statusText);
    const parts = [`${info.items} items`];
    if (info.model) parts.push(info.model);
    parts.push(info.dimensions ? `${info.dimensions} dimensions` : "full dimensions");
    parts.push(info.dtype);
    if (!info.source) parts.push("no --source: ids only");
    $("index-info").textContent = parts.join(" · ");
    $("k").value = info.default_k;
    $("rerank").parentElement.title = `score the best ${info.rerank_candidates} candidates again with the reranker`;
  } catch (error) {
    $("index-info").textContent = `cannot read the index: ${error.message}`;
  }
}

function chooseFile(file) {
  if (!file) return;
  const kind = file.type.startsWith("video/") ? "video" : "image";
  const reader = new FileReader();
  reader.onload = () => {
    const url = reader.result;
    media = { kind, data: url.slice(url.indexOf(",") + 1), name: file.name };
    $("file-name").textContent = file.name;
    $("file-preview").src = kind === "image" ? url : "";
    $("file-preview").hidden = kind !== "image";
    $("file-chip").hidden = false;
  };
  reader.readAsDataURL(file);
}

function clearFile() {
  media = null;
  $("file").value = "";
  $("file-chip").hidden = true;
}

function card(result, reranked) {
  const item = document.createElement("li");
  item.className = "result";
  item.dataset.id = result.id;
  item.dataset.modality = result.modality;
  item.dataset.score = result.score;
  if (reranked) item.dataset.rerankScore = result.rerank_score;

  const thumb = document.createElement("div");
  thumb.className = "thumb";
  if (result.thumbnail) {
    const image = document.createElement("img");
    image.alt = result.id;
    image.src = result.thumbnail;
    thumb.append(image);
  } else {
    const text = document.createElement("div");
    text.className = "snippet";
    text.textContent = result.snippet ?? "(no preview: start the page with --source)";
    thumb.append(text);
  }
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = `#${result.rank} ${result.modality}`;
  thumb.append(badge);

  const meta = document.createElement("div");
  meta.className = "meta";
  const id = document.createElement("span");
  id.className = "id";
  id.textContent = result.id;
  id.title = result.id;
  const scores = document.createElement("span");
  scores.className = "scores";
  if (reranked) {
    const rerank = document.createElement("span");
    rerank.className = "rerank-score";
    rerank.textContent = `rerank ${result.rerank_score.toFixed(4)}`;
    scores.append(rerank);
  }
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `cosine ${result.score.toFixed(4)}`;
  scores.append(score);
  meta.append(id, scores);
  item.append(thumb, meta);
  return item;
}

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(error));
}

async function search(event) {
  event.preventDefault();
  const text = $("query").value.trim();
  if (!text && !media) {
    setStatus("type a query or drop an image", true);
    return;
  }
  const body = {
    text: text || null,
    media: media && { kind: media.kind, data: media.data },
    k: Number($("k").value) || 10,
    rerank: $("rerank").checked,
  };
  $("submit").disabled = true;
  document.body.dataset.state = "searching";
  setStatus("searching…");
  const started = performance.now();
  try {
    const response = await fetch("/api/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    const browser = performance.now() - started;
    const list = $("results");
    list.replaceChildren(...answer.results.map((result) => card(result, answer.reranked)));
    const t = answer.timings_ms;
    const steps = [`embed ${format(t.embed)}`, `search ${format(t.search)}`];
    if (answer.reranked) steps.push(`rerank ${format(t.rerank)}`);
    let line = `${answer.results.length} results in ${format(t.total)} (${steps.join(" · ")}; ${format(browser)} in the browser)`;
    if (answer.skipped.length) line += ` · the reranker skipped ${answer.skipped.length}`;
    setStatus(line);
    $("status").dataset.totalMs = t.total;
    document.body.dataset.state = "done";
  } catch (error) {
    setStatus(`search failed: ${error.message}`, true);
    document.body.dataset.state = "error";
  } finally {
    $("submit").disabled = false;
    document.body.dataset.searches = ++searches;
  }
}

function wireDropZone() {
  const zone = $("drop-zone");
  const stop = (event) => {
    event.preventDefault();
    event.stopPropagation();
  };
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { stop(event); zone.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, (event) => { stop(event); zone.classList.remove("over"); });
  }
  zone.addEventListener("drop", (event) => chooseFile(event.dataTransfer.files[0]));
  // A file dropped outside the zone would make the browser leave the page for it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

$("search-form").addEventListener("submit", search);
$("file").addEventListener("change", (event) => chooseFile(event.target.files[0]));
$("file-clear").addEventListener("click", clearFile);
$("rerank").addEventListener("change", () => { if ($("query").value.trim() || media) $("search-form").requestSubmit(); });
wireDropZone();
document.body.dataset.searches = 0;
showIndex();
