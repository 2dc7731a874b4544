// The /analyze page: start an analysis (upload or a server file), poll its progress, then show
// the share of time per emotion and one timeline per face (static/timeline.js), and offer the CSV.

import { colourOf, faceId } from "./labels.js";
import { drawTimeline } from "./timeline.js";

const POLL_MS = 500;
const POLL_RETRY_MS = [1000, 2000, 4000, 8000]; // while the server cannot be reached (restarting)
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

// A new analysis (or upload) starts from an empty box: the last job's bar, tracks, timeline and
// CSV link must never show under another file's name.
function clearJob(name) {
  current = null;
  $("job").hidden = false;
  $("job-name").textContent = name;
  $("progress").max = 1;
  $("progress").value = 0;
  $("job-state").textContent = "";
  $("job-state").className = "status";
  $("job-warning").hidden = true;
  $("stop").hidden = true;
  $("charts").replaceChildren();
  $("tracks").hidden = true;
  $("csv").hidden = true;
  $("csv").removeAttribute("href");
}

function follow(job) {
  clearJob(job.name);
  current = job.id;
  render(job);
  poll(job.url, 0);
}

async function poll(url, failures) {
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "application/json" } });
  } catch {
    // The server went away (restarting, or the network): say so and keep asking, less often.
    const wait = POLL_RETRY_MS[Math.min(failures, POLL_RETRY_MS.length - 1)];
    showMessage(`lost contact with the server; asking again in ${wait / 1000} s`);
    setTimeout(() => poll(url, failures + 1), wait);
    return;
  }
  if (!response.ok) {
    const gone = response.status === 404 ? "this analysis is no longer on the server (restarted or expired)" : "";
    showMessage(gone || (await errorText(response)));
    $("stop").hidden = true;
    return;
  }
  showMessage("");
  const job = await response.json();
  if (job.id !== current) return;
  render(job);
  if (job.state === "queued" || job.state === "running") setTimeout(() => poll(url, 0), POLL_MS);
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
  if (job.timeline) renderCharts(job.timeline, job.frames_done);
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

function renderCharts(timeline, framesDone) {
  const charts = $("charts");
  charts.replaceChildren();
  if (!timeline.tracks.length) {
    if (!framesDone) return; // nothing was analysed (the file failed): the error says why
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

function megabytes(bytes) {
  const mb = bytes / 1048576;
  return mb >= 10 ? mb.toFixed(0) : mb.toFixed(mb >= 1 ? 1 : 2);
}

function upload(file) {
  if (file.size > maxBytes) {
    showMessage(`${file.name} is ${megabytes(file.size)} MB; the limit is ${megabytes(maxBytes)} MB.`);
    return;
  }
  showMessage("");
  clearJob(file.name);
  const form = new FormData();
  form.append("video", file);
  // XMLHttpRequest, not fetch: it reports upload progress.
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/analyses");
  xhr.upload.onprogress = (event) => {
    $("progress").max = event.total || 1;
    $("progress").value = event.loaded;
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
    else {
      $("job").hidden = true; // nothing of this file was analysed
      showMessage(body.error || `upload failed (HTTP ${xhr.status})`);
    }
  };
  xhr.onerror = () => {
    $("job").hidden = true;
    showMessage("upload failed: the connection was lost");
  };
  xhr.send(form);
}

async function analyseServerFile(name) {
  showMessage("");
  clearJob(name);
  const response = await fetch("/api/analyses", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ video: name }),
  });
  if (response.status === 202) follow(await response.json());
  else {
    $("job").hidden = true;
    showMessage(await errorText(response));
  }
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
