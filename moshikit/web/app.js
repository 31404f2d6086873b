// moshikit's web page for a Moshi chat server (moshikit serve, python -m moshi.server).
// Protocol: WebSocket /api/chat; binary messages, first byte the kind: 0 handshake, 1 Ogg Opus
// audio (24 kHz mono, both ways), 2 text piece, 5 error; close 1013 = busy, 1008 = refused.
// Agent mode (serve --agent, told by /api/info): the text pieces are the LLM's; with ?events=1 the
// server also sends metadata (kind 4, JSON): {"user": piece}, {"turn": {...latency}}, {"error": line}.
import { OggReader, OggWriter } from "./ogg.js";

const RATE = 24000; // the protocol's sample rate
const FRAME = 1920; // one 80 ms step; the server answers frame i with frame i (none for frame 0)
const CHUNK_MS = 20;
// The server answers every frame it receives; when its answers fall this far behind what was
// sent (a server slower than real time), the microphone is dropped until it catches up, so the
// delay stays bounded instead of growing in the socket's buffers.
const MAX_BEHIND_SECONDS = 2.0;
const SAMPLING = ["text_temperature", "text_topk", "audio_temperature", "audio_topk"];
const query = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

let call = null; // the current connection, see connect()
// The worklets' code, fetched once: a later call (say, after the server went away) needs no fetch.
const workletCode = fetch(new URL("worklet.js", import.meta.url)).then((r) => {
  if (!r.ok) throw new Error(`worklet.js: HTTP ${r.status}`);
  return r.text();
});
workletCode.catch(() => {});
const record = { user: [], moshi: [], userLen: 0, moshiLen: 0, text: [] }; // for the downloads
// What tests and curious users can read: window.moshi.stats.
const stats = { sent: 0, received: 0, texts: 0, played: 0, underruns: 0, dropped: 0, buffered: 0, delays: [], peakOut: 0, micDropped: 0 };
window.moshi = { stats, record };

// The agent (serve --agent) when /api/info says so; null for Moshi.
let agent = null;
const infoReady = fetch(new URL("api/info" + (query.get("token") ? `?token=${encodeURIComponent(query.get("token"))}` : ""),
                                new URL("/", location.href)))
  .then((r) => (r.ok ? r.json() : null))
  .then((info) => {
    const chat = info && (info.services || []).find((s) => s.kind === "chat" && s.mode === "agent");
    if (chat) agentMode(chat);
  })
  .catch(() => {});

function agentMode(chat) {
  agent = chat;
  window.moshi.agent = chat;
  document.title = "moshikit agent";
  document.body.dataset.mode = "agent";
  document.querySelector("h1").textContent = "Agent";
  $("status").textContent = `Ready. Connect, then talk with ${chat.llm}.`;
  $("meter-out").closest("label").firstChild.textContent = "Agent ";
  $("latency").closest("span").firstChild.textContent = "Last turn ";
  document.querySelector(".transcript-box h2").textContent = "Conversation";
  document.querySelector(".settings").hidden = true;
  const about = $("agent-info");
  about.textContent = `LLM ${chat.llm} · STT ${chat.stt} · TTS ${chat.tts}`;
  about.hidden = false;
}

// One line of the conversation per speaker turn: the user's words (the STT's) and the agent's (the LLM's).
function say(who, piece) {
  const t = $("transcript");
  let line = t.lastElementChild;
  if (!line || line.dataset.who !== who) {
    line = document.createElement("p");
    line.dataset.who = who;
    line.className = who;
    const label = document.createElement("b");
    label.textContent = who === "you" ? "You: " : who === "agent" ? "Agent: " : "";
    line.append(label);
    t.append(line);
  }
  line.append(piece);
  t.scrollTop = t.scrollHeight;
}

function onEvent(c, ev) {
  if (typeof ev.user === "string") say("you", ev.user);
  else if (ev.turn) {
    const lat = ev.turn.latency || {};
    stats.turns = (stats.turns || 0) + 1;
    if (typeof lat.end_of_speech_to_first_audio === "number") stats.turnLatency = lat.end_of_speech_to_first_audio;
    if (ev.turn.status === "interrupted") say("note", " (interrupted)");
  } else if (typeof ev.error === "string") say("note", `LLM: ${ev.error} (the next turn tries again)`);
}

function setState(state, status, message) {
  document.body.dataset.state = state;
  if (status !== undefined) $("status").textContent = status;
  const m = $("message");
  m.hidden = !message;
  m.textContent = message || "";
  const busy = state === "connecting" || state === "live";
  $("connect").textContent = busy ? "Disconnect" : "Connect";
  $("mute").disabled = state !== "live";
  const saved = record.userLen > 0 || record.moshiLen > 0;
  $("save-audio").disabled = !saved;
  $("save-text").disabled = record.text.length === 0;
}

function level(rms) { return Math.max(0, Math.min(1, (20 * Math.log10(rms + 1e-9) + 60) / 60)); }

function meter(id, rms) { $(id).style.width = `${Math.round(level(rms) * 100)}%`; }

function resample(x, from, to) {
  if (from === to) return x;
  const n = Math.round(x.length * to / from);
  const y = new Float32Array(n);
  const step = from / to;
  for (let i = 0; i < n; i++) {
    const t = i * step, k = Math.floor(t), f = t - k;
    const a = x[Math.min(k, x.length - 1)], b = x[Math.min(k + 1, x.length - 1)];
    y[i] = a + (b - a) * f;
  }
  return y;
}

function rmsOf(x) {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return x.length ? Math.sqrt(s / x.length) : 0;
}

function chatUrl() {
  const url = new URL("api/chat", new URL("/", location.href));
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const token = query.get("token");
  if (token) url.searchParams.set("token", token);
  if (agent) url.searchParams.set("events", "1");
  for (const k of SAMPLING) {
    if (agent) break;
    const v = ($(k).value || "").trim();
    if (v !== "") url.searchParams.set(k, v);
  }
  return url.toString();
}

function micMessage(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
    return "Microphone permission denied: allow the microphone for this page (the icon in the address bar), then connect again.";
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") return "No microphone found on this device.";
  if (name === "NotReadableError") return "The microphone is in use by another application.";
  return `Cannot open the microphone (${name || err}).`;
}

async function connect() {
  if (call) return;
  if (!("AudioEncoder" in window) || !("AudioDecoder" in window) || !("AudioData" in window)) {
    setState("error", "Unsupported browser.", "This browser lacks WebCodecs audio (AudioEncoder/AudioDecoder), which this page needs for Opus: use a recent Chrome, Edge, Firefox or Safari.");
    return;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setState("error", "No microphone access.", window.isSecureContext
      ? "This browser gives no access to the microphone."
      : "Browsers give the microphone only to https pages or localhost: start the server with --ssl and open its https address.");
    return;
  }
  const c = { ws: null, ctx: null, mic: null, encoder: null, decoder: null, writer: new OggWriter(), reader: new OggReader(),
              opened: false, live: false, byUser: false, serverError: "", muted: false, marks: [], timer: 0, ended: false,
              headerSent: false, packetsIn: 0, decodeTs: 0, encodeTs: 0 };
  call = c;
  Object.assign(record, { user: [], moshi: [], userLen: 0, moshiLen: 0, text: [] });
  Object.assign(stats, { sent: 0, received: 0, texts: 0, played: 0, underruns: 0, dropped: 0, buffered: 0, delays: [], peakOut: 0, micDropped: 0 });
  $("transcript").textContent = "";
  $("mute").textContent = "Mute";
  $("mute").setAttribute("aria-pressed", "false");
  setState("connecting", "Opening the microphone…");
  try {
    const support = await AudioEncoder.isConfigSupported({ codec: "opus", sampleRate: RATE, numberOfChannels: 1 });
    if (!support.supported) throw Object.assign(new Error("no Opus encoder"), { name: "NoOpus" });
  } catch (e) {
    return fail(c, "Unsupported browser.", "This browser's WebCodecs cannot encode Opus at 24 kHz: use a recent Chrome, Edge, Firefox or Safari.");
  }
  try {
    c.mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 } });
  } catch (e) {
    return fail(c, "No microphone.", micMessage(e));
  }
  if (c.ended) return stopMedia(c);
  try {
    try { c.ctx = new AudioContext({ sampleRate: RATE, latencyHint: "interactive" }); }
    catch (e) { c.ctx = new AudioContext({ latencyHint: "interactive" }); }
    const code = URL.createObjectURL(new Blob([await workletCode], { type: "text/javascript" }));
    await c.ctx.audioWorklet.addModule(code);
    URL.revokeObjectURL(code);
  } catch (e) {
    return fail(c, "Audio failed.", `Cannot start audio in this browser (${e.name || e}).`);
  }
  if (c.ended) return stopMedia(c);
  setState("connecting", "Connecting to the server…");
  let ws;
  try {
    ws = new WebSocket(chatUrl());
  } catch (e) {
    return fail(c, "Cannot connect.", `Cannot connect: ${e.message || e}`);
  }
  c.ws = ws;
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { c.opened = true; };
  ws.onmessage = (ev) => onMessage(c, ev);
  ws.onclose = (ev) => onClose(c, ev);
}

function fail(c, status, message) {
  stopMedia(c);
  if (call === c) call = null;
  setState("error", status, message);
}

function onMessage(c, ev) {
  if (typeof ev.data === "string") return;
  const data = new Uint8Array(ev.data);
  if (!data.length) return;
  const kind = data[0], payload = data.subarray(1);
  if (kind === 0) startLive(c);
  else if (kind === 1) onAudio(c, payload);
  else if (kind === 2) onText(c, new TextDecoder().decode(payload));
  else if (kind === 5) c.serverError = new TextDecoder().decode(payload);
  else if (kind === 4 && agent) {
    try { onEvent(c, JSON.parse(new TextDecoder().decode(payload))); } catch (e) { /* not ours */ }
  }
}

function startLive(c) {
  if (c.live || c.ended) return;
  c.live = true;
  const ctx = c.ctx;
  ctx.resume();
  const track = c.mic.getAudioTracks()[0];
  stats.echoCancellation = Boolean(track && track.getSettings().echoCancellation);
  const src = ctx.createMediaStreamSource(c.mic);
  const capture = new AudioWorkletNode(ctx, "capture", {
    processorOptions: { chunk: Math.round(ctx.sampleRate * CHUNK_MS / 1000) }, numberOfOutputs: 1, outputChannelCount: [1] });
  const sink = ctx.createGain();
  sink.gain.value = 0;
  src.connect(capture).connect(sink).connect(ctx.destination); // keeps the capture node running
  c.player = new AudioWorkletNode(ctx, "player", { outputChannelCount: [1] });
  c.player.connect(ctx.destination);
  c.player.port.onmessage = (e) => {
    Object.assign(stats, { played: e.data.played, underruns: e.data.underruns, dropped: e.data.dropped, buffered: e.data.buffered });
    stats.peakOut = Math.max(stats.peakOut, e.data.rms); // what the speaker played, not just what arrived
    meter("meter-out", e.data.rms);
  };
  c.encoder = new AudioEncoder({
    output: (chunk) => sendPacket(c, chunk),
    error: (e) => endCall(c, "error", "Audio failed.", `The Opus encoder failed: ${e.message || e}`),
  });
  c.encoder.configure({ codec: "opus", sampleRate: RATE, numberOfChannels: 1, bitrate: 32000, opus: { frameDuration: CHUNK_MS * 1000 } });
  capture.port.onmessage = (e) => onMic(c, e.data);
  c.timer = setInterval(showStats, 250);
  // Autoplay rules: without a tap (say, ?autoconnect=1) the browser may hold the audio back.
  const who = agent ? "the agent" : "Moshi";
  setState("live", ctx.state === "suspended" ? `Live: tap anywhere to hear ${who}.` : `Live: talk to ${who}.`);
  ctx.onstatechange = () => { if (c.live && !c.ended && ctx.state === "running") $("status").textContent = `Live: talk to ${who}.`; };
}

function onMic(c, chunk) {
  if (!c.live || c.ended || c.ws.readyState !== WebSocket.OPEN) return;
  let x = resample(chunk, c.ctx.sampleRate, RATE);
  if ((stats.sent - stats.received - FRAME) / RATE > MAX_BEHIND_SECONDS) {
    stats.micDropped += x.length / RATE;
    return;
  }
  if (c.muted) x = new Float32Array(x.length);
  meter("meter-in", rmsOf(x));
  record.user.push(x);
  record.userLen += x.length;
  const ts = Math.round(stats.sent * 1e6 / RATE);
  stats.sent += x.length;
  c.marks.push([stats.sent, performance.now()]);
  if (c.marks.length > 2000) c.marks.splice(0, 1000);
  c.encoder.encode(new AudioData({ format: "f32-planar", sampleRate: RATE, numberOfFrames: x.length, numberOfChannels: 1, timestamp: ts, data: x }));
}

function sendPacket(c, chunk) {
  if (c.ended || c.ws.readyState !== WebSocket.OPEN) return;
  const pkt = new Uint8Array(chunk.byteLength);
  chunk.copyTo(pkt);
  const samples48 = chunk.duration ? Math.round(chunk.duration * 0.048) : CHUNK_MS * 48;
  const parts = [];
  if (!c.headerSent) { parts.push(c.writer.headers(RATE)); c.headerSent = true; }
  parts.push(c.writer.audio(pkt, samples48));
  const size = parts.reduce((s, p) => s + p.length, 0);
  const msg = new Uint8Array(1 + size);
  msg[0] = 1;
  let o = 1;
  for (const p of parts) { msg.set(p, o); o += p.length; }
  c.ws.send(msg);
}

function onAudio(c, payload) {
  let packets;
  try {
    packets = c.reader.push(payload);
  } catch (e) {
    return endCall(c, "error", "Bad audio.", "The server sent audio that is not an Ogg Opus stream.");
  }
  for (const p of packets) {
    c.packetsIn++;
    const magic = String.fromCharCode(...p.subarray(0, 8));
    if (magic === "OpusHead") {
      c.decoder = new AudioDecoder({
        output: (ad) => onDecoded(c, ad),
        error: (e) => endCall(c, "error", "Audio failed.", `The Opus decoder failed: ${e.message || e}`),
      });
      c.decoder.configure({ codec: "opus", sampleRate: RATE, numberOfChannels: 1 });
      continue;
    }
    if (magic === "OpusTags" || !c.decoder) continue;
    c.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: c.decodeTs, data: p }));
    c.decodeTs += 20000;
  }
}

function onDecoded(c, ad) {
  const n = ad.numberOfFrames;
  const buf = new Float32Array(n);
  ad.copyTo(buf, { planeIndex: 0, format: "f32-planar" });
  const rate = ad.sampleRate;
  ad.close();
  if (c.ended) return;
  const pcm = resample(buf, rate, RATE);
  record.moshi.push(pcm);
  record.moshiLen += pcm.length;
  stats.received += pcm.length;
  // Reply delay: from sending the user's sample k to receiving Moshi's audio for sample k.
  while (c.marks.length && c.marks[0][0] < stats.received) c.marks.shift();
  if (c.marks.length) {
    stats.delays.push(performance.now() - c.marks[0][1]);
    if (stats.delays.length > 50) stats.delays.shift();
  }
  c.player.port.postMessage(resample(pcm, RATE, c.ctx.sampleRate));
}

function onText(c, piece) {
  stats.texts++;
  record.text.push({ time: (record.moshiLen + FRAME) / RATE - FRAME / RATE, text: piece });
  if (agent) return say("agent", piece);
  const t = $("transcript");
  t.append(piece);
  t.scrollTop = t.scrollHeight;
}

function showStats() {
  const d = stats.delays.slice().sort((a, b) => a - b);
  $("latency").textContent = agent ? (stats.turnLatency === undefined ? "–" : `${stats.turnLatency.toFixed(2)} s`)
    : d.length ? `${Math.round(d[Math.floor(d.length / 2)])} ms` : "–";
  $("buffer").textContent = `${Math.round(stats.buffered * 1000)} ms · ${stats.underruns} underrun${stats.underruns === 1 ? "" : "s"}`
    + (stats.micDropped > 0 ? ` · server behind: ${stats.micDropped.toFixed(1)} s of microphone skipped` : "");
  $("save-audio").disabled = record.userLen + record.moshiLen === 0;
  $("save-text").disabled = record.text.length === 0;
}

function onClose(c, ev) {
  if (c.ended) return;
  const why = c.serverError || ev.reason || "";
  const host = location.host;
  if (c.byUser) return endCall(c, "closed", "Disconnected.", "");
  if (ev.code === 1013) {
    return endCall(c, "error", "Server busy.", `The server is busy (${why.replace(/^busy: /, "") || "all sessions are in use"}).`);
  }
  if (ev.code === 1008 || ev.code === 4401) {
    return endCall(c, "error", "Refused.", `The server refused this page: ${why || "not allowed"}. Open the exact address the server printed (with its ?token=).`);
  }
  if (!c.opened) {
    return endCall(c, "error", "Unreachable.", `Cannot reach the Moshi server at ${host}: is it running, and is this the address it printed?`);
  }
  if (!c.live) return endCall(c, "error", "Closed.", `The server closed the connection before the call started${why ? `: ${why}` : ""}.`);
  if (ev.code === 1000 || ev.code === 1001) return endCall(c, "closed", "Call ended.", `The server ended the call${why ? `: ${why}` : ""}.`);
  return endCall(c, "error", "Connection lost.", `Connection to the server lost (code ${ev.code}): the server stopped or the network dropped.`);
}

function stopMedia(c) {
  c.ended = true;
  clearInterval(c.timer);
  if (c.mic) c.mic.getTracks().forEach((t) => t.stop());
  for (const codec of [c.encoder, c.decoder]) { try { if (codec && codec.state !== "closed") codec.close(); } catch (e) { /* closed */ } }
  if (c.ctx && c.ctx.state !== "closed") c.ctx.close();
  meter("meter-in", 0);
  meter("meter-out", 0);
}

function endCall(c, state, status, message) {
  if (c.ended) return;
  stopMedia(c);
  if (c.ws && c.ws.readyState <= WebSocket.OPEN) c.ws.close(1000);
  if (call === c) call = null;
  showStats();
  setState(state, status, message);
}

function disconnect() {
  const c = call;
  if (!c) return;
  c.byUser = true;
  if (!c.ws) { stopMedia(c); call = null; setState("closed", "Disconnected.", ""); return; }
  endCall(c, "closed", "Disconnected.", "");
}

// ------------------------------------------------------------------ downloads

function wav(left, leftLen, right, rightLen, offset) {
  const n = Math.max(leftLen, rightLen + offset);
  const buf = new ArrayBuffer(44 + n * 4);
  const v = new DataView(buf);
  const str = (o, s) => { for (let i = 0; i < s.length; i++) v.setUint8(o + i, s.charCodeAt(i)); };
  str(0, "RIFF"); v.setUint32(4, 36 + n * 4, true); str(8, "WAVE"); str(12, "fmt ");
  v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 2, true); v.setUint32(24, RATE, true);
  v.setUint32(28, RATE * 4, true); v.setUint16(32, 4, true); v.setUint16(34, 16, true); str(36, "data"); v.setUint32(40, n * 4, true);
  const put = (chunks, channel, start) => {
    let i = start;
    for (const ch of chunks) for (let k = 0; k < ch.length; k++, i++) {
      const s = Math.max(-1, Math.min(1, ch[k]));
      v.setInt16(44 + i * 4 + channel * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
  };
  put(left, 0, 0);
  put(right, 1, offset);
  return new Blob([buf], { type: "audio/wav" });
}

function stamp(t) {
  const m = Math.floor(t / 60), s = t - m * 60;
  return `${String(m).padStart(2, "0")}:${s.toFixed(2).padStart(5, "0")}`;
}

function transcriptText() {
  const lines = [];
  let line = null, last = -1;
  for (const { time, text } of record.text) {
    if (!line || time - last > 1.0) { line = { time, text: "" }; lines.push(line); }
    line.text += text;
    last = time;
  }
  return lines.map((l) => `[${stamp(l.time)}] ${l.text.trim()}`).join("\n") + "\n";
}

function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// The recording: left = what the microphone sent, right = Moshi, placed where the server's
// timeline puts it (its reply to the user's frame i answers at frame i).
$("save-audio").onclick = () => save(wav(record.user, record.userLen, record.moshi, record.moshiLen, FRAME), "moshi-conversation.wav");
$("save-text").onclick = () => save(new Blob([transcriptText()], { type: "text/plain" }), "moshi-transcript.txt");
$("connect").onclick = () => (call ? disconnect() : connect());
$("mute").onclick = () => {
  if (!call) return;
  call.muted = !call.muted;
  $("mute").setAttribute("aria-pressed", String(call.muted));
  $("mute").textContent = call.muted ? "Unmute" : "Mute";
};
for (const k of SAMPLING) if (query.has(k)) $(k).value = query.get(k);
document.addEventListener("click", () => { if (call && call.ctx) call.ctx.resume(); });
setState("idle");
if (query.get("autoconnect") === "1") infoReady.then(connect);
