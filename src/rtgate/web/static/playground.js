// rtgate voice playground: mints a client secret with the gateway key (kept in this tab only),
// opens /v1/realtime from the browser with the "openai-insecure-api-key." subprotocol, streams
// the microphone as PCM16 24 kHz, plays the reply, and logs every client and server event.
"use strict";

const RATE = 24000;
const KEY_STORE = "rtgate.playground.key";
const LOG_CAP = 5000;
const AUDIO_EVENTS = new Set(["input_audio_buffer.append", "response.output_audio.delta"]);
const ADVICE = {
  invalid_api_key: "The gateway did not accept this key. Check it for typos, or ask the operator for a key (console: Keys, Create a key).",
  insufficient_quota: "This key's budget is spent. Ask the operator to raise it, or wait for the next UTC day or month.",
  session_expired: "The session reached its time limit. Connect again to start a new one.",
  rate_limit_exceeded: "Too many attempts from here or with this key: wait a moment, then try again.",
  model_not_allowed: "This key may not use that model: pick another one.",
  model_not_found: "The gateway does not serve that model: pick another one.",
  event_not_allowed: "This key may not set something the playground asks for (instructions, voice, turn detection): if it is the instructions, leave that box empty (the key's own are used); otherwise use a key that allows it.",
  upstream_unavailable: "The gateway could not reach the model's provider. Try again shortly.",
  server_shutting_down: "The gateway is restarting: connect again.",
  session_closed_by_operator: "An operator closed this session.",
  client_secret_revoked: "The client secret of this session was revoked: connect again.",
  store_unavailable: "The gateway's database is not answering: try again shortly.",
  microphone: "The browser gave no microphone: allow it for this page (the icon in the address bar), or type below.",
};

const $ = (id) => document.getElementById(id);
const pg = {
  ws: null, ctx: null, stream: null, node: null, key: "", model: "", mode: "vad",
  transcriptionModel: "", held: false,
  // Microphone samples sent so far, and when each chunk was sent: maps audio_end_ms to a time.
  samples: 0, sent: [], silenceMs: 500,
  endOfSpeech: null, current: null, turns: new Map(), lines: new Map(),
  play: { end: 0, sources: new Set(), itemId: null, responseId: null, itemStart: 0, scheduledMs: 0 },
  log: [],
};

// -- the page's state ---------------------------------------------------------------------------

function setStatus(text) { $("pg-status").textContent = text; }

function showError(err, fallback) {
  const box = $("pg-error");
  const code = err && err.code ? err.code : fallback;
  const advice = ADVICE[code] || "";
  const detail = err && err.message ? err.message : "";
  box.textContent = [advice, detail ? `(${code ? code + ": " : ""}${detail})` : ""].filter(Boolean).join(" ");
  box.dataset.code = code || "";
  box.hidden = false;
}

function clearError() { const b = $("pg-error"); b.hidden = true; b.textContent = ""; b.dataset.code = ""; }

function connected(on) {
  $("pg-connect").disabled = on;
  $("pg-disconnect").disabled = !on;
  $("pg-message").disabled = !on;
  $("pg-send").disabled = !on;
  $("pg-interrupt").disabled = !on;
  $("pg-ptt").disabled = !on || pg.mode !== "ptt";
}

// -- the event log ------------------------------------------------------------------------------

function shown(value) {
  // Audio payloads are long base64: the log shows their size, not their bytes.
  return JSON.stringify(value, (k, v) => (typeof v === "string" && v.length > 200 && (k === "audio" || k === "delta")
    ? `<${v.length} base64 characters>` : v), 2);
}

function logVisible(li) {
  const filter = $("pg-filter").value.trim();
  const type = li.dataset.type;
  if ($("pg-hide-audio").checked && AUDIO_EVENTS.has(type)) return false;
  return !filter || type.includes(filter);
}

function logEvent(side, event) {
  const li = document.createElement("li");
  li.className = side + (event.type === "error" ? " error" : "");
  li.dataset.type = event.type || "(no type)";
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  const t = new Date();
  summary.textContent = `${t.toLocaleTimeString()}.${String(t.getMilliseconds()).padStart(3, "0")} ${li.dataset.type}`;
  details.append(summary);
  details.addEventListener("toggle", () => {
    if (details.open && !details.querySelector("pre")) {
      const pre = document.createElement("pre");
      pre.textContent = shown(event);
      details.append(pre);
    }
  });
  li.append(details);
  li.hidden = !logVisible(li);
  const list = $("pg-events");
  list.append(li);
  pg.log.push(li);
  if (pg.log.length > LOG_CAP) pg.log.shift().remove();
  $("pg-log-count").textContent = String(pg.log.length);
  if (!li.hidden) li.scrollIntoView({ block: "nearest" });
}

function refilter() { for (const li of pg.log) li.hidden = !logVisible(li); }

function send(event) {
  if (!pg.ws || pg.ws.readyState !== WebSocket.OPEN) return;
  pg.ws.send(JSON.stringify(event));
  logEvent("client", event);
}

// -- the transcript and the turns -----------------------------------------------------------------

function line(id, role) {
  let li = pg.lines.get(id);
  if (!li) {
    li = document.createElement("li");
    li.className = role;
    li.dataset.item = id;
    $("pg-transcript").append(li);
    pg.lines.set(id, li);
  }
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function turnRow(ref, label) {
  let turn = pg.turns.get(ref);
  if (!turn) {
    const tr = document.createElement("tr");
    tr.dataset.ref = ref;
    const cells = ["ref", "latency", "tokens", "cost", "played"].map((name) => {
      const td = document.createElement("td");
      td.className = name === "ref" ? "" : "num";
      td.dataset.cell = name;
      td.textContent = name === "ref" ? label : "…";
      tr.append(td);
      return td;
    });
    $("pg-turns").tBodies[0].append(tr);
    turn = { tr, cells, playedMs: 0, firstAudio: null, done: false };
    pg.turns.set(ref, turn);
  }
  return turn;
}

function setCell(turn, name, text) { turn.tr.querySelector(`[data-cell="${name}"]`).textContent = text; }

function tokensText(usage) {
  if (!usage) return "—";
  const inT = usage.input_tokens ?? 0;
  const outT = usage.output_tokens ?? 0;
  return `${inT} / ${outT}`;
}

async function price(turn, event) {
  try {
    const r = await fetch("/ui/playground/cost", {
      method: "POST",
      headers: { Authorization: "Bearer " + pg.key, "Content-Type": "application/json" },
      body: JSON.stringify({ model: pg.model, event, transcription_model: pg.transcriptionModel }),
    });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : "HTTP " + r.status);
    setCell(turn, "cost", "$" + body.cost_usd);
    turn.tr.querySelector('[data-cell="cost"]').dataset.usd = body.cost_usd;
  } catch (err) {
    setCell(turn, "cost", "not priced: " + err.message);
  }
}

// -- audio ----------------------------------------------------------------------------------------

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function fromBase64(b64) {
  const text = atob(b64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return new Int16Array(bytes.buffer, 0, bytes.length >> 1);
}

function onMicrophone(buffer) {
  if (!pg.ws || pg.ws.readyState !== WebSocket.OPEN) return;
  if (pg.mode === "ptt" && !pg.held) return;
  send({ type: "input_audio_buffer.append", audio: toBase64(buffer) });
  pg.samples += buffer.byteLength / 2;
  pg.sent.push([pg.samples, performance.now()]);
  if (pg.sent.length > 20000) pg.sent.splice(0, 10000);
}

/** When the microphone captured sample ``index`` of the session's input (sent in real time). */
function timeOfSample(index) {
  for (const [end, at] of pg.sent) {
    if (end >= index) return at - ((end - index) / RATE) * 1000;
  }
  return performance.now();
}

function playDelta(event) {
  const pcm = fromBase64(event.delta);
  if (!pcm.length) return;
  const ctx = pg.ctx;
  const data = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) data[i] = pcm[i] / 32768;
  const buffer = ctx.createBuffer(1, data.length, RATE);
  buffer.copyToChannel(data, 0);
  const src = ctx.createBufferSource();
  src.buffer = buffer;
  src.connect(ctx.destination);
  const at = Math.max(ctx.currentTime + 0.03, pg.play.end);
  if (pg.play.itemId !== event.item_id) {
    pg.play.itemId = event.item_id;
    pg.play.itemStart = at;
    pg.play.scheduledMs = 0;
  }
  pg.play.responseId = event.response_id;
  pg.play.scheduledMs += buffer.duration * 1000;
  src.start(at);
  pg.play.end = at + buffer.duration;
  pg.play.sources.add(src);
  const turn = turnRow(event.response_id, event.response_id);
  src.onended = () => {
    if (!pg.play.sources.delete(src)) return; // stopped by an interruption
    turn.playedMs += buffer.duration * 1000;
    setCell(turn, "played", (turn.playedMs / 1000).toFixed(1) + " s");
    turn.tr.querySelector('[data-cell="played"]').dataset.ms = String(Math.round(turn.playedMs));
  };
}

/** Stop the reply's audio; tell the server how much of it was heard (conversation.item.truncate). */
function stopPlayback() {
  if (!pg.play.sources.size) return;
  const heard = Math.max(0, Math.min(pg.play.scheduledMs, (pg.ctx.currentTime - pg.play.itemStart) * 1000));
  for (const src of pg.play.sources) { pg.play.sources.delete(src); src.stop(); }
  pg.play.end = 0;
  if (pg.play.itemId) {
    send({ type: "conversation.item.truncate", item_id: pg.play.itemId, content_index: 0, audio_end_ms: Math.floor(heard) });
  }
}

function interrupt() {
  if (pg.current && !pg.turns.get(pg.current)?.done) send({ type: "response.cancel" });
  stopPlayback();
}

async function startMicrophone() {
  pg.ctx = new AudioContext({ sampleRate: RATE });
  await pg.ctx.audioWorklet.addModule("/ui/static/capture-worklet.js");
  try {
    pg.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
  } catch (err) {
    showError({ code: "microphone", message: err.message }, "microphone");
    return false;
  }
  const source = pg.ctx.createMediaStreamSource(pg.stream);
  pg.node = new AudioWorkletNode(pg.ctx, "pcm16-capture");
  pg.node.port.onmessage = (e) => onMicrophone(e.data);
  const mute = pg.ctx.createGain();
  mute.gain.value = 0;
  source.connect(pg.node).connect(mute).connect(pg.ctx.destination);
  $("pg-mic").textContent = pg.mode === "ptt" ? "microphone on: hold to talk" : "microphone on: just talk";
  return true;
}

// -- the session ------------------------------------------------------------------------------------

function onServerEvent(event) {
  logEvent("server", event);
  switch (event.type) {
    case "session.created":
    case "session.updated": {
      const td = event.session && event.session.audio && event.session.audio.input
        ? event.session.audio.input.turn_detection : null;
      if (td && td.silence_duration_ms != null) pg.silenceMs = td.silence_duration_ms;
      if (event.type === "session.created") setStatus("Connected: " + (pg.mode === "ptt" ? "hold the button to talk." : "talk, or type below."));
      break;
    }
    case "input_audio_buffer.speech_started":
      stopPlayback();
      line(event.item_id, "user").textContent = "…";
      break;
    case "input_audio_buffer.speech_stopped":
      // audio_end_ms includes the silence that ended the turn: speech ended that much earlier.
      pg.endOfSpeech = timeOfSample(((event.audio_end_ms - pg.silenceMs) * RATE) / 1000);
      break;
    case "conversation.item.input_audio_transcription.delta": {
      const li = line(event.item_id, "user");
      li.textContent = (li.textContent === "…" ? "" : li.textContent) + event.delta;
      break;
    }
    case "conversation.item.input_audio_transcription.completed": {
      line(event.item_id, "user").textContent = event.transcript;
      const turn = turnRow(event.item_id, "transcription " + event.item_id);
      setCell(turn, "latency", "—");
      setCell(turn, "played", "—");
      setCell(turn, "tokens", tokensText(event.usage));
      turn.done = true;
      price(turn, event);
      break;
    }
    case "response.created": {
      const turn = turnRow(event.response.id, event.response.id);
      turn.endOfSpeech = pg.endOfSpeech;
      pg.endOfSpeech = null;
      pg.current = event.response.id;
      break;
    }
    case "response.output_audio.delta": {
      const turn = turnRow(event.response_id, event.response_id);
      if (turn.firstAudio === null) {
        turn.firstAudio = performance.now();
        const ms = turn.endOfSpeech != null ? turn.firstAudio - turn.endOfSpeech : null;
        setCell(turn, "latency", ms === null ? "—" : (ms / 1000).toFixed(2) + " s");
        if (ms !== null) turn.tr.querySelector('[data-cell="latency"]').dataset.ms = String(Math.round(ms));
      }
      playDelta(event);
      break;
    }
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta": {
      const li = line(event.item_id, "assistant");
      li.textContent += event.delta;
      break;
    }
    case "response.output_audio_transcript.done":
    case "response.output_text.done":
      line(event.item_id, "assistant").textContent = event.transcript ?? event.text;
      break;
    case "response.done": {
      const r = event.response;
      const turn = turnRow(r.id, r.id);
      turn.done = true;
      setCell(turn, "tokens", tokensText(r.usage));
      if (turn.firstAudio === null) setCell(turn, "latency", r.status === "completed" ? "no audio" : r.status);
      if (!turn.playedMs) setCell(turn, "played", turn.firstAudio === null ? "—" : "playing");
      if (r.usage) price(turn, event);
      else setCell(turn, "cost", "—");
      break;
    }
    case "error":
      showError(event.error, "error");
      break;
    default:
      break;
  }
}

function stopAll() {
  if (pg.stream) for (const t of pg.stream.getTracks()) t.stop();
  if (pg.ctx) pg.ctx.close();
  pg.stream = pg.ctx = pg.node = null;
  pg.play.sources.clear();
  $("pg-mic").textContent = "microphone off";
  connected(false);
}

async function connect(e) {
  e.preventDefault();
  clearError();
  pg.key = $("pg-key").value.trim();
  sessionStorage.setItem(KEY_STORE, pg.key);
  pg.model = $("pg-model").value;
  pg.mode = document.querySelector('input[name="pg-mode"]:checked').value;
  pg.transcriptionModel = $("pg-setup").dataset.transcriptionModel;
  const instructions = $("pg-instructions").value.trim();
  const session = {
    type: "realtime",
    model: pg.model,
    // Left out when empty: a key that blocks instructions still connects (its own apply).
    ...(instructions ? { instructions } : {}),
    audio: {
      input: {
        transcription: { model: pg.transcriptionModel },
        turn_detection: pg.mode === "vad" ? { type: "server_vad" } : null,
      },
      output: { voice: $("pg-voice").value },
    },
  };
  $("pg-connect").disabled = true;
  setStatus("Minting a client secret…");
  let secret;
  try {
    const r = await fetch("/v1/realtime/client_secrets", {
      method: "POST",
      headers: { Authorization: "Bearer " + pg.key, "Content-Type": "application/json" },
      body: JSON.stringify({ session }),
    });
    const body = await r.json();
    if (!r.ok) {
      showError(body.error, "mint");
      setStatus("Not connected.");
      $("pg-connect").disabled = false;
      return;
    }
    secret = body.value;
  } catch (err) {
    showError({ message: "The gateway did not answer: " + err.message }, "network");
    $("pg-connect").disabled = false;
    return;
  }
  if (!(await startMicrophone())) {
    // No microphone: the session still opens for typing.
    pg.ctx = pg.ctx || new AudioContext({ sampleRate: RATE });
  }
  pg.samples = 0;
  pg.sent = [];
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${scheme}//${location.host}/v1/realtime?model=${encodeURIComponent(pg.model)}`;
  setStatus("Opening the session…");
  const ws = new WebSocket(url, ["realtime", "openai-insecure-api-key." + secret]);
  pg.ws = ws;
  ws.onopen = () => connected(true);
  ws.onmessage = (m) => { try { onServerEvent(JSON.parse(m.data)); } catch (err) { console.error(err); } };
  ws.onclose = (c) => {
    if (pg.ws === ws) pg.ws = null;
    setStatus(`Disconnected (${c.code}${c.reason ? " " + c.reason : ""}).`);
    stopAll();
  };
}

function pttDown() {
  if (pg.held || !pg.ws) return;
  interrupt();
  pg.held = true;
  $("pg-ptt").classList.add("held");
  send({ type: "input_audio_buffer.clear" });
}

function pttUp() {
  if (!pg.held) return;
  pg.held = false;
  $("pg-ptt").classList.remove("held");
  pg.endOfSpeech = performance.now();
  send({ type: "input_audio_buffer.commit" });
  send({ type: "response.create" });
}

document.addEventListener("DOMContentLoaded", () => {
  $("pg-key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("pg-setup").addEventListener("submit", connect);
  $("pg-disconnect").addEventListener("click", () => { if (pg.ws) pg.ws.close(1000); });
  $("pg-interrupt").addEventListener("click", interrupt);
  const ptt = $("pg-ptt");
  ptt.addEventListener("pointerdown", pttDown);
  ptt.addEventListener("pointerup", pttUp);
  ptt.addEventListener("pointerleave", pttUp);
  ptt.addEventListener("keydown", (e) => { if ((e.key === " " || e.key === "Enter") && !e.repeat) { e.preventDefault(); pttDown(); } });
  ptt.addEventListener("keyup", (e) => { if (e.key === " " || e.key === "Enter") { e.preventDefault(); pttUp(); } });
  $("pg-text").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("pg-message").value.trim();
    if (!text) return;
    interrupt();
    const id = "local_" + Date.now();
    line(id, "user").textContent = text;
    send({ type: "conversation.item.create", item: { type: "message", role: "user", content: [{ type: "input_text", text }] } });
    send({ type: "response.create" });
    $("pg-message").value = "";
  });
  $("pg-filter").addEventListener("input", refilter);
  $("pg-hide-audio").addEventListener("change", refilter);
});
