// One face's timeline on the /analyze page: each emotion's probability over the file's time,
// with time ticks and axis titles.

import { colourOf, faceId } from "./labels.js";

const HEIGHT = 200;
const PAD = { left: 44, right: 10, top: 8, bottom: 36 };
const FONT = "11px system-ui, sans-serif";
const INK = "#9aa0a6";
const GRID = "#555";
// Room per time tick label; the step is the largest 1, 2 or 5 x 10^k that keeps them apart.
const TICK_SPACING_PX = 70;
const TICK_LENGTH = 4;

// Evenly spaced "round" times from t0 to t1: 0, 0.5, 1, 1.5 … or 0, 20, 40 …
export function timeTicks(t0, t1, maxTicks) {
  const span = Math.max(t1 - t0, 1e-6);
  const rough = span / Math.max(1, maxTicks);
  const magnitude = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= rough);
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  const ticks = [];
  for (let i = Math.ceil(t0 / step - 1e-9); i * step <= t1 + 1e-9; i++) ticks.push(Number((i * step).toFixed(decimals)));
  return { ticks, decimals };
}

// Draws `track` ({face, times, scores: {emotion: [p …]}}) on `canvas`; `duration` is the file's
// length in seconds (0: the track's own span); `scoresKind` says "smoothed" or "raw".
export function drawTimeline(canvas, track, emotions, duration, scoresKind) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600;
  const height = canvas.clientHeight || HEIGHT;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  // The whole file's time, so where a face appears and leaves shows; a track's own span otherwise.
  const t0 = duration > 0 ? 0 : track.times[0];
  const t1 = duration > 0 ? duration : track.times[track.times.length - 1];
  const span = Math.max(t1 - t0, 1e-6);
  const right = width - PAD.right;
  const bottom = height - PAD.bottom;
  const x = (t) => PAD.left + ((t - t0) / span) * (right - PAD.left);
  const y = (p) => PAD.top + (1 - p) * (bottom - PAD.top);

  ctx.font = FONT;
  ctx.lineWidth = 1;
  ctx.strokeStyle = GRID;
  ctx.fillStyle = INK;
  ctx.textAlign = "right";
  for (const p of [0, 0.5, 1]) {
    ctx.beginPath();
    ctx.moveTo(PAD.left, y(p));
    ctx.lineTo(right, y(p));
    ctx.stroke();
    ctx.fillText(p.toFixed(1), PAD.left - 6, y(p) + 4);
  }
  const { ticks, decimals } = timeTicks(t0, t1, Math.floor((right - PAD.left) / TICK_SPACING_PX));
  ctx.textAlign = "center";
  for (const t of ticks) {
    const crisp = Math.round(x(t)) + 0.5; // a 1 px line on one pixel column, not smeared over two
    ctx.beginPath();
    ctx.moveTo(crisp, bottom);
    ctx.lineTo(crisp, bottom + TICK_LENGTH);
    ctx.stroke();
    // The last label keeps inside the canvas.
    const labelX = Math.min(x(t), right - ctx.measureText(t.toFixed(decimals)).width / 2);
    ctx.fillText(t.toFixed(decimals), labelX, bottom + TICK_LENGTH + 11);
  }
  ctx.fillText("time (s)", (PAD.left + right) / 2, height - 4);
  ctx.save();
  ctx.translate(11, (PAD.top + bottom) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText(`probability (${scoresKind})`, 0, 0);
  ctx.restore();

  ctx.lineWidth = 1.5;
  // A gap longer than a few frames (the face out of view) breaks the line instead of bridging it.
  const steps = track.times.slice(1).map((t, i) => t - track.times[i]);
  const gap = 3 * Math.max(0.04, Math.min(Infinity, ...steps));
  for (const name of emotions) {
    const values = track.scores[name];
    ctx.strokeStyle = colourOf(name);
    ctx.beginPath();
    values.forEach((p, i) => {
      const joined = i > 0 && track.times[i] - track.times[i - 1] <= gap;
      if (joined) ctx.lineTo(x(track.times[i]), y(p));
      else ctx.moveTo(x(track.times[i]), y(p));
    });
    ctx.stroke();
  }
  canvas.setAttribute("role", "img");
  canvas.setAttribute(
    "aria-label",
    `face ${faceId(track.face)}: ${scoresKind} probability of each emotion over time, ` +
      `${t0.toFixed(decimals)} to ${t1.toFixed(decimals)} s`,
  );
  // Where the time axis lies and its ticks, for the browser tests.
  canvas.dataset.axisY = String(bottom);
  canvas.dataset.ticks = ticks.map((t) => `${t}:${x(t).toFixed(1)}`).join(" ");
}
