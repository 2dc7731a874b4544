// The overlay canvas over the video: a box and a "#id emotion score" label per face.

import { colourOf, faceLabel, inkOn } from "../labels.js";

// A selfie view is mirrored (CSS on the <video>); boxes are mirrored to match, never the text.
const MIRROR = true;

export class Overlay {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
  }

  // The rectangle the video's picture occupies inside the stage (object-fit: contain).
  contentRect(width, height) {
    const boxW = this.canvas.clientWidth;
    const boxH = this.canvas.clientHeight;
    const scale = Math.min(boxW / width, boxH / height);
    return { x: (boxW - width * scale) / 2, y: (boxH - height * scale) / 2, scale };
  }

  // Sizes the canvas to its CSS box at the device's pixel ratio, and blanks it.
  blank() {
    const { canvas, ctx } = this;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(canvas.clientWidth * dpr);
    const h = Math.round(canvas.clientHeight * dpr);
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
  }

  clear() {
    this.blank();
    this.canvas.dataset.faces = "0";
  }

  draw(result) {
    const { ctx } = this;
    this.blank();
    const { x: ox, y: oy, scale } = this.contentRect(result.width, result.height);
    const fontSize = Math.max(12, Math.round(16 * Math.min(1.5, scale * 1.2)));
    ctx.font = `600 ${fontSize}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    for (const face of result.faces) {
      const [bx, by, bw, bh] = face.box;
      const x = ox + (MIRROR ? result.width - bx - bw : bx) * scale;
      const y = oy + by * scale;
      const colour = colourOf(face.emotion);
      ctx.lineWidth = 3;
      ctx.strokeStyle = colour;
      ctx.strokeRect(x, y, bw * scale, bh * scale);
      const label = faceLabel(face);
      const textW = ctx.measureText(label).width + 8;
      const textH = fontSize + 6;
      const ty = y - textH >= 0 ? y - textH : y;
      ctx.fillStyle = colour;
      ctx.fillRect(x - 1.5, ty, textW, textH);
      ctx.fillStyle = inkOn(face.emotion);
      ctx.fillText(label, x + 3, ty + 3);
    }
    this.canvas.dataset.faces = String(result.faces.length);
  }
}
