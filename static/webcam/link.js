// The WebSocket to the server: connect, parse its JSON messages, reconnect with backoff.
// Protocol: fer_async/server/protocol.py.

const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 10000;
const BUSY_MIN_MS = 2000; // a server full of clients (1013): not again within 2 s

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

export class Link {
  // handlers: onConnecting(), onOpen(), onMessage(msg), onClose(event), onRetry(delayMs)
  constructor(handlers) {
    this.handlers = handlers;
    this.socket = null;
    this.wanted = false;
    this.delay = RECONNECT_MIN_MS;
    this.timer = null;
  }

  get isOpen() {
    return Boolean(this.socket) && this.socket.readyState === WebSocket.OPEN;
  }

  open() {
    this.wanted = true;
    this.connect();
  }

  close() {
    this.wanted = false;
    clearTimeout(this.timer);
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.close(1000, "stopped");
    }
  }

  // True when `blob` went out on the open socket.
  send(blob) {
    if (!this.isOpen) return false;
    this.socket.send(blob);
    return true;
  }

  connect() {
    if (!this.wanted) return;
    this.handlers.onConnecting();
    const socket = new WebSocket(wsUrl());
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onopen = () => {
      if (socket !== this.socket) return;
      this.handlers.onOpen();
    };
    socket.onmessage = (event) => {
      if (socket !== this.socket || typeof event.data !== "string") return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return;
      }
      // Back off afresh only once the server has taken us: a full server opens the socket and
      // closes it at once (1013), and a reset on open had every waiting tab retry twice a second.
      if (msg.type === "hello") this.delay = RECONNECT_MIN_MS;
      this.handlers.onMessage(msg);
    };
    socket.onclose = (event) => {
      if (socket !== this.socket) return;
      this.socket = null;
      this.handlers.onClose(event);
      if (event.code === 1013) this.delay = Math.max(this.delay, BUSY_MIN_MS);
      if (this.wanted) this.retry();
    };
    // Errors are always followed by a close event, which handles them.
    socket.onerror = () => {};
  }

  retry() {
    this.handlers.onRetry(this.delay);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), this.delay);
    this.delay = Math.min(this.delay * 2, RECONNECT_MAX_MS);
  }
}
