// wavlm-stream browser demo: microphone (or a local file, played as if live) -> AudioWorklet
// (mono, low-pass + resample to 16 kHz PCM16) -> websocket /ws -> live captions.
//
// Protocol (DESIGN.md "Websocket protocol"): {"type":"start", ...}, binary PCM16 frames,
// {"type":"stop"}; the server answers with partial / final / speaker_change / error events
// and closes after the last final. Known voices go first: {"type":"enrol","name":...}, their
// recording as f32 frames, {"type":"enrol_end"} (answered by {"type":"enrolled",...}).
// No framework, no build step.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const WS_URL = params.get("server") ||
  `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const TARGET_RATE = 16000;
const CHUNK_MS = 100;

// Counters for the curious and for the browser test.
const stats = {
  sentBytes: 0,
  sentChunks: 0,
  events: { partial: 0, final: 0, speaker_change: 0, error: 0, enrolled: 0 },
  enrolled: [],
  latencies: [],
  finals: [],
  errors: [],
  closeCode: null,
};
window.wavlmDemo = stats;

let session = null;  // {ws, ctx, node, source, tracks, stopping, flushed}
const speakers = new Map();  // speaker label -> colour index, in order of appearance
let lastSpeaker = null;
const transcript = [];  // every final shown: {start, speaker, text}, for "Save transcript"
const knownVoices = [];  // {name, samples: Float32Array at 16 kHz}: enrolled at the start of each session

function setState(state, text) {
  document.body.dataset.state = state;
  $("status").textContent = text || state;
  $("start").disabled = state !== "idle";
  $("file").disabled = state !== "idle";
  $("voice").disabled = state !== "idle";
  $("stop").disabled = state !== "running";
}

function showMessage(text) {
  const box = $("message");
  box.textContent = text || "";
  box.hidden = !text;
}

function openSocket(url, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      reject(e);
      return;
    }
    ws.binaryType = "arraybuffer";
    const timer = setTimeout(() => { ws.close(); reject(new Error("no answer")); }, timeoutMs);
    ws.onopen = () => { clearTimeout(timer); resolve(ws); };
    ws.onclose = (e) => { clearTimeout(timer); reject(new Error(`connection failed, code ${e.code}`)); };
  });
}

function describeMediaError(e, kind, file) {
  if (kind === "file") return `Could not read "${file.name}" as audio (${e.message}).`;
  switch (e.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone access was denied. Allow the microphone for this page (the icon in the " +
        "address bar) and press Start again, or stream a file instead.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found. Connect one and press Start again, or stream a file instead.";
    case "NotReadableError":
      return "The microphone is busy or unavailable (another application may be using it).";
    default:
      return `Could not start audio capture: ${e.message || e.name}`;
  }
}

async function start(kind, file) {
  if (session) return;
  showMessage("");
  setState("connecting", "connecting…");
  let ws;
  try {
    ws = await openSocket(WS_URL);
  } catch (e) {
    setState("idle");
    showMessage(`Cannot reach the server at ${WS_URL} — is "wavlm-stream serve" running? (${e.message})`);
    return;
  }
  let ctx, source;
  let tracks = [];
  try {
    ctx = new AudioContext();  // the device's rate; the worklet resamples to 16 kHz
    await ctx.audioWorklet.addModule("capture-worklet.js");
    if (kind === "mic") {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw Object.assign(new Error("this page needs a secure context (https or localhost) " +
          "to use the microphone"), { name: "SecurityError" });
      }
      const media = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
      tracks = media.getAudioTracks();
      source = ctx.createMediaStreamSource(media);
    } else {
      const buffer = await ctx.decodeAudioData(await file.arrayBuffer());
      source = ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(ctx.destination);  // hear the file while it streams in real time
      source.onended = () => stop();
    }
  } catch (e) {
    ws.onclose = null;
    ws.close(1000);
    tracks.forEach((t) => t.stop());
    if (ctx) ctx.close();
    setState("idle");
    showMessage(describeMediaError(e, kind, file));
    return;
  }

  const node = new AudioWorkletNode(ctx, "pcm16-capture", {
    processorOptions: { targetRate: TARGET_RATE, chunkMs: CHUNK_MS },
  });
  // A silent path to the destination keeps the worklet in the rendered graph.
  const mute = ctx.createGain();
  mute.gain.value = 0;
  node.connect(mute).connect(ctx.destination);

  session = { ws, ctx, node, source, tracks, stopping: false, flushed: null, kind };
  ws.onmessage = (e) => {
    if (typeof e.data === "string") onEvent(JSON.parse(e.data));
  };
  ws.onclose = onClose;
  sendKnownVoices(ws);
  ws.send(JSON.stringify({ type: "start", sample_rate: TARGET_RATE, format: "pcm_s16le", channels: 1 }));
  node.port.onmessage = (e) => {
    if (e.data instanceof ArrayBuffer) {
      if (ws.readyState === WebSocket.OPEN) {
        ws.send(e.data);
        stats.sentBytes += e.data.byteLength;
        stats.sentChunks += 1;
      }
    } else if (e.data && e.data.flushed && session && session.flushed) {
      session.flushed();
    }
  };
  source.connect(node);
  if (kind === "file") source.start();
  await ctx.resume();
  setState("running", kind === "mic" ? "listening" : `streaming ${file.name} in real time`);
}

async function stop() {
  const s = session;
  if (!s || s.stopping) return;
  s.stopping = true;
  setState("stopping", "finishing…");
  // Hand the worklet's last samples to the socket before telling the server to stop.
  await new Promise((resolve) => {
    s.flushed = resolve;
    s.node.port.postMessage("flush");
    setTimeout(resolve, 500);
  });
  if (s.kind === "file") {
    s.source.onended = null;
    try { s.source.stop(); } catch (_) { /* already ended */ }
  }
  s.source.disconnect();
  s.tracks.forEach((t) => t.stop());
  s.ctx.close();
  if (s.ws.readyState === WebSocket.OPEN) s.ws.send(JSON.stringify({ type: "stop" }));
  // The server sends the last finals and closes; onClose resets the page. Give up after 30 s.
  setTimeout(() => { if (s.ws.readyState !== WebSocket.CLOSED) s.ws.close(); }, 30000);
}

function onClose(e) {
  const s = session;
  session = null;
  if (s) {
    s.tracks.forEach((t) => t.stop());
    if (s.ctx.state !== "closed") s.ctx.close();
  }
  stats.closeCode = e.code;
  $("partial").textContent = "";
  setState("idle");
  if (e.code !== 1000 && $("message").hidden) {
    showMessage(e.code === 1006
      ? "Lost the connection to the server."
      : `The server closed the connection (code ${e.code}${e.reason ? ": " + e.reason : ""}).`);
  }
}

// Known voices: a recording of one speaker alone, named after its file; the server learns each
// voice at the start of every session and labels that speaker's turns with the name.
function voiceName(fileName) {
  const base = fileName.replace(/\.[^.]*$/, "").replace(/\s+/g, "_").slice(0, 32) || "voice";
  return /^S[0-9]+$/.test(base) ? `${base}_` : base;  // S1, S2, ... label the voices nobody enrolled
}

async function addKnownVoice(file) {
  showMessage("");
  let samples;
  try {
    // Decoding in a 16 kHz context resamples; the channels are averaged here.
    const decoded = await new OfflineAudioContext(1, 1, TARGET_RATE).decodeAudioData(await file.arrayBuffer());
    samples = new Float32Array(decoded.length);
    for (let c = 0; c < decoded.numberOfChannels; c++) {
      const channel = decoded.getChannelData(c);
      for (let i = 0; i < samples.length; i++) samples[i] += channel[i] / decoded.numberOfChannels;
    }
  } catch (e) {
    showMessage(`Could not read "${file.name}" as audio (${e.message}).`);
    return;
  }
  const name = voiceName(file.name);
  const known = knownVoices.findIndex((v) => v.name === name);
  if (known >= 0) knownVoices.splice(known, 1);
  knownVoices.push({ name, samples });
  showKnownVoices();
}

function showKnownVoices() {
  const list = $("voice-list");
  list.replaceChildren();
  for (const voice of knownVoices) {
    const label = document.createElement("span");
    label.className = "voice";
    label.textContent = voice.name;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "✕";
    remove.title = `forget ${voice.name}`;
    remove.addEventListener("click", () => {
      knownVoices.splice(knownVoices.indexOf(voice), 1);
      showKnownVoices();
    });
    list.append(label, remove);
  }
  if (knownVoices.length === 0) list.textContent = "none";
}

function sendKnownVoices(ws) {
  const perMessage = TARGET_RATE;  // one second of f32 samples (64 kB) per message
  for (const voice of knownVoices) {
    ws.send(JSON.stringify({ type: "enrol", name: voice.name, sample_rate: TARGET_RATE, format: "f32le", channels: 1 }));
    for (let i = 0; i < voice.samples.length; i += perMessage) {
      ws.send(voice.samples.slice(i, i + perMessage).buffer);
    }
    ws.send(JSON.stringify({ type: "enrol_end" }));
  }
}

function formatTime(seconds) {
  const m = Math.floor(seconds / 60);
  return `${m}:${(seconds - 60 * m).toFixed(1).padStart(4, "0")}`;
}

function speakerClass(label) {
  if (!speakers.has(label)) speakers.set(label, speakers.size);
  return `spk-${speakers.get(label) % 6}`;
}

function appendFinal(ev) {
  if (!ev.text) return;
  const li = document.createElement("li");
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = formatTime(ev.start);
  li.append(time);
  if (ev.speaker) {
    li.classList.add(speakerClass(ev.speaker));
    if (lastSpeaker !== null && ev.speaker !== lastSpeaker) li.classList.add("turn");
    lastSpeaker = ev.speaker;
    const who = document.createElement("span");
    who.className = "speaker";
    who.textContent = ev.speaker;
    li.append(who);
  }
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = ev.text;
  li.append(text);
  $("finals").append(li);
  li.scrollIntoView({ block: "nearest" });
  transcript.push({ start: ev.start, speaker: ev.speaker, text: ev.text });
  $("save").disabled = false;
}

// The transcript as the page shows it, a line per final: "[0:03.4 S1] text". Each session's
// times count from its own start.
function transcriptText() {
  return transcript.map((f) => `[${formatTime(f.start)}${f.speaker ? " " + f.speaker : ""}] ${f.text}\n`).join("");
}

function saveTranscript() {
  const blob = new Blob([transcriptText()], { type: "text/plain;charset=utf-8" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  const stamp = new Date().toISOString().slice(0, 16).replace(/[-:]/g, "").replace("T", "-");
  link.download = `wavlm-stream-${stamp}.txt`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function updateLatency() {
  const recent = stats.latencies.slice(-20).sort((a, b) => a - b);
  const last = stats.latencies[stats.latencies.length - 1];
  const median = recent[Math.floor(recent.length / 2)];
  $("latency").textContent = `${last.toFixed(2)} s (median ${median.toFixed(2)} s)`;
}

function onEvent(ev) {
  if (ev.type in stats.events) stats.events[ev.type] += 1;
  switch (ev.type) {
    case "partial":
      $("partial").textContent = ev.text;  // the open segment, updated in place
      break;
    case "final":
      stats.finals.push(ev.text);
      appendFinal(ev);
      $("partial").textContent = "";
      break;
    case "speaker_change":
      break;  // finals carry the speaker label; a change shows as a new colour and a rule
    case "enrolled":
      stats.enrolled.push(ev.name);
      break;
    case "error":
      stats.errors.push(ev.code);
      showMessage(`Server: ${ev.message} (${ev.code})`);
      break;
  }
  if (typeof ev.latency === "number") {
    stats.latencies.push(ev.latency);
    updateLatency();
  }
}

$("start").addEventListener("click", () => start("mic"));
$("stop").addEventListener("click", () => stop());
$("save").addEventListener("click", saveTranscript);
$("voice").addEventListener("change", (e) => {
  const file = e.target.files[0];
  e.target.value = "";
  if (file) addKnownVoice(file);
});
$("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  e.target.value = "";  // choosing the same file again streams it again
  if (file) start("file", file);
});
$("endpoint").textContent = WS_URL;
setState("idle");
