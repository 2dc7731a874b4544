// The /analyze page: start an analysis (upload or a server file), poll its progress, then show
// the share of time per emotion and one timeline per face (static/timeline.js), and offer the CSV.

import { colourOf, faceId } from "./labels.js";
import { drawTimeline } from "./timeline.js";

const POLL_MS = 500;
const $ = (id) => document.getElementById(id);
const maxBytes = Number(document.body.dataset.maxUploadBytes);
// The server's tracks are smoothed unless it runs with --smoothing-ms 0 (#scores-note says so too).
const scoresKind = Number(document.body.dataset.smoothingMs) > 0 ? "smoothed" : "raw";
let current = null;

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

async function errorText(response) {
  try {
    return (await response.json()).error || response.statusText;
  } catch {
    return response.statusText;
  }
}

function follow(job) {
  current = job.id;
  $("job").hidden = false;
  $("job-name").textContent = job.name;
  $("charts").replaceChildren();
  $("tracks").hidden = true;
  $("csv").hidden = true;
  render(job);
  poll(job.url);
}

async function poll(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (!response.ok) {
    showMessage(await errorText(response));
    return;
  }
  const job = await response.json();
  if (job.id !== current) return;
  render(job);
  if (job.state === "queued" || job.state === "running") setTimeout(() => poll(url), POLL_MS);
}

function render(job) {
  const total = job.frames_total || 0;
  $("progress").max = total || 1;
  $("progress").value = total ? Math.min(job.frames_done, total) : 0;
  const speed = job.frames_per_s ? `, ${job.frames_per_s.toFixed(1)} frames/s` : "";
  const of = total ? ` of ${total}` : "";
  $("job-state").textContent = `${job.state}: ${job.frames_done}${of} frames${speed}`;
  $("job-state").className = "status " + (job.state === "failed" ? "bad" : job.state === "done" ? "ok" : "");
  $("stop").hidden = !(job.state === "queued" || job.state === "running");
  $("job-warning").textContent = job.error || job.warning || "";
  $("job-warning").hidden = !(job.error || job.warning);
  if (job.csv_url) {
    $("csv").href = job.csv_url;
    $("csv").hidden = false;
  }
  renderTracks(job.tracks);
  if (job.timeline) renderCharts(job.timeline);
}

function renderTracks(tracks) {
  const body = $("tracks").querySelector("tbody");
  body.replaceChildren(
    ...tracks.map((t) => {
      const row = document.createElement("tr");
      const shares = Object.entries(t.shares)
        .sort((a, b) => b[1] - a[1])
        .map(([name, share]) => `${name} ${(100 * share).toFixed(0)}%`)
        .join(", ");
      const seen = `${t.first_s.toFixed(2)}–${t.last_s.toFixed(2)} s (${t.frames} frames)`;
      for (const text of [faceId(t.face), seen, shares]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    }),
  );
  $("tracks").hidden = tracks.length === 0;
}

function renderCharts(timeline) {
  const charts = $("charts");
  charts.replaceChildren();
  if (!timeline.tracks.length) {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = "No face was seen in 3 or more frames.";
    charts.append(p);
    return;
  }
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const name of timeline.emotions) {
    const item = document.createElement("span");
    item.textContent = name;
    item.style.setProperty("--swatch", colourOf(name));
    legend.append(item);
  }
  charts.append(legend);
  for (const track of timeline.tracks) {
    const figure = document.createElement("div");
    figure.className = "timeline";
    const title = document.createElement("h3");
    title.textContent = `face ${faceId(track.face)}`;
    const canvas = document.createElement("canvas");
    canvas.dataset.face = track.face;
    figure.append(title, canvas);
    charts.append(figure);
    drawTimeline(canvas, track, timeline.emotions, timeline.duration_s, scoresKind);
  }
}

function upload(file) {
  if (file.size > maxBytes) {
    const size = (file.size / 1048576).toFixed(1);
    showMessage(`${file.name} is ${size} MB; the limit is ${(maxBytes / 1048576).toFixed(0)} MB.`);
    return;
  }
  showMessage("");
  const form = new FormData();
  form.append("video", file);
  // XMLHttpRequest, not fetch: it reports upload progress.
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/analyses");
  xhr.upload.onprogress = (event) => {
    $("job").hidden = false;
    $("job-name").textContent = file.name;
    $("job-state").textContent = `uploading ${Math.round((100 * event.loaded) / (event.total || 1))}%`;
  };
  xhr.onload = () => {
    let body = {};
    try {
      body = JSON.parse(xhr.responseText);
    } catch {
      // shown below
    }
    if (xhr.status === 202) follow(body);
    else showMessage(body.error || `upload failed (HTTP ${xhr.status})`);
  };
  xhr.onerror = () => showMessage("upload failed: the connection was lost");
  xhr.send(form);
}

async function analyseServerFile(name) {
  showMessage("");
  const response = await fetch("/api/analyses", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ video: name }),
  });
  if (response.status === 202) follow(await response.json());
  else showMessage(await errorText(response));
}

$("upload").addEventListener("submit", (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  if (file) upload(file);
});
if ($("send-server")) $("send-server").addEventListener("click", () => analyseServerFile($("server-video").value));
$("stop").addEventListener("click", () => {
  if (current) fetch(`/api/analyses/${current}`, { method: "DELETE" });
});

const requested = new URLSearchParams(window.location.search).get("video");
if (requested) {
  if ($("server-video")) $("server-video").value = requested;
  analyseServerFile(requested);
}
