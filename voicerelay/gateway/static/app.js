// voicerelay demo page: microphone -> audio_data (PCM16, 24 kHz, every 50 ms), audio_delta ->
// gapless playback in an AudioWorklet, which says what it really played: sent as
// playback_position {item_id, played_ms} a few times a second and at once on interruption.
// Transcripts and state; playback stopped on interruption.
// window.voicerelay exposes counters that tests read.
"use strict";

const RATE = 24000;
const CHUNK_SAMPLES = RATE / 20; // 50 ms per audio_data event
const vr = (window.voicerelay = {
  chunksSent: 0, deltasPlayed: 0, deltasReceived: 0, userTranscript: "", assistantTranscript: "",
  state: "idle", errors: [], sessionStarted: false, interruptions: 0, positionsSent: [],
});

const $ = (id) => document.getElementById(id);
let socket = null, ctx = null, stream = null, node = null, source = null, player = null;
let pending = new Float32Array(0);

const MISSING_CLIENT = "The Socket.IO client is missing, so Start cannot work: run `npm install` in the voicerelay " +
  "checkout (or set VOICERELAY_NODE_MODULES for the server), then reload this page. No restart is needed.";

function showNotice(text) { $("notice").textContent = text; $("notice").hidden = false; }
function counters() {
  $("counters").textContent = `chunks sent ${vr.chunksSent} · deltas played ${vr.deltasPlayed} · errors ${vr.errors.length}`;
}
function setState(state) { vr.state = state; $("state").textContent = state.replace("_", " "); $("state").dataset.state = state; }
function addLine(role, text) {
  const p = document.createElement("p");
  p.className = `line ${role}`;
  p.innerHTML = `<b>${role}</b> `;
  p.appendChild(document.createTextNode(text));
  $("log").appendChild(p);
}

function toBase64(int16) {
  const bytes = new Uint8Array(int16.buffer, int16.byteOffset, int16.byteLength);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}
function fromBase64(b64) {
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new Int16Array(bytes.buffer);
}

function capture(block) {
  const joined = new Float32Array(pending.length + block.length);
  joined.set(pending); joined.set(block, pending.length);
  pending = joined;
  while (pending.length >= CHUNK_SAMPLES && socket && vr.sessionStarted) {
    const chunk = pending.subarray(0, CHUNK_SAMPLES);
    const pcm = new Int16Array(CHUNK_SAMPLES);
    for (let i = 0; i < CHUNK_SAMPLES; i++) pcm[i] = Math.max(-1, Math.min(1, chunk[i])) * 0x7fff;
    socket.emit("audio_data", { audio: toBase64(pcm) });
    vr.chunksSent++;
    pending = pending.slice(CHUNK_SAMPLES);
  }
  if (!vr.sessionStarted) pending = new Float32Array(0);
  counters();
if (typeof io === "undefined") showNotice(MISSING_CLIENT); // say so at load, not only after Start
}

function play(d) {
  const pcm = fromBase64(d.audio);
  const samples = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 0x8000;
  player.port.postMessage({ type: "play", itemId: d.item_id || "", samples }, [samples.buffer]);
}

function played(m) { // from the player worklet
  if (m.type === "chunk_played") { vr.deltasPlayed++; counters(); return; }
  if (!socket || !vr.sessionStarted || !m.itemId) return;
  const position = { item_id: m.itemId, played_ms: Math.round(m.playedMs) };
  socket.emit("playback_position", position);
  vr.positionsSent.push({ ...position, why: m.why });
}

function stopPlayback() {
  if (player) player.port.postMessage({ type: "stop" });
}

async function start() {
  if (typeof io === "undefined") {
    showNotice(MISSING_CLIENT);
    return;
  }
  $("start").disabled = true;
  ctx = new AudioContext({ sampleRate: RATE });
  stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false } });
  await ctx.audioWorklet.addModule("/static/worklet.js");
  source = ctx.createMediaStreamSource(stream);
  node = new AudioWorkletNode(ctx, "pcm-capture");
  node.port.onmessage = (e) => capture(e.data);
  source.connect(node);
  player = new AudioWorkletNode(ctx, "pcm-player", { numberOfInputs: 0, outputChannelCount: [1] });
  player.port.onmessage = (e) => played(e.data);
  player.connect(ctx.destination);
  const token = new URLSearchParams(location.search).get("token");
  socket = io({ transports: ["websocket"], auth: token ? { token } : {} });
  socket.on("connect", () => socket.emit("start_session", { chat_payload: { contextId: crypto.randomUUID(), metadata: { message_log: [] } } }));
  socket.on("connect_error", (err) => { showNotice(`cannot connect: ${err.message}`); vr.errors.push(err.message); });
  socket.on("session_started", () => { vr.sessionStarted = true; setState("listening"); $("stop").disabled = false; });
  socket.on("audio_delta", (d) => { vr.deltasReceived++; play(d); });
  socket.on("user_transcript", (d) => {
    if (d.final) { vr.userTranscript = d.text; $("partial").textContent = ""; if (d.text) addLine("user", d.text); }
    else $("partial").textContent += d.text;
  });
  socket.on("ai_response", (d) => { vr.assistantTranscript = d.response; addLine("assistant", d.response); });
  socket.on("ai_state", (d) => setState(d.state));
  socket.on("interrupted", () => { vr.interruptions++; stopPlayback(); });
  socket.on("error", (d) => { vr.errors.push(d.code); const p = document.createElement("p"); p.className = "error"; p.textContent = `${d.code}: ${d.message}`; $("log").appendChild(p); counters(); });
  socket.on("session_ended", (d, ack) => { vr.sessionStarted = false; setState("ended"); finish(); if (ack) ack(); });
}

function finish() {
  stopPlayback();
  if (node) node.disconnect();
  if (player) player.disconnect();
  if (source) source.disconnect();
  if (stream) stream.getTracks().forEach((t) => t.stop());
  $("start").disabled = false; $("stop").disabled = true;
}

$("start").addEventListener("click", () => start().catch((e) => { showNotice(String(e)); vr.errors.push(String(e)); $("start").disabled = false; }));
$("stop").addEventListener("click", () => { if (socket) { socket.emit("end_session"); } vr.sessionStarted = false; finish(); });
counters();
if (typeof io === "undefined") showNotice(MISSING_CLIENT); // say so at load, not only after Start
