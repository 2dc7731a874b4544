// The /analyze page: start an analysis (upload or a server file), poll its progress, then draw
// one timeline per face (each emotion's probability over time) and offer the CSV.
"use strict";

(() => {
  // The colours of the video overlay (imaging._COLOURS, BGR there), so chart and video agree.
  const COLOURS = {
    angry: "rgb(220,40,40)", disgust: "rgb(40,140,40)", fear: "rgb(160,60,160)", happy: "rgb(255,200,0)",
    sad: "rgb(40,120,200)", surprise: "rgb(0,200,200)", neutral: "rgb(180,180,180)",
  };
  const POLL_MS = 500;
  const $ = (id) => document.getElementById(id);
  const maxBytes = Number(document.body.dataset.maxUploadBytes);
  let current = null;

  function showMessage(text) {
    $("message").textContent = text;
    $("message").hidden = !text;
  }

  async function errorText(response) {
    try { return (await response.json()).error || response.statusText; } catch { return response.statusText; }
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
    if (!response.ok) { showMessage(await errorText(response)); return; }
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
    body.replaceChildren(...tracks.map((t) => {
      const row = document.createElement("tr");
      const shares = Object.entries(t.shares).sort((a, b) => b[1] - a[1])
        .map(([name, share]) => `${name} ${(100 * share).toFixed(0)}%`).join(", ");
      for (const text of [`#${t.face}`, `${t.first_s.toFixed(2)}–${t.last_s.toFixed(2)} s (${t.frames} frames)`, shares]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    }));
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
      item.style.setProperty("--swatch", COLOURS[name]);
      legend.append(item);
    }
    charts.append(legend);
    for (const track of timeline.tracks) {
      const figure = document.createElement("div");
      figure.className = "timeline";
      const title = document.createElement("h3");
      title.textContent = `face #${track.face}`;
      const canvas = document.createElement("canvas");
      canvas.dataset.face = track.face;
      figure.append(title, canvas);
      charts.append(figure);
      draw(canvas, track, timeline.emotions, timeline.duration_s);
    }
  }

  function draw(canvas, track, emotions, duration) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 600;
    const height = canvas.clientHeight || 180;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    const pad = { left: 34, right: 8, top: 8, bottom: 20 };
    // The whole file's time, so where a face appears and leaves shows; a track's own span otherwise.
    const t0 = duration > 0 ? 0 : track.times[0];
    const t1 = duration > 0 ? duration : track.times[track.times.length - 1];
    const span = Math.max(t1 - t0, 1e-6);
    const x = (t) => pad.left + ((t - t0) / span) * (width - pad.left - pad.right);
    const y = (p) => pad.top + (1 - p) * (height - pad.top - pad.bottom);
    ctx.strokeStyle = "#555";
    ctx.fillStyle = "#9aa0a6";
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    for (const p of [0, 0.5, 1]) {
      ctx.beginPath();
      ctx.moveTo(pad.left, y(p));
      ctx.lineTo(width - pad.right, y(p));
      ctx.stroke();
      ctx.fillText(p.toFixed(1), 4, y(p) + 4);
    }
    ctx.fillText(`${t0.toFixed(1)} s`, pad.left, height - 5);
    const end = `${t1.toFixed(1)} s`;
    ctx.fillText(end, width - pad.right - ctx.measureText(end).width, height - 5);
    ctx.lineWidth = 1.5;
    // A gap longer than a few frames (the face out of view) breaks the line instead of bridging it.
    const steps = track.times.slice(1).map((t, i) => t - track.times[i]);
    const gap = 3 * Math.max(0.04, Math.min(Infinity, ...steps));
    for (const name of emotions) {
      const values = track.scores[name];
      ctx.strokeStyle = COLOURS[name];
      ctx.beginPath();
      values.forEach((p, i) => {
        const joined = i > 0 && track.times[i] - track.times[i - 1] <= gap;
        if (joined) ctx.lineTo(x(track.times[i]), y(p));
        else ctx.moveTo(x(track.times[i]), y(p));
      });
      ctx.stroke();
    }
  }

  function upload(file) {
    if (file.size > maxBytes) {
      showMessage(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; the limit is ${(maxBytes / 1048576).toFixed(0)} MB.`);
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
      try { body = JSON.parse(xhr.responseText); } catch { /* shown below */ }
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
  $("stop").addEventListener("click", () => { if (current) fetch(`/api/analyses/${current}`, { method: "DELETE" }); });

  const requested = new URLSearchParams(window.location.search).get("video");
  if (requested) {
    if ($("server-video")) $("server-video").value = requested;
    analyseServerFile(requested);
  }
})();
