// The webcam page: camera → JPEG frames over a WebSocket → boxes and labels on a canvas.
// Each concern has its module in static/webcam/; this one wires them to the page's controls.

import { Camera, FRAME_CLOCK, cameraErrorMessage } from "./webcam/camera.js";
import { Link } from "./webcam/link.js";
import { Overlay } from "./webcam/overlay.js";
import { Pacer } from "./webcam/pacer.js";
import { Panel, Stats, Status } from "./webcam/readout.js";

const $ = (id) => document.getElementById(id);
const startButton = $("start");
const stopButton = $("stop");
const stage = $("stage");
const placeholder = $("placeholder");

// Read by the browser tests; kept up to date as the page runs.
const state = (window.ferState = {
  connected: false,
  // false while a reply is overdue: the server has stopped answering
  answering: false,
  framesSent: 0,
  resultsReceived: 0,
  errors: 0,
  dropped: 0,
  lastResult: null,
  lastError: null,
  facesDrawn: 0,
  // Camera frames that were offered for sending but had already been sent (none may be).
  framesResent: 0,
  frameClock: FRAME_CLOCK,
});

const camera = new Camera($("video"));
const overlay = new Overlay($("overlay"));
const status = new Status($("status"), $("message"));
const stats = new Stats($("fps"), $("latency"));
const panel = new Panel({ bars: $("bars"), mainFace: $("main-face"), mainLabel: $("main-label"), facesCount: $("faces-count") });
const link = new Link({ onConnecting, onOpen, onMessage, onClose, onRetry });
const pacer = new Pacer(camera, link, { state, onAnswering });
let running = false;
const CAMERA_PICTURE_TIMEOUT_MS = 10000;
let countdown = null; // the "retrying in N s" status, counted down

async function start() {
  status.message("");
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    status.message(
      `Browsers only give camera access to secure pages, and ${location.origin} is not one. ` +
        "Open the page as http://localhost:PORT on the server's machine, or start the server with " +
        "--cert FILE --key FILE and open it over https://.",
    );
    return;
  }
  startButton.disabled = true;
  status.set("asking for the camera…");
  try {
    await camera.open();
  } catch (err) {
    status.message(cameraErrorMessage(err));
    status.set("no camera", "bad");
    startButton.disabled = false;
    return;
  }
  // A camera that grants access but sends no picture (in use elsewhere, a broken driver) never
  // lets play() settle: say so after a while, and let Stop work, instead of waiting for ever.
  const played = camera.play().then(
    () => true,
    (err) => {
      // Autoplay of a muted stream is allowed everywhere; a failure here is unexpected.
      status.message(`Could not play the camera stream: ${err.message || err}`);
      return true;
    },
  );
  const noPicture = new Promise((resolve) => setTimeout(() => resolve(false), CAMERA_PICTURE_TIMEOUT_MS));
  if (!(await Promise.race([played, noPicture]))) {
    status.message("The camera sends no picture (another program may be using it). Stop, then try again.");
    status.set("no picture from the camera", "bad");
    running = true;
    stopButton.disabled = false;
    return;
  }
  placeholder.hidden = true;
  running = true;
  stopButton.disabled = false;
  stopButton.focus(); // Start is disabled now: keyboard focus would otherwise fall to the page
  pacer.start();
  link.open();
}

function stop() {
  running = false;
  clearInterval(countdown);
  link.close();
  pacer.stop();
  stats.stop();
  camera.close();
  state.connected = false;
  state.answering = false;
  stage.classList.remove("offline");
  clearFaces();
  panel.clear();
  placeholder.hidden = false;
  startButton.disabled = false;
  stopButton.disabled = true;
  startButton.focus();
  status.set("stopped");
}

function clearFaces() {
  overlay.clear();
  state.facesDrawn = 0;
}

function onConnecting() {
  clearInterval(countdown);
  status.set("connecting…");
  pacer.reset();
}

function onOpen() {
  state.connected = true;
  state.answering = true;
  stage.classList.remove("offline");
  status.set("connected", "ok");
  stats.start();
  pacer.pump();
}

function onClose(event) {
  state.connected = false;
  state.answering = false;
  pacer.reset();
  // Nothing on screen may look live while there is no server: boxes, bars, fps go.
  clearFaces();
  panel.clear("no results");
  stats.stop();
  if (event.code === 1013) status.message(`Server busy: ${event.reason || "try again later"}. Retrying…`);
  else if (event.code === 1001) status.message("The server is restarting. Reconnecting…");
}

function onRetry(delay) {
  clearInterval(countdown);
  const until = performance.now() + delay;
  const show = () => {
    const left = Math.max(0, until - performance.now()) / 1000;
    status.set(`disconnected — retrying in ${left.toFixed(left < 10 ? 1 : 0)} s`, "bad");
  };
  show();
  countdown = setInterval(show, 1000);
  stage.classList.add("offline");
}

// The socket is open but replies stopped coming (a stalled or overloaded server), or came back.
function onAnswering(answering) {
  state.answering = answering;
  if (answering) {
    stage.classList.remove("offline");
    status.set("connected", "ok");
    return;
  }
  // What is on screen is no longer the face in view: take it away rather than leave it wrong.
  clearFaces();
  panel.clear("no results");
  stage.classList.add("offline");
  status.set("server not answering — waiting", "bad");
}

function onMessage(msg) {
  const roundTrip = pacer.heard(msg);
  switch (msg.type) {
    case "hello":
      status.message("");
      break;
    case "result":
      if (roundTrip !== null) stats.result(roundTrip);
      state.resultsReceived += 1;
      state.lastResult = msg;
      draw(msg);
      break;
    case "error":
      state.errors += 1;
      state.lastError = msg;
      if (msg.frame === undefined) status.message(`Server: ${msg.error}`);
      break;
    case "dropped":
      state.dropped += 1;
      break;
    default:
      break; // "pong" and anything newer than this page
  }
  pacer.pump();
}

function draw(result) {
  overlay.draw(result);
  state.facesDrawn = result.faces.length;
  panel.show(result.faces);
}

startButton.addEventListener("click", start);
stopButton.addEventListener("click", stop);
window.addEventListener("resize", () => {
  if (state.lastResult && running && state.answering) overlay.draw(state.lastResult);
});
// Stop the camera light when the tab is closed.
window.addEventListener("pagehide", () => {
  if (running) stop();
});
