// The webcam: getUserMedia, the frame counter that lets each camera frame be sent at most once,
// and the JPEG encoding of the current picture.

// Frames are shrunk to this before encoding: faces stay large enough for the detector, and a
// 640x480 JPEG at quality 0.8 is ~40 KB, far below the server's frame limit.
const MAX_WIDTH = 640;
const MAX_HEIGHT = 480;
const JPEG_QUALITY = 0.8;
// Without frame callbacks (older Firefox) currentTime is polled at a rate above any camera's.
const POLL_MS = 10;

export const FRAME_CLOCK =
  "requestVideoFrameCallback" in HTMLVideoElement.prototype ? "requestVideoFrameCallback" : "currentTime";

export function cameraErrorMessage(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Camera permission was denied. Allow camera access for this site (the camera icon in the address bar) and click Start again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No camera was found. Connect a webcam and click Start again.";
    case "NotReadableError":
      return "The camera is in use by another application (or blocked by the OS). Close it there and try again.";
    default:
      return `Could not start the camera: ${err && err.message ? err.message : err}`;
  }
}

export class Camera {
  constructor(video) {
    this.video = video;
    this.stream = null;
    this.capture = document.createElement("canvas");
    this.captureCtx = this.capture.getContext("2d");
    // `presented` counts frames the camera has shown, `sent` is the one last sent.
    this.presented = 0;
    this.sent = -1;
    this.lastTime = -1;
    this.onNewFrame = null; // one waiting callback, called when the next frame shows
    this.loop = 0; // tells a stale frame-callback loop (from before a close) to end
  }

  // Throws getUserMedia's error (see cameraErrorMessage).
  async open() {
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: false,
      video: { width: { ideal: MAX_WIDTH }, height: { ideal: MAX_HEIGHT }, facingMode: "user" },
    });
    this.video.srcObject = this.stream;
    this.presented = 0;
    this.sent = -1;
    this.lastTime = -1;
    this.onNewFrame = null;
    this.loop += 1;
    if (FRAME_CLOCK === "requestVideoFrameCallback") this.watchFrames(this.loop);
  }

  play() {
    return this.video.play();
  }

  close() {
    if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
    this.stream = null;
    this.onNewFrame = null;
    this.video.srcObject = null;
  }

  get ready() {
    return Boolean(this.stream) && this.video.readyState >= 2 && this.video.videoWidth > 0;
  }

  // True when the picture on show has not been sent yet.
  hasNewFrame() {
    if (FRAME_CLOCK === "currentTime" && this.video.currentTime !== this.lastTime) {
      this.lastTime = this.video.currentTime;
      this.presented += 1;
    }
    return this.presented !== this.sent;
  }

  // Calls `then` once, when the camera shows its next frame.
  whenNewFrame(then) {
    if (this.onNewFrame) return;
    this.onNewFrame = then;
    if (FRAME_CLOCK === "currentTime") {
      setTimeout(() => this.fireNewFrame(), POLL_MS);
    }
  }

  fireNewFrame() {
    const then = this.onNewFrame;
    this.onNewFrame = null;
    if (then) then();
  }

  watchFrames(loop) {
    this.video.requestVideoFrameCallback((_now, metadata) => {
      if (loop !== this.loop || !this.stream) return;
      this.presented = metadata.presentedFrames;
      this.fireNewFrame();
      this.watchFrames(loop);
    });
  }

  // The picture on show as a JPEG: resolves {blob, frame} (blob null when encoding failed).
  grab() {
    const { video, capture } = this;
    const scale = Math.min(1, MAX_WIDTH / video.videoWidth, MAX_HEIGHT / video.videoHeight);
    const width = Math.round(video.videoWidth * scale);
    const height = Math.round(video.videoHeight * scale);
    if (capture.width !== width || capture.height !== height) {
      capture.width = width;
      capture.height = height;
    }
    this.captureCtx.drawImage(video, 0, 0, width, height);
    const frame = this.presented;
    return new Promise((resolve) => capture.toBlob((blob) => resolve({ blob, frame }), "image/jpeg", JPEG_QUALITY));
  }

  markSent(frame) {
    this.sent = frame;
  }
}
