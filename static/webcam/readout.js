// What the page says in words and figures: the status line, messages, fps and latency, the main
// face's bars and its accessible label.

import { EMOTIONS, faceId, faceLabel } from "../labels.js";

const NO_VALUE = "–";
// fps and latency are redrawn this often: a figure that changes 30 times a second is unreadable
// (and, in a live region, would flood a screen reader).
const STATS_EVERY_MS = 1000;
// A face missed for a moment is not worth announcing; one gone this long is.
const NO_FACE_ANNOUNCE_MS = 1500;

export class Status {
  constructor(statusEl, messageEl) {
    this.statusEl = statusEl;
    this.messageEl = messageEl;
  }

  set(text, kind = "") {
    this.statusEl.textContent = text;
    this.statusEl.className = `status ${kind}`;
  }

  message(text) {
    this.messageEl.textContent = text;
    this.messageEl.hidden = !text;
  }
}

// Frames per second counts results (not camera frames) of the last second; latency is their
// median round trip, and not shown when none came back.
export class Stats {
  constructor(fpsEl, latencyEl) {
    this.fpsEl = fpsEl;
    this.latencyEl = latencyEl;
    this.results = []; // {at, roundTrip} of recent results
    this.timer = null;
  }

  start() {
    this.results.length = 0;
    clearInterval(this.timer);
    this.timer = setInterval(() => this.show(), STATS_EVERY_MS);
  }

  // No socket: no figures at all (a 0 would claim the server was asked and did not answer).
  stop() {
    clearInterval(this.timer);
    this.timer = null;
    this.results.length = 0;
    this.fpsEl.textContent = NO_VALUE;
    this.latencyEl.textContent = NO_VALUE;
  }

  result(roundTrip) {
    this.results.push({ at: performance.now(), roundTrip });
  }

  show() {
    const now = performance.now();
    this.results = this.results.filter((r) => now - r.at <= STATS_EVERY_MS);
    this.fpsEl.textContent = String(this.results.length);
    const trips = this.results.map((r) => r.roundTrip).sort((a, b) => a - b);
    this.latencyEl.textContent = trips.length ? String(Math.round(trips[Math.floor(trips.length / 2)])) : NO_VALUE;
  }
}

// The side panel: one bar per emotion for the main (largest) face, its id, the number of faces,
// and a polite live text that changes only when the main face or its steady label does.
export class Panel {
  constructor({ bars, mainFace, mainLabel, facesCount }) {
    this.bars = new Map(
      [...bars.querySelectorAll("li")].map((li) => [
        li.dataset.emotion,
        { li, bar: li.querySelector(".bar"), value: li.querySelector(".value") },
      ]),
    );
    this.mainFaceEl = mainFace;
    this.mainLabelEl = mainLabel;
    this.facesCountEl = facesCount;
    this.idleText = facesCount.textContent;
    this.spoken = null; // the "id:emotion" the live text last said, "none" for no face
    this.noFaceTimer = null;
  }

  show(faces) {
    const count = faces.length;
    this.facesCountEl.textContent =
      count === 0 ? "no face in view" : count === 1 ? "1 face" : `${count} faces (largest shown)`;
    const main = mainFace(faces);
    this.mainFaceEl.textContent = main ? faceId(main.id) : "";
    this.showBars(main);
    this.announce(main);
  }

  // Nothing on screen may look live: bars, id and count go; `text` replaces the count.
  clear(text = this.idleText) {
    this.facesCountEl.textContent = text;
    this.mainFaceEl.textContent = "";
    this.showBars(null);
    clearTimeout(this.noFaceTimer);
    this.noFaceTimer = null;
    this.spoken = null;
    this.mainLabelEl.textContent = "";
  }

  announce(face) {
    if (face) {
      clearTimeout(this.noFaceTimer);
      this.noFaceTimer = null;
      const key = `${face.id}:${face.emotion}`;
      if (key !== this.spoken) {
        this.spoken = key;
        this.mainLabelEl.textContent = faceLabel(face);
      }
    } else if (this.spoken !== "none" && this.noFaceTimer === null) {
      this.noFaceTimer = setTimeout(() => {
        this.noFaceTimer = null;
        this.spoken = "none";
        this.mainLabelEl.textContent = "no face in view";
      }, NO_FACE_ANNOUNCE_MS);
    }
  }

  showBars(face) {
    for (const name of EMOTIONS.length ? EMOTIONS : this.bars.keys()) {
      const entry = this.bars.get(name);
      if (!entry) continue;
      const p = face ? face.scores[name] || 0 : 0;
      entry.bar.style.width = `${(p * 100).toFixed(1)}%`;
      entry.value.textContent = face ? `${Math.round(p * 100)}%` : NO_VALUE;
      entry.li.classList.toggle("top", Boolean(face) && face.emotion === name);
    }
  }
}

function mainFace(faces) {
  let best = null;
  for (const face of faces) {
    if (!best || face.box[2] * face.box[3] > best.box[2] * best.box[3]) best = face;
  }
  return best;
}
