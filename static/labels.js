// The emotions and their colours, as the server defines them (fer_async/labels.py), read from the
// page's <body> (templates/base.html); and the one way the pages write a face's track id.

const data = document.body.dataset;

export const EMOTIONS = JSON.parse(data.emotions || "[]");
const COLOURS = JSON.parse(data.emotionColours || "{}");
// For a label this page does not know (a newer server): green, which no emotion uses.
const UNKNOWN_COLOUR = "#00ff00";

export function colourOf(emotion) {
  return COLOURS[emotion] || UNKNOWN_COLOUR;
}

// Black or white, whichever reads better on the emotion's colour (fer_async.labels.label_ink).
const INKS = JSON.parse(data.emotionInks || "{}");
export function inkOn(emotion) {
  return INKS[emotion] || "#000";
}

// "#3" on every page, as the server draws it on its video streams; "" for an untracked face.
export function faceId(id) {
  return id === undefined || id === null ? "" : `#${id}`;
}

// "#3 happy 87%": what the overlay draws, and what a screen reader hears, for one face.
export function faceLabel(face) {
  const id = faceId(face.id);
  return `${id ? `${id} ` : ""}${face.emotion} ${Math.round(face.scores[face.emotion] * 100)}%`;
}
