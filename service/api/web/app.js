// The demo page. One request per run, POST v1/segment?output=json&include_mask=true (with several
// models, v1/models/{name}/segment of the one picked): the label
// map comes back as a PNG of class ids, coloured here with the model's palette, so moving the
// opacity slider needs no new request. No framework and no build step: this file is served as is.
"use strict";

const TOKEN_KEY = "pspnet-token"; // sessionStorage only: gone when the tab closes
const $ = (id) => document.getElementById(id);
const state = { models: [], model: null, file: null, input: null, mask: null, inputUrl: null, runs: 0 };

// ---- talking to the server ------------------------------------------------------------------

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// The problem+json detail of a failed response, and when to retry for a 503.
async function problemMessage(response) {
  let detail = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.detail) detail = body.detail;
  } catch (_) {
    // not JSON: keep the status text
  }
  let text = `Error ${response.status}: ${detail}`;
  const wait = Number(response.headers.get("retry-after"));
  if (response.status === 503 && wait > 0) {
    const at = new Date(Date.now() + wait * 1000).toLocaleTimeString();
    text += ` Retry in ${wait} s (at ${at}).`;
  }
  return text;
}

async function loadModels() {
  let response;
  try {
    response = await fetch("v1/models", { headers: authHeaders() });
  } catch (err) {
    showError(`The server cannot be reached: ${err.message}`);
    return;
  }
  if (response.status === 401) {
    $("auth").hidden = false;
    $("model-line").textContent = "This server needs a token.";
    showError(await problemMessage(response));
    return;
  }
  if (!response.ok) {
    showError(await problemMessage(response));
    const wait = Number(response.headers.get("retry-after"));
    if (response.status === 503 && wait > 0) setTimeout(loadModels, wait * 1000); // still loading
    return;
  }
  const listing = await response.json();
  state.models = listing.models;
  clearError();
  const picker = $("model");
  picker.replaceChildren(...state.models.map((m, i) => new Option(`${m.name} (${m.dataset})`, String(i))));
  $("model-picker").hidden = state.models.length < 2;
  const first = Math.max(0, state.models.findIndex((m) => m.name === listing.default));
  picker.value = String(first);
  chooseModel(first);
}

async function run() {
  if (!state.model) {
    showError("The model list has not loaded yet.");
    return;
  }
  if (!state.file) {
    showError("Choose an image first.");
    return;
  }
  const mode = $("mode").value;
  const params = new URLSearchParams({ output: "json", include_mask: "true", mode, flip: String($("flip").checked) });
  const scales = $("scales").value.trim();
  if (scales && mode !== "whole") params.set("scales", scales);
  const ticket = ++state.runs; // a newer run wins if two overlap
  const file = state.file;
  clearError();
  setBusy(true, "Segmenting\u2026");
  const t0 = performance.now();
  try {
    // one model: the plain route; several: the picked one's (the server has no default to guess)
    const route = state.models.length > 1 ? `v1/models/${encodeURIComponent(state.model.name)}/segment` : "v1/segment";
    const response = await fetch(`${route}?${params}`, {
      method: "POST",
      body: file,
      headers: { "Content-Type": file.type || "application/octet-stream", ...authHeaders() },
    });
    if (!response.ok) {
      if (response.status === 401) $("auth").hidden = false;
      if (ticket === state.runs) {
        clearResult(); // no old mask beside the input that just failed
        showError(await problemMessage(response));
      }
      return;
    }
    const doc = await response.json();
    const roundTrip = performance.now() - t0;
    const model = state.models.find((m) => m.name === doc.model) || state.model;
    const labels = await decodeLabelPng(base64Bytes(doc.mask));
    const mask = colourMask(labels, model);
    const input = await createImageBitmap(file).catch(() => null); // e.g. TIFF: the browser cannot draw it
    if (ticket !== state.runs) return;
    state.mask = mask;
    state.input = input;
    paint();
    showLegend(doc.classes);
    showTimings(response.headers, roundTrip);
    $("result").hidden = false;
    $("status").textContent = `${doc.width}\u00d7${doc.height} px, ${doc.classes.length} classes present.`;
  } catch (err) {
    if (ticket === state.runs) {
      clearResult();
      showError(`The request failed: ${err.message}`);
    }
  } finally {
    if (ticket === state.runs) setBusy(false);
  }
}

// ---- the label map ----------------------------------------------------------------------------

function base64Bytes(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function paeth(a, b, c) {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  if (pa <= pb && pa <= pc) return a;
  return pb <= pc ? b : c;
}

// The service's label PNG: grey, 8-bit (16-bit beyond 256 classes), not interlaced. Decoded
// here rather than by an <img>, which would give 16-bit ids as 8 bits and may colour-manage.
async function decodeLabelPng(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const signature = [137, 80, 78, 71, 13, 10, 26, 10];
  if (signature.some((b, i) => bytes[i] !== b)) throw new Error("the mask is not a PNG");
  let header = null;
  const chunks = [];
  for (let pos = 8; pos + 8 <= bytes.length;) {
    const length = view.getUint32(pos);
    const type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    const data = bytes.subarray(pos + 8, pos + 8 + length);
    if (type === "IHDR") {
      header = { width: view.getUint32(pos + 8), height: view.getUint32(pos + 12), depth: data[8],
        colour: data[9], interlace: data[12] };
    } else if (type === "IDAT") {
      chunks.push(data);
    } else if (type === "IEND") {
      break;
    }
    pos += 12 + length;
  }
  if (!header || header.colour !== 0 || header.interlace !== 0 || ![8, 16].includes(header.depth)) {
    throw new Error("the mask is not a grey 8- or 16-bit PNG");
  }
  const { width, height, depth } = header;
  const inflated = new Blob(chunks).stream().pipeThrough(new DecompressionStream("deflate"));
  const raw = new Uint8Array(await new Response(inflated).arrayBuffer());
  const bpp = depth / 8;
  const stride = width * bpp;
  const ids = depth === 8 ? new Uint8Array(width * height) : new Uint16Array(width * height);
  let prev = new Uint8Array(stride);
  let line = new Uint8Array(stride);
  for (let y = 0; y < height; y++) {
    const start = y * (stride + 1);
    const filter = raw[start];
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? line[x - bpp] : 0;
      const b = prev[x];
      const c = x >= bpp ? prev[x - bpp] : 0;
      let v = raw[start + 1 + x];
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) v += paeth(a, b, c);
      else if (filter !== 0) throw new Error(`bad PNG filter ${filter}`);
      line[x] = v & 255;
    }
    for (let x = 0; x < width; x++) {
      ids[y * width + x] = depth === 8 ? line[x] : (line[2 * x] << 8) | line[2 * x + 1];
    }
    [prev, line] = [line, prev];
  }
  return { width, height, ids };
}

function colourMask(labels, model) {
  const canvas = document.createElement("canvas");
  canvas.width = labels.width;
  canvas.height = labels.height;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(labels.width, labels.height);
  const px = image.data;
  const palette = model.classes.map((c) => c.color);
  for (let i = 0; i < labels.ids.length; i++) {
    const [r, g, b] = palette[labels.ids[i]] || [0, 0, 0];
    px[4 * i] = r;
    px[4 * i + 1] = g;
    px[4 * i + 2] = b;
    px[4 * i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}

// The input under the mask at the slider's opacity; the mask alone when the input cannot be drawn.
function paint() {
  if (!state.mask) return;
  const canvas = $("output-view");
  const { width, height } = state.mask;
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.globalAlpha = 1;
  ctx.clearRect(0, 0, width, height);
  if (state.input) ctx.drawImage(state.input, 0, 0, width, height);
  ctx.globalAlpha = state.input ? Number($("opacity").value) / 100 : 1;
  ctx.drawImage(state.mask, 0, 0);
  ctx.globalAlpha = 1;
}

// ---- the rest of the page ---------------------------------------------------------------------

function showLegend(classes) {
  const rows = [...classes].sort((a, b) => b.fraction - a.fraction).map((c) => {
    const tr = document.createElement("tr");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.backgroundColor = `rgb(${c.color.join(",")})`; // CSSOM: allowed by the CSP
    swatch.setAttribute("role", "img");
    swatch.setAttribute("aria-label", `rgb(${c.color.join(", ")})`);
    const share = c.fraction * 100;
    const cells = [swatch, c.name, share < 0.1 ? "< 0.1 %" : `${share.toFixed(1)} %`];
    for (const content of cells) {
      const td = document.createElement("td");
      td.append(content);
      tr.append(td);
    }
    return tr;
  });
  $("legend").tBodies[0].replaceChildren(...rows);
}

// Server-Timing: "decode;dur=1.2, plan;dur=0.3, ...", one row per stage, then the round trip.
function showTimings(headers, roundTrip) {
  const rows = [];
  for (const part of (headers.get("server-timing") || "").split(",")) {
    const [name, ...params] = part.trim().split(";");
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    if (name && dur) rows.push([name, Number(dur.slice(4))]);
  }
  rows.push(["round trip", roundTrip]);
  const tiles = headers.get("x-pspnet-tiles");
  $("timings").tBodies[0].replaceChildren(...rows.map(([name, ms]) => {
    const tr = document.createElement("tr");
    for (const text of [name, ms.toFixed(1)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
  const plural = tiles === "1" ? "tile" : "tiles";
  $("timings").caption.textContent = tiles ? `Timings (${tiles} ${plural})` : "Timings";
}

function chooseModel(index) {
  const m = state.models[index];
  state.model = m;
  $("model-line").textContent = `${m.name}: ${m.dataset}, ${m.classes.length} classes, `
    + `tile ${m.tile.join("\u00d7")}, ${m.provider}`;
  $("mode").replaceChildren(...m.modes.map((mode) => {
    const label = mode === m.protocol.mode ? `${mode} (default)` : mode;
    return new Option(label, mode, false, mode === m.protocol.mode);
  }));
  $("flip").checked = m.protocol.flip;
  updateScales();
}

function updateScales() {
  const input = $("scales");
  const mode = $("mode").value;
  const p = state.model ? state.model.protocol : null;
  input.disabled = mode === "whole"; // the server refuses scales with whole: one tile, no scales
  if (mode === "whole") input.placeholder = "not used with whole";
  else if (mode === "slide") input.placeholder = p && p.mode === "slide" ? `default ${p.scales.join(",")}` : "default 1";
  else input.placeholder = "default: the paper's six scales";
}

function chooseFile(file) {
  if (!file) return;
  state.file = file;
  if (state.inputUrl) URL.revokeObjectURL(state.inputUrl);
  state.inputUrl = URL.createObjectURL(file);
  $("input-view").src = state.inputUrl;
  run();
}

function setBusy(busy, text) {
  $("run").disabled = busy;
  $("run-form").setAttribute("aria-busy", String(busy));
  if (text !== undefined) $("status").textContent = text;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = false;
  $("status").textContent = "";
}

// A failed run leaves no result of an earlier one on the page: mask, legend, timings, the section.
function clearResult() {
  state.mask = null;
  state.input = null;
  const canvas = $("output-view");
  canvas.width = 0;
  canvas.height = 0;
  $("legend").tBodies[0].replaceChildren();
  $("timings").tBodies[0].replaceChildren();
  $("timings").caption.textContent = "Timings";
  $("result").hidden = true;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function useToken() {
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  $("token").value = "";
  loadModels();
}

function wire() {
  $("run-form").addEventListener("submit", (e) => {
    e.preventDefault();
    run();
  });
  $("file").addEventListener("change", () => chooseFile($("file").files[0]));
  $("model").addEventListener("change", () => chooseModel(Number($("model").value)));
  $("mode").addEventListener("change", updateScales);
  $("opacity").addEventListener("input", () => {
    $("opacity-value").textContent = `${$("opacity").value} %`;
    paint();
  });
  $("auth").addEventListener("submit", (e) => {
    e.preventDefault();
    useToken();
  });
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    chooseFile(e.dataTransfer.files[0]);
  });
  // a file dropped beside the zone must not replace the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
}

wire();
loadModels();
