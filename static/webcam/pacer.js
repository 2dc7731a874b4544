// Frame pacing: one frame in flight on the socket, each camera frame sent at most once, and a
// watch on the replies, which tells when the server has stopped answering.

// If a reply never comes (lost, server stalled) the next frame goes anyway after this.
const FRAME_TIMEOUT_MS = 3000;
// A reply is overdue after this many of the recent intervals between results, and never before
// OVERDUE_MIN_MS: a server answering 2 frames a second is slow, not gone.
const OVERDUE_INTERVALS = 5;
const OVERDUE_MIN_MS = 1000;
const CHECK_MS = 100;
const RETRY_MS = 50;
// Weight of the newest interval in the running average of the intervals between results.
const INTERVAL_WEIGHT = 0.2;

export class Pacer {
  // state: the page's counters (framesSent, framesResent); onAnswering(bool): the server has
  // stopped answering (false) or answers again (true).
  constructor(camera, link, { state, onAnswering }) {
    this.camera = camera;
    this.link = link;
    this.state = state;
    this.onAnswering = onAnswering;
    this.running = false;
    this.checker = null;
    this.reset();
  }

  start() {
    this.running = true;
    clearInterval(this.checker);
    this.checker = setInterval(() => this.check(), CHECK_MS);
  }

  stop() {
    this.running = false;
    clearInterval(this.checker);
    this.reset();
  }

  // A new socket: frame ids count its binary messages from 1, exactly as the server does.
  reset() {
    this.release();
    this.nextFrameId = 1;
    this.waitingSince = null; // when the oldest frame the server still owes a reply for went out
    this.lastResultAt = null;
    this.interval = 0; // running average of the time between results, ms
    this.answering = true;
  }

  release() {
    if (this.inFlight) clearTimeout(this.inFlight.timer);
    this.inFlight = null;
  }

  // Sends the camera's picture if the socket is open, nothing is in flight and it is a new one.
  pump() {
    if (!this.running || !this.link.isOpen || this.inFlight) return;
    if (!this.camera.ready) {
      setTimeout(() => this.pump(), RETRY_MS);
      return;
    }
    if (!this.camera.hasNewFrame()) {
      this.camera.whenNewFrame(() => this.pump());
      return;
    }
    // Reserve the slot now: encoding is asynchronous and pump() may be called again meanwhile.
    const slot = { id: 0, sentAt: 0, timer: null };
    this.inFlight = slot;
    this.camera.grab().then(({ blob, frame }) => {
      if (this.inFlight !== slot) return; // stopped or reconnected meanwhile
      if (!blob || !this.link.send(blob)) {
        this.release();
        setTimeout(() => this.pump(), RETRY_MS);
        return;
      }
      slot.id = this.nextFrameId++;
      slot.sentAt = performance.now();
      if (frame === this.camera.sent) this.state.framesResent += 1; // the check above failed
      this.camera.markSent(frame);
      this.state.framesSent += 1;
      if (this.waitingSince === null) this.waitingSince = slot.sentAt;
      slot.timer = setTimeout(() => {
        if (this.inFlight === slot) {
          this.release();
          this.pump();
        }
      }, FRAME_TIMEOUT_MS);
    });
  }

  // Any message from the server; returns the round trip in ms when it is the result of the
  // frame in flight, else null.
  heard(msg) {
    const now = performance.now();
    let roundTrip = null;
    const answered = this.inFlight && this.inFlight.sentAt && msg.frame === this.inFlight.id;
    if (answered && ["result", "error", "dropped"].includes(msg.type)) {
      if (msg.type === "result") roundTrip = now - this.inFlight.sentAt;
      this.release();
    }
    if (msg.type === "result") {
      if (this.lastResultAt !== null && this.answering) {
        const gap = now - this.lastResultAt;
        this.interval = this.interval ? this.interval + INTERVAL_WEIGHT * (gap - this.interval) : gap;
      }
      this.lastResultAt = now;
    }
    // The server is alive as of now; a frame still in flight is owed from now on.
    this.waitingSince = this.inFlight && this.inFlight.sentAt ? now : null;
    if (!this.answering) {
      this.answering = true;
      this.onAnswering(true);
    }
    return roundTrip;
  }

  check() {
    if (!this.answering || this.waitingSince === null) return;
    const overdue = Math.max(OVERDUE_MIN_MS, OVERDUE_INTERVALS * this.interval);
    if (performance.now() - this.waitingSince > overdue) {
      this.answering = false;
      this.onAnswering(false);
    }
  }
}
