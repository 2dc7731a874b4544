// fer_async webcam page: camera → JPEG frames over a WebSocket → boxes and labels on a canvas.
// Plain JS, no build step. Protocol: see fer_async/server/ws.py.
"use strict";

(() => {
  // Frames are shrunk to this before encoding: faces stay large enough for the detector, and a
  // 640x480 JPEG at quality 0.8 is ~40 KB, far below the server's frame limit.
  const MAX_WIDTH = 640;
  const MAX_HEIGHT = 480;
  const JPEG_QUALITY = 0.8;
  // If a reply never comes (lost, server restarted) send the next frame anyway after this.
  const FRAME_TIMEOUT_MS = 3000;
  const RECONNECT_MIN_MS = 500;
  const RECONNECT_MAX_MS = 10000;
  // A selfie view is mirrored (CSS on the <video>); boxes are mirrored to match.
  const MIRROR = true;

  const EMOTIONS = JSON.parse(document.body.dataset.emotions || "[]");

  const $ = (id) => document.getElementById(id);
  const video = $("video");
  const overlay = $("overlay");
  const overlayCtx = overlay.getContext("2d");
  const capture = document.createElement("canvas");
  const captureCtx = capture.getContext("2d");
  const startButton = $("start");
  const stopButton = $("stop");
  const statusEl = $("status");
  const messageEl = $("message");
  const fpsEl = $("fps");
  const latencyEl = $("latency");
  const facesCountEl = $("faces-count");
  const placeholder = $("placeholder");
  const stage = $("stage");
  const mainFaceEl = $("main-face");
  const bars = new Map(
    [...document.querySelectorAll("#bars li")].map((li) => [
      li.dataset.emotion,
      { li, bar: li.querySelector(".bar"), value: li.querySelector(".value") },
    ]),
  );

  // Read by the browser tests; kept up to date as the page runs.
  const state = (window.ferState = {
    connected: false,
    framesSent: 0,
    resultsReceived: 0,
    errors: 0,
    dropped: 0,
    lastResult: null,
    lastError: null,
    facesDrawn: 0,
    // Camera frames that were offered for sending but had already been sent (none may be).
    framesResent: 0,
    frameClock: "requestVideoFrameCallback" in HTMLVideoElement.prototype ? "requestVideoFrameCallback" : "currentTime",
  });

  let stream = null;
  let ws = null;
  let running = false;
  let reconnectDelay = RECONNECT_MIN_MS;
  let reconnectTimer = null;
  // Frame ids count binary messages on the current socket from 1, exactly as the server does.
  let nextFrameId = 1;
  let inFlight = null; // {id, sentAt, timer} of the one frame we wait for, or null
  const resultTimes = []; // arrival times of recent results, for the fps figure
  // Each camera frame is sent at most once: a fast server must not get (and the page must not
  // count as fps) the same picture twice. `presentedFrame` counts frames the camera has shown,
  // `sentFrame` is the one last sent; pump() waits for the next frame while they are equal.
  const HAS_VIDEO_FRAME_CALLBACK = "requestVideoFrameCallback" in HTMLVideoElement.prototype;
  let presentedFrame = 0;
  let sentFrame = -1;
  let lastVideoTime = -1;
  let waitingForFrame = false;
  let frameLoop = 0;

  const COLOURS = {
    angry: "#dc2828",
    disgust: "#288c28",
    fear: "#a03ca0",
    happy: "#ffc800",
    sad: "#2878c8",
    surprise: "#00c8c8",
    neutral: "#b4b4b4",
  };

  function setStatus(text, kind = "") {
    statusEl.textContent = text;
    statusEl.className = `status ${kind}`;
  }

  function showMessage(text) {
    messageEl.textContent = text;
    messageEl.hidden = !text;
  }

  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws`;
  }

  function cameraErrorMessage(err) {
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

  async function start() {
    showMessage("");
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showMessage(
        `Browsers only give camera access to secure pages, and ${location.origin} is not one. ` +
          "Open the page as http://localhost:PORT on the server's machine, or start the server with " +
          "--cert FILE --key FILE and open it over https://.",
      );
      return;
    }
    startButton.disabled = true;
    setStatus("asking for the camera…");
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: false,
        video: { width: { ideal: MAX_WIDTH }, height: { ideal: MAX_HEIGHT }, facingMode: "user" },
      });
    } catch (err) {
      showMessage(cameraErrorMessage(err));
      setStatus("no camera", "bad");
      startButton.disabled = false;
      return;
    }
    video.srcObject = stream;
    presentedFrame = 0;
    sentFrame = -1;
    lastVideoTime = -1;
    waitingForFrame = false;
    frameLoop += 1;
    if (HAS_VIDEO_FRAME_CALLBACK) watchFrames(frameLoop);
    try {
      await video.play();
    } catch (err) {
      // Autoplay of a muted stream is allowed everywhere; a failure here is unexpected.
      showMessage(`Could not play the camera stream: ${err.message || err}`);
    }
    placeholder.hidden = true;
    running = true;
    stopButton.disabled = false;
    connect();
  }

  function stop() {
    running = false;
    clearTimeout(reconnectTimer);
    releaseInFlight();
    if (ws) {
      const socket = ws;
      ws = null;
      socket.close(1000, "stopped");
    }
    if (stream) {
      stream.getTracks().forEach((track) => track.stop());
      stream = null;
    }
    video.srcObject = null;
    state.connected = false;
    stage.classList.remove("offline");
    clearOverlay();
    placeholder.hidden = false;
    startButton.disabled = false;
    stopButton.disabled = true;
    fpsEl.textContent = "–";
    latencyEl.textContent = "–";
    setStatus("stopped");
  }

  function connect() {
    if (!running) return;
    setStatus("connecting…");
    const socket = new WebSocket(wsUrl());
    socket.binaryType = "arraybuffer";
    ws = socket;
    nextFrameId = 1;
    releaseInFlight();

    socket.onopen = () => {
      if (socket !== ws) return;
      state.connected = true;
      stage.classList.remove("offline");
      reconnectDelay = RECONNECT_MIN_MS;
      setStatus("connected", "ok");
      pump();
    };
    socket.onmessage = (event) => {
      if (socket !== ws || typeof event.data !== "string") return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return;
      }
      onMessage(msg);
    };
    socket.onclose = (event) => {
      if (socket !== ws) return;
      state.connected = false;
      releaseInFlight();
      ws = null;
      // Nothing on screen may look live while there is no server: boxes, bars, fps go.
      clearOverlay();
      clearStats();
      if (event.code === 1013) showMessage(`Server busy: ${event.reason || "try again later"}. Retrying…`);
      else if (event.code === 1001) showMessage("The server is restarting. Reconnecting…");
      if (running) scheduleReconnect();
    };
    // Errors are always followed by a close event, which handles them.
    socket.onerror = () => {};
  }

  function clearStats() {
    resultTimes.length = 0;
    fpsEl.textContent = "–";
    latencyEl.textContent = "–";
    facesCountEl.textContent = "no results";
  }

  function scheduleReconnect() {
    setStatus(`disconnected — retrying in ${(reconnectDelay / 1000).toFixed(1)} s`, "bad");
    stage.classList.add("offline");
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(connect, reconnectDelay);
    reconnectDelay = Math.min(reconnectDelay * 2, RECONNECT_MAX_MS);
  }

  function releaseInFlight() {
    if (inFlight) clearTimeout(inFlight.timer);
    inFlight = null;
  }

  function onMessage(msg) {
    switch (msg.type) {
      case "hello":
        showMessage("");
        break;
      case "result":
        if (inFlight && msg.frame === inFlight.id) {
          const now = performance.now();
          latencyEl.textContent = Math.round(now - inFlight.sentAt);
          resultTimes.push(now);
          while (resultTimes.length && now - resultTimes[0] > 1000) resultTimes.shift();
          fpsEl.textContent = resultTimes.length;
          releaseInFlight();
        }
        state.resultsReceived += 1;
        state.lastResult = msg;
        draw(msg);
        pump();
        break;
      case "error":
        state.errors += 1;
        state.lastError = msg;
        if (msg.frame === undefined) showMessage(`Server: ${msg.error}`);
        if (inFlight && msg.frame === inFlight.id) {
          releaseInFlight();
          pump();
        }
        break;
      case "dropped":
        state.dropped += 1;
        if (inFlight && msg.frame === inFlight.id) {
          releaseInFlight();
          pump();
        }
        break;
      default:
        break; // "pong" and anything newer than this page
    }
  }

  // Sends the current video frame if the socket is open and nothing is in flight.
  function pump() {
    if (!running || !ws || ws.readyState !== WebSocket.OPEN || inFlight) return;
    if (video.readyState < 2 || !video.videoWidth) {
      setTimeout(pump, 50);
      return;
    }
    if (!HAS_VIDEO_FRAME_CALLBACK && video.currentTime !== lastVideoTime) {
      lastVideoTime = video.currentTime;
      presentedFrame += 1;
    }
    if (presentedFrame === sentFrame) {
      // Already sent this picture: go again when the camera shows the next one.
      waitForNextFrame();
      return;
    }
    const scale = Math.min(1, MAX_WIDTH / video.videoWidth, MAX_HEIGHT / video.videoHeight);
    const width = Math.round(video.videoWidth * scale);
    const height = Math.round(video.videoHeight * scale);
    if (capture.width !== width || capture.height !== height) {
      capture.width = width;
      capture.height = height;
    }
    captureCtx.drawImage(video, 0, 0, width, height);
    const socket = ws;
    // Reserve the slot now: toBlob is asynchronous and pump() may be called again meanwhile.
    const frame = { id: nextFrameId, sentAt: 0, timer: null, cameraFrame: presentedFrame };
    inFlight = frame;
    capture.toBlob(
      (blob) => {
        if (inFlight !== frame) return;
        if (!blob || socket !== ws || socket.readyState !== WebSocket.OPEN) {
          releaseInFlight();
          setTimeout(pump, 50);
          return;
        }
        frame.id = nextFrameId++;
        frame.sentAt = performance.now();
        socket.send(blob);
        if (frame.cameraFrame === sentFrame) state.framesResent += 1; // the guard in pump() failed
        sentFrame = frame.cameraFrame;
        state.framesSent += 1;
        frame.timer = setTimeout(() => {
          if (inFlight === frame) {
            releaseInFlight();
            pump();
          }
        }, FRAME_TIMEOUT_MS);
      },
      "image/jpeg",
      JPEG_QUALITY,
    );
  }

  function waitForNextFrame() {
    if (waitingForFrame) return;
    waitingForFrame = true;
    if (HAS_VIDEO_FRAME_CALLBACK) {
      // The callback loop below bumps presentedFrame and calls pump() while we wait.
      return;
    }
    // No frame callbacks (older Firefox): poll currentTime at a rate above any camera's.
    setTimeout(() => {
      waitingForFrame = false;
      pump();
    }, 10);
  }

  // One callback loop per camera start; `loop` tells a stale loop (from before a Stop) to end.
  function watchFrames(loop) {
    video.requestVideoFrameCallback((_now, metadata) => {
      if (loop !== frameLoop || !stream) return;
      presentedFrame = metadata.presentedFrames;
      if (waitingForFrame) {
        waitingForFrame = false;
        pump();
      }
      watchFrames(loop);
    });
  }

  // The rectangle the video's picture occupies inside the stage (object-fit: contain).
  function contentRect(width, height) {
    const boxW = overlay.clientWidth;
    const boxH = overlay.clientHeight;
    const scale = Math.min(boxW / width, boxH / height);
    const w = width * scale;
    const h = height * scale;
    return { x: (boxW - w) / 2, y: (boxH - h) / 2, scale };
  }

  function fitOverlay() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(overlay.clientWidth * dpr);
    const h = Math.round(overlay.clientHeight * dpr);
    if (overlay.width !== w || overlay.height !== h) {
      overlay.width = w;
      overlay.height = h;
    }
    overlayCtx.setTransform(dpr, 0, 0, dpr, 0, 0);
  }

  function clearOverlay() {
    fitOverlay();
    overlayCtx.clearRect(0, 0, overlay.clientWidth, overlay.clientHeight);
    overlay.dataset.faces = "0";
    state.facesDrawn = 0;
    mainFaceEl.textContent = "";
    updateBars(null);
  }

  function draw(result) {
    fitOverlay();
    overlayCtx.clearRect(0, 0, overlay.clientWidth, overlay.clientHeight);
    const { x: ox, y: oy, scale } = contentRect(result.width, result.height);
    const fontSize = Math.max(12, Math.round(16 * Math.min(1.5, scale * 1.2)));
    overlayCtx.font = `600 ${fontSize}px system-ui, sans-serif`;
    overlayCtx.textBaseline = "top";
    for (const face of result.faces) {
      const [bx, by, bw, bh] = face.box;
      const x = ox + (MIRROR ? result.width - bx - bw : bx) * scale;
      const y = oy + by * scale;
      const w = bw * scale;
      const h = bh * scale;
      const colour = COLOURS[face.emotion] || "#00ff00";
      overlayCtx.lineWidth = 3;
      overlayCtx.strokeStyle = colour;
      overlayCtx.strokeRect(x, y, w, h);
      const idPrefix = face.id === undefined ? "" : `#${face.id} `;
      const label = `${idPrefix}${face.emotion} ${Math.round(face.scores[face.emotion] * 100)}%`;
      const textW = overlayCtx.measureText(label).width + 8;
      const textH = fontSize + 6;
      const ty = y - textH >= 0 ? y - textH : y;
      overlayCtx.fillStyle = colour;
      overlayCtx.fillRect(x - 1.5, ty, textW, textH);
      overlayCtx.fillStyle = "#000";
      overlayCtx.fillText(label, x + 3, ty + 3);
    }
    const faces = result.faces.length;
    overlay.dataset.faces = String(faces);
    state.facesDrawn = faces;
    facesCountEl.textContent = faces === 0 ? "no face in view" : faces === 1 ? "1 face" : `${faces} faces (largest shown)`;
    const main = mainFace(result.faces);
    mainFaceEl.textContent = main && main.id !== undefined ? `#${main.id}` : "";
    updateBars(main);
  }

  function mainFace(faces) {
    let best = null;
    for (const face of faces) {
      if (!best || face.box[2] * face.box[3] > best.box[2] * best.box[3]) best = face;
    }
    return best;
  }

  function updateBars(face) {
    for (const name of EMOTIONS.length ? EMOTIONS : bars.keys()) {
      const entry = bars.get(name);
      if (!entry) continue;
      const p = face ? face.scores[name] || 0 : 0;
      entry.bar.style.width = `${(p * 100).toFixed(1)}%`;
      entry.value.textContent = face ? `${Math.round(p * 100)}%` : "–";
      entry.li.classList.toggle("top", Boolean(face) && face.emotion === name);
    }
  }

  startButton.addEventListener("click", start);
  stopButton.addEventListener("click", stop);
  window.addEventListener("resize", () => {
    if (state.lastResult && running) draw(state.lastResult);
  });
  // Stop the camera light when the tab is closed.
  window.addEventListener("pagehide", () => {
    if (running) stop();
  });
})();
