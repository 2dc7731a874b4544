// The /videos page: each MJPEG stream holds one of the 6 connections a browser opens to a server
// for as long as it plays, so with 6 streams every other request (a link, another tab) waited
// for ever. At most MAX_PLAYING play; starting another stops the one started first.

const section = document.querySelector(".videos");
const MAX_PLAYING = Number(section?.dataset.maxPlaying || 3);
const playing = []; // figures, the one started first first

function stop(figure) {
  // A new <img> without src: removing the old one is what makes the browser drop its connection.
  const still = document.createElement("img");
  still.alt = figure.querySelector("img").alt;
  figure.querySelector("img").replaceWith(still);
  figure.querySelector(".play").textContent = "Play";
  playing.splice(playing.indexOf(figure), 1);
}

async function explain(figure) {
  // The stream did not start: the server says why in JSON (415 for a file it cannot decode).
  if (playing.includes(figure)) stop(figure);
  let text = "cannot play this file";
  try {
    const response = await fetch(figure.dataset.url);
    if (!response.ok) text = (await response.json()).error || text;
  } catch {
    // keep the general text
  }
  const error = figure.querySelector(".stream-error");
  error.textContent = text;
  error.hidden = false;
}

function play(figure) {
  while (playing.length >= MAX_PLAYING) stop(playing[0]);
  figure.querySelector(".stream-error").hidden = true;
  const image = figure.querySelector("img");
  image.addEventListener("error", () => explain(figure), { once: true });
  image.src = figure.dataset.url;
  figure.querySelector(".play").textContent = "Stop";
  playing.push(figure);
}

for (const figure of section ? section.querySelectorAll("figure") : []) {
  figure.querySelector(".play").addEventListener("click", () => (playing.includes(figure) ? stop(figure) : play(figure)));
}
for (const figure of section ? [...section.querySelectorAll("figure")].slice(0, MAX_PLAYING) : []) play(figure);
