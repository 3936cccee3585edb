// WHIP publish page: capture camera or screen, send it to POST /whip/{stream}, show outbound stats.
// Query parameters: ?stream=&token=&source=camera|screen&codec=auto|VP8|H264&autostart=1

import {
  $, HttpSession, RateMeter, describeError, endpointFor, formatBitrate, pageParams, renderStats, rtpEntry,
  showStatus, SessionClosed,
} from "./common.js";

const els = {
  form: $("controls"), stream: $("stream"), token: $("token"), source: $("source"), codec: $("codec"),
  start: $("start"), stop: $("stop"), status: $("status"), preview: $("preview"), stats: $("stats"),
};

const params = pageParams();
els.stream.value = params.get("stream", "live");
els.token.value = params.get("token");
for (const [name, el] of [["source", els.source], ["codec", els.codec]]) {
  const wanted = params.get(name);
  if ([...el.options].some((o) => o.value === wanted)) el.value = wanted;
}

// Latest outbound stats, for people and for tests (tests/test_browser.py reads this).
window.whipgatePublishStats = { state: "idle", video: {}, audio: {} };

let current = null; // { session, media, timer, meter }

function setState(state, detail = "") {
  window.whipgatePublishStats.state = state;
  window.whipgatePublishStats.detail = detail;
  showStatus(els.status, state, detail);
}

function setRunning(running) {
  for (const el of [els.stream, els.token, els.source, els.codec, els.start]) el.disabled = running;
  els.stop.disabled = !running;
}

function capture(source) {
  if (source === "screen") {
    return navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 30 } }, audio: true });
  }
  return navigator.mediaDevices.getUserMedia({
    audio: true,
    video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
  });
}

// Restrict the video transceiver to one codec family (plus its helpers: rtx, red, fec).
function preferCodec(transceiver, name) {
  if (name === "auto") return;
  if (!transceiver.setCodecPreferences) throw new Error("this browser cannot choose codecs");
  const wanted = `video/${name}`.toLowerCase();
  const helpers = ["video/rtx", "video/red", "video/ulpfec", "video/flexfec-03"];
  let lastError = null;
  // Browsers have validated the list against send or receive capabilities: try both.
  for (const side of [RTCRtpSender, RTCRtpReceiver]) {
    const codecs = side.getCapabilities("video")?.codecs || [];
    const chosen = codecs.filter((c) => c.mimeType.toLowerCase() === wanted);
    if (!chosen.length) continue;
    const rest = codecs.filter((c) => helpers.includes(c.mimeType.toLowerCase()));
    try {
      transceiver.setCodecPreferences([...chosen, ...rest]);
      return;
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError || new Error(`this browser cannot send ${name}`);
}

async function start() {
  if (current) return;
  const stream = els.stream.value.trim();
  if (!stream) {
    setState("error", "a stream name is required");
    return;
  }
  const session = new HttpSession(endpointFor("whip", stream), els.token.value.trim());
  const run = (current = { session, media: null, timer: null, meter: new RateMeter() });
  setRunning(true);
  setState("connecting");
  try {
    run.media = await capture(els.source.value);
    if (run !== current) throw new SessionClosed();
    els.preview.srcObject = run.media;

    const pc = new RTCPeerConnection();
    pc.addEventListener("connectionstatechange", () => onConnectionState(run, pc));
    // Audio first, then video; at most one track of each kind (WHIP servers refuse more).
    const tracks = [...run.media.getAudioTracks().slice(0, 1), ...run.media.getVideoTracks().slice(0, 1)];
    for (const track of tracks) {
      track.addEventListener("ended", () => run === current && stop("capture ended"));
      const transceiver = pc.addTransceiver(track, { direction: "sendonly", streams: [run.media] });
      if (track.kind === "video") preferCodec(transceiver, els.codec.value);
    }
    await session.connect(pc);
    run.timer = setInterval(() => updateStats(run, pc), 1000);
    onConnectionState(run, pc);
  } catch (err) {
    if (err instanceof SessionClosed || run !== current) {
      // Stopped while starting: teardown may have run before the capture existed.
      if (run.media) run.media.getTracks().forEach((t) => t.stop());
      return;
    }
    teardown(run);
    setState("error", describeError(err));
  }
}

function onConnectionState(run, pc) {
  if (run !== current) return;
  switch (pc.connectionState) {
    case "connected":
      setState("live");
      break;
    case "disconnected":
      setState("reconnecting", "connection interrupted");
      break;
    case "failed":
      teardown(run);
      setState("error", "connection failed (ICE/DTLS)");
      break;
    default:
      setState("connecting");
  }
}

async function updateStats(run, pc) {
  if (run !== current) return;
  const report = await pc.getStats();
  const video = rtpEntry(report, "outbound-rtp", "video");
  const audio = rtpEntry(report, "outbound-rtp", "audio");
  const out = window.whipgatePublishStats;
  if (video) {
    const v = video.entry;
    out.video = {
      codec: video.codec,
      frameWidth: v.frameWidth ?? 0,
      frameHeight: v.frameHeight ?? 0,
      framesPerSecond: v.framesPerSecond ?? 0,
      framesEncoded: v.framesEncoded ?? 0,
      framesSent: v.framesSent ?? 0,
      packetsSent: v.packetsSent ?? 0,
      bytesSent: v.bytesSent ?? 0,
      bitrate: run.meter.update(v.bytesSent ?? 0, v.timestamp),
      qualityLimitationReason: v.qualityLimitationReason ?? null,
    };
  }
  if (audio) {
    const a = audio.entry;
    out.audio = { codec: audio.codec, packetsSent: a.packetsSent ?? 0, bytesSent: a.bytesSent ?? 0 };
  }
  const v = out.video;
  renderStats(els.stats, [
    ["video codec", v.codec],
    ["resolution", v.frameWidth ? `${v.frameWidth}×${v.frameHeight}` : null],
    ["frames per second", v.framesPerSecond],
    ["frames encoded", v.framesEncoded],
    ["bitrate", v.codec ? formatBitrate(v.bitrate) : null],
    ["limited by", v.qualityLimitationReason],
    ["audio codec", out.audio.codec],
    ["audio packets sent", out.audio.packetsSent],
  ]);
}

async function teardown(run) {
  clearInterval(run.timer);
  if (run.media) run.media.getTracks().forEach((t) => t.stop());
  if (run === current) {
    current = null;
    els.preview.srcObject = null;
    setRunning(false);
  }
  await run.session.close();
}

async function stop(reason = "") {
  if (!current) return;
  const done = teardown(current); // synchronously detaches the run, then DELETEs the session
  setState("stopped", reason);
  await done;
}

els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  start();
});
els.stop.addEventListener("click", () => stop());
window.addEventListener("pagehide", () => current && teardown(current));

if (params.flag("autostart")) start();
