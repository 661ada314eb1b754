// The annotation page: prompts -> the model's mask (computed on the server), brush fixes, accept, next.
// Masks travel as PNGs with the mask in the alpha channel (server: sam_engine/annotate/web/masks.py).
// The body's data-phase / data-segments / data-accepted attributes tell tests (and people) where the page is;
// window.samEngine.latencies holds the milliseconds from each prompt to its mask drawn.
"use strict";

const COLOURS = ["#ff6b6b", "#51cf66", "#fcc419", "#cc5de8", "#22b8cf", "#ff922b", "#94d82d", "#f06595"];
const CURRENT = "#4dabf7";
const DRAG_PIXELS = 5; // a press that moves farther (screen pixels) is a box, not a click

const view = document.getElementById("view");
const ctx = view.getContext("2d");
const tokenInAddress = location.hash.match(/token=([^&]*)/); // the address the server printed: .../#token=...
const token = tokenInAddress ? decodeURIComponent(tokenInAddress[1]) : null;
const client = sessionStorage.getItem("samEngineClient") || crypto.randomUUID();
sessionStorage.setItem("samEngineClient", client);

const state = {
  image: null,        // {key, width, height, stage, bitmap}
  prefilled: [],      // [{id, mask (canvas), look: drawn(), rejected}]
  accepted: [],       // [{id, look: drawn()}]
  current: null,      // the object being annotated, see newObject()
  mode: "prompt",     // prompt | brush | erase
  brushRadius: 8,
  pointer: null,      // last pointer position in image pixels
  press: null,        // {x, y, screenX, screenY, dragging} while the button is held in prompt mode
  busy: false,
};
window.samEngine = { latencies: [], state };

// --- talking to the server ----------------------------------------------------------------------------------

function headers() {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

async function request(path, init) {
  const response = await fetch(`api/${path}`, { headers: headers(), ...init });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({ error: response.statusText }));
    throw new Error(`${path}: ${problem.error}`);
  }
  return response;
}

async function api(path, body) {
  const init = body === undefined ? {} : { method: "POST", body: JSON.stringify({ client, ...body }) };
  return (await request(path, init)).json();
}

async function imageBitmap(key) {
  return createImageBitmap(await (await request(`image?key=${encodeURIComponent(key)}`, {})).blob());
}

function pngBitmap(base64) {
  return fetch(`data:image/png;base64,${base64}`).then((r) => r.blob()).then((blob) => createImageBitmap(blob));
}

// --- masks as canvases --------------------------------------------------------------------------------------

function canvasOf(width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

function maskCanvas(bitmap) {
  const canvas = canvasOf(state.image.width, state.image.height);
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  return canvas;
}

function tinted(mask, colour) {
  const canvas = canvasOf(mask.width, mask.height);
  const c = canvas.getContext("2d");
  c.drawImage(mask, 0, 0);
  c.globalCompositeOperation = "source-in";
  c.fillStyle = colour;
  c.fillRect(0, 0, canvas.width, canvas.height);
  return canvas;
}

// The ring of pixels within `width` of a mask, outside it, in `colour`: the mask's outline.
function outline(mask, colour, width) {
  const canvas = canvasOf(mask.width, mask.height);
  const c = canvas.getContext("2d");
  for (const [dx, dy] of [[-width, 0], [width, 0], [0, -width], [0, width]]) c.drawImage(mask, dx, dy);
  c.globalCompositeOperation = "destination-out";
  c.drawImage(mask, 0, 0);
  c.globalCompositeOperation = "source-in";
  c.fillStyle = colour;
  c.fillRect(0, 0, canvas.width, canvas.height);
  return canvas;
}

// A mask drawn on the image: its tinted fill and its outline, made once.
function drawn(mask, colour) {
  return { fill: tinted(mask, colour), edge: outline(mask, colour, lineWidth()) };
}

function lineWidth() {
  return Math.max(1, Math.round(state.image.width / 400));
}

function isEmpty(mask) {
  const alpha = mask.getContext("2d").getImageData(0, 0, mask.width, mask.height).data;
  for (let i = 3; i < alpha.length; i += 4) if (alpha[i] >= 128) return false;
  return true;
}

function maskHas(mask, x, y) {
  const px = Math.min(mask.width - 1, Math.floor(x));
  const py = Math.min(mask.height - 1, Math.floor(y));
  return mask.getContext("2d").getImageData(px, py, 1, 1).data[3] >= 128;
}

// --- the object being annotated -------------------------------------------------------------------------------

function newObject() {
  return {
    prompts: [],        // {type: "point", x, y, label} | {type: "box", box: [x0, y0, x1, y1]}
    candidates: [],     // [{bitmap, score, token}] of the last prompt
    chosen: -1,
    mask: canvasOf(state.image.width, state.image.height),
    clicks: 0,          // prompts made (undone ones included: they took the person's time)
    strokes: 0,
    started: performance.now(),
    history: [],
  };
}

function current() {
  if (!state.current) state.current = newObject();
  return state.current;
}

function snapshot(object) {
  const mask = canvasOf(object.mask.width, object.mask.height);
  mask.getContext("2d").drawImage(object.mask, 0, 0);
  object.history.push({ prompts: object.prompts.slice(), candidates: object.candidates, chosen: object.chosen, mask });
}

function showCandidate(object, index) {
  object.chosen = index;
  const c = object.mask.getContext("2d");
  c.clearRect(0, 0, object.mask.width, object.mask.height);
  c.drawImage(object.candidates[index].bitmap, 0, 0);
}

async function addPrompt(prompt, clickedAt) {
  const object = current();
  snapshot(object);
  object.prompts.push(prompt);
  object.clicks += 1;
  const points = object.prompts.filter((p) => p.type === "point").map((p) => [p.x, p.y, p.label]);
  const box = object.prompts.filter((p) => p.type === "box").map((p) => p.box).pop() || null;
  const previous = object.chosen >= 0 ? object.candidates[object.chosen].token : null;
  state.busy = true;
  setPhase("segmenting");
  try {
    const answer = await api("segment", { key: state.image.key, points, box, previous });
    object.candidates = await Promise.all(answer.candidates.map(async (c) => ({ ...c, bitmap: await pngBitmap(c.png) })));
    const best = object.candidates.reduce((b, c, i, all) => (c.score > all[b].score ? i : b), 0);
    showCandidate(object, best);
    render();
    await new Promise((resolve) => requestAnimationFrame(resolve));
    window.samEngine.latencies.push(performance.now() - clickedAt);
    document.body.dataset.segments = String(Number(document.body.dataset.segments) + 1);
    say("");
  } catch (error) {
    undo(); // the prompt the server refused leaves no trace but its count
    say(error.message);
  } finally {
    state.busy = false;
    setPhase("ready");
    renderCandidates();
  }
}

function undo() {
  const object = state.current;
  if (!object || object.history.length === 0) return;
  const last = object.history.pop();
  object.prompts = last.prompts;
  object.candidates = last.candidates;
  object.chosen = last.chosen;
  const c = object.mask.getContext("2d");
  c.clearRect(0, 0, object.mask.width, object.mask.height);
  c.drawImage(last.mask, 0, 0);
  render();
  renderCandidates();
}

function clearObject() {
  state.current = null;
  render();
  renderCandidates();
}

async function accept() {
  const object = state.current;
  if (!object || isEmpty(object.mask)) return say("nothing to accept: prompt or brush a mask first");
  const firstClick = object.prompts.find((p) => p.type === "point" && p.label === 1);
  try {
    const answer = await api("accept", {
      key: state.image.key,
      mask: object.mask.toDataURL("image/png"),
      clicks: object.clicks,
      strokes: object.strokes,
      seconds: (performance.now() - object.started) / 1000,
      point: firstClick ? [firstClick.x, firstClick.y] : null,
    });
    state.accepted.push({ id: answer.id, look: drawn(object.mask, COLOURS[answer.id % COLOURS.length]) });
    document.body.dataset.accepted = String(state.accepted.length);
    clearObject();
    say(`accepted mask ${answer.id}`);
  } catch (error) {
    say(error.message);
  }
}

async function undoAccept() {
  if (state.accepted.length === 0) return;
  try {
    await api("undo_accept", { key: state.image.key });
    state.accepted.pop();
    document.body.dataset.accepted = String(state.accepted.length);
    render();
  } catch (error) {
    say(error.message);
  }
}

function rejectUnderPointer() {
  if (!state.pointer) return;
  const hit = state.prefilled.find((p) => maskHas(p.mask, state.pointer.x, state.pointer.y));
  if (!hit) return say("no pre-filled mask under the pointer");
  hit.rejected = !hit.rejected;
  say(`pre-filled mask ${hit.id} ${hit.rejected ? "rejected" : "kept"}`);
  render();
}

// --- images -----------------------------------------------------------------------------------------------

async function nextImage() {
  if (state.current && !isEmpty(state.current.mask)) {
    return say("a mask is not accepted yet: Enter accepts it, Esc drops it");
  }
  try {
    if (state.image) {
      const rejected = state.prefilled.filter((p) => p.rejected).map((p) => p.id);
      const progress = await api("finish", { key: state.image.key, rejected });
      // The last image publishes the round and the server stops: no further request would be answered.
      if (progress.published) return finished(progress);
    }
    await load();
  } catch (error) {
    say(error.message);
  }
}

async function load() {
  setPhase("loading");
  const { image, progress } = await api("next", {});
  if (!image) return finished(progress);
  state.image = { key: image.key, width: image.width, height: image.height, stage: image.stage };
  state.image.bitmap = await imageBitmap(image.key);
  state.prefilled = await Promise.all(image.prefilled.map(async (p) => {
    const mask = maskCanvas(await pngBitmap(p.png));
    return { id: p.id, mask, look: drawn(mask, COLOURS[p.id % COLOURS.length]), rejected: false };
  }));
  state.accepted = await Promise.all(image.accepted.map(async (a) => (
    { id: a.id, look: drawn(maskCanvas(await pngBitmap(a.png)), COLOURS[a.id % COLOURS.length]) })));
  document.body.dataset.accepted = String(state.accepted.length);
  state.current = null;
  view.width = image.width;
  view.height = image.height;
  showProgress(progress, image.stage);
  render();
  renderCandidates();
  setPhase("ready");
}

function finished(progress) {
  state.image = null;
  showProgress(progress, null);
  say(progress.published ? "round finished: every image is annotated, thank you" :
    "no image left for you now: the others are being annotated");
  setPhase("finished");
}

function showProgress(progress, stage) {
  document.getElementById("round").textContent = `${stage ? `stage ${stage}: ` : ""}` +
    `${progress.finished} of ${progress.images} images finished, ${progress.held} in hand`;
}

// --- drawing ----------------------------------------------------------------------------------------------

function render() {
  if (!state.image) return;
  ctx.globalAlpha = 1;
  ctx.drawImage(state.image.bitmap, 0, 0);
  const line = lineWidth();
  for (const p of state.prefilled) { // pre-filled: outlined, lightly filled; rejected ones faint
    ctx.globalAlpha = p.rejected ? 0.1 : 0.25;
    ctx.drawImage(p.look.fill, 0, 0);
    ctx.globalAlpha = p.rejected ? 0.3 : 1;
    ctx.drawImage(p.look.edge, 0, 0);
  }
  for (const a of state.accepted) {
    ctx.globalAlpha = 0.5;
    ctx.drawImage(a.look.fill, 0, 0);
    ctx.globalAlpha = 1;
    ctx.drawImage(a.look.edge, 0, 0);
  }
  const object = state.current;
  if (object) {
    ctx.globalAlpha = 0.55;
    ctx.drawImage(tinted(object.mask, CURRENT), 0, 0);
    ctx.globalAlpha = 1;
    ctx.drawImage(outline(object.mask, "#ffffff", line), 0, 0);
    ctx.lineWidth = line;
    for (const p of object.prompts) {
      if (p.type === "box") {
        ctx.strokeStyle = "#fcc419";
        ctx.strokeRect(p.box[0], p.box[1], p.box[2] - p.box[0], p.box[3] - p.box[1]);
      } else {
        ctx.fillStyle = p.label === 1 ? "#40c057" : "#fa5252";
        ctx.beginPath();
        ctx.arc(p.x, p.y, 3 * line, 0, 2 * Math.PI);
        ctx.fill();
        ctx.strokeStyle = "#ffffff";
        ctx.stroke();
      }
    }
  }
  ctx.globalAlpha = 1;
  if (state.press && state.press.dragging && state.pointer) {
    ctx.strokeStyle = "#fcc419";
    ctx.setLineDash([4 * line, 3 * line]);
    ctx.lineWidth = line;
    ctx.strokeRect(state.press.x, state.press.y, state.pointer.x - state.press.x, state.pointer.y - state.press.y);
    ctx.setLineDash([]);
  }
  if (state.mode !== "prompt" && state.pointer) {
    ctx.strokeStyle = state.mode === "brush" ? "#ffffff" : "#fa5252";
    ctx.lineWidth = line;
    ctx.beginPath();
    ctx.arc(state.pointer.x, state.pointer.y, state.brushRadius, 0, 2 * Math.PI);
    ctx.stroke();
  }
}

function renderCandidates() {
  const box = document.getElementById("candidates");
  box.replaceChildren();
  const object = state.current;
  if (!object || object.candidates.length < 2) return;
  object.candidates.forEach((c, i) => {
    const button = document.createElement("button");
    button.textContent = `${i + 1}: ${c.score.toFixed(2)}`;
    button.classList.toggle("active", i === object.chosen);
    button.addEventListener("click", () => choose(i));
    box.append(button);
  });
}

function choose(index) {
  const object = state.current;
  if (!object || index >= object.candidates.length) return;
  showCandidate(object, index);
  render();
  renderCandidates();
}

function setMode(mode) {
  state.mode = mode;
  for (const button of document.querySelectorAll("#tools button")) {
    button.classList.toggle("active", button.dataset.action === mode);
  }
  render();
}

function setPhase(phase) {
  document.body.dataset.phase = phase;
}

function say(text) {
  document.getElementById("status").textContent = text;
}

// --- pointer and keys -------------------------------------------------------------------------------------

function imagePoint(event) {
  const rect = view.getBoundingClientRect();
  const x = ((event.clientX - rect.left) * view.width) / rect.width;
  const y = ((event.clientY - rect.top) * view.height) / rect.height;
  return { x: Math.max(0, Math.min(view.width, x)), y: Math.max(0, Math.min(view.height, y)) };
}

function paint(from, to) {
  const object = state.current;
  const c = object.mask.getContext("2d");
  c.globalCompositeOperation = state.mode === "brush" ? "source-over" : "destination-out";
  c.strokeStyle = "#ffffff";
  c.lineWidth = 2 * state.brushRadius;
  c.lineCap = "round";
  c.beginPath();
  c.moveTo(from.x, from.y);
  c.lineTo(to.x, to.y);
  c.stroke();
  c.globalCompositeOperation = "source-over";
}

view.addEventListener("contextmenu", (event) => event.preventDefault());

view.addEventListener("pointerdown", (event) => {
  if (!state.image || state.busy) return;
  const at = imagePoint(event);
  state.pointer = at;
  view.setPointerCapture(event.pointerId);
  if (state.mode === "prompt") {
    const label = event.button === 2 || event.shiftKey ? 0 : 1;
    state.press = { ...at, screenX: event.clientX, screenY: event.clientY, dragging: false, label };
    return;
  }
  const object = current();
  snapshot(object);
  object.strokes += 1;
  state.press = { ...at, painting: true };
  paint(at, at);
  render();
});

view.addEventListener("pointermove", (event) => {
  if (!state.image) return;
  const at = imagePoint(event);
  const press = state.press;
  if (press && press.painting) {
    paint(state.pointer, at);
  } else if (press && !press.dragging &&
             Math.hypot(event.clientX - press.screenX, event.clientY - press.screenY) > DRAG_PIXELS) {
    press.dragging = true;
  }
  state.pointer = at;
  render();
});

view.addEventListener("pointerup", (event) => {
  const press = state.press;
  state.press = null;
  if (!press || !state.image) return;
  const at = imagePoint(event);
  const clickedAt = performance.now();
  if (press.painting) return render();
  if (press.dragging) {
    const box = [Math.min(press.x, at.x), Math.min(press.y, at.y), Math.max(press.x, at.x), Math.max(press.y, at.y)];
    enqueue(() => addPrompt({ type: "box", box }, clickedAt));
  } else {
    enqueue(() => addPrompt({ type: "point", x: press.x, y: press.y, label: press.label }, clickedAt));
  }
});

const ACTIONS = {
  prompt: () => setMode("prompt"),
  brush: () => setMode("brush"),
  erase: () => setMode("erase"),
  accept,
  undo,
  clear: clearObject,
  "undo-accept": undoAccept,
  reject: rejectUnderPointer,
  "next-image": nextImage,
};

const KEYS = {
  p: "prompt", b: "brush", e: "erase", Enter: "accept", a: "accept", z: "undo", Escape: "clear", c: "clear",
  u: "undo-accept", r: "reject", " ": "next-image", ArrowRight: "next-image",
};

// Prompts and actions run one after the other, in the order given: Enter then Space while the server is
// still answering a click accepts that click's mask, then moves on.
let queue = Promise.resolve();
function enqueue(action) {
  queue = queue.then(() => state.image && action()).catch((error) => say(error.message));
}

document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLButtonElement && (event.key === "Enter" || event.key === " ")) {
    event.preventDefault(); // a focused button would take the key as its own click
  }
  if (!state.image) return;
  if (["1", "2", "3"].includes(event.key)) enqueue(() => choose(Number(event.key) - 1));
  else if (event.key === "[") state.brushRadius = Math.max(1, state.brushRadius / 1.5);
  else if (event.key === "]") state.brushRadius = Math.min(500, state.brushRadius * 1.5);
  else if (KEYS[event.key]) enqueue(ACTIONS[KEYS[event.key]]);
  else return;
  event.preventDefault();
  render();
});

for (const button of document.querySelectorAll("#tools button")) {
  button.addEventListener("click", () => enqueue(ACTIONS[button.dataset.action]));
}

setMode("prompt");
load().catch((error) => say(error.message));
