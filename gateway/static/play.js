// WHEP player: POST /whep/{stream} with a recvonly offer, play what arrives, show inbound stats.
// Query parameters: ?stream=&token=&autostart=1

import {
  $, HttpError, HttpSession, RateMeter, SessionClosed, describeError, endpointFor, formatBitrate, pageParams,
  renderStats, rtpEntry, showStatus,
} from "./common.js";

const RETRY_SECONDS = 2; // when the server gives no Retry-After, or the connection drops

const els = {
  form: $("controls"), stream: $("stream"), token: $("token"), play: $("play"), stop: $("stop"),
  status: $("status"), video: $("video"), stats: $("stats"),
};

const params = pageParams();
els.stream.value = params.get("stream", "live");
els.token.value = params.get("token");

// Latest inbound stats, for people and for tests (tests/test_browser.py reads this).
window.whipgateStats = { state: "idle", video: {}, audio: {} };

let current = null; // { stream, token, session, pc, timer, retryTimer, meter }

function setState(state, detail = "") {
  window.whipgateStats.state = state;
  window.whipgateStats.detail = detail;
  showStatus(els.status, state, detail);
}

function setRunning(running) {
  for (const el of [els.stream, els.token, els.play]) el.disabled = running;
  els.stop.disabled = !running;
}

function play() {
  if (current) return;
  const stream = els.stream.value.trim();
  if (!stream) {
    setState("error", "a stream name is required");
    return;
  }
  current = { stream, token: els.token.value.trim(), session: null, pc: null, timer: null, retryTimer: null };
  window.whipgateStats.video = {};
  window.whipgateStats.audio = {};
  setRunning(true);
  attempt(current);
}

async function attempt(run) {
  if (run !== current) return;
  setState("connecting");
  const session = (run.session = new HttpSession(endpointFor("whep", run.stream), run.token));
  const pc = (run.pc = new RTCPeerConnection());
  run.meter = new RateMeter();
  const media = new MediaStream();
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addEventListener("track", (event) => {
    media.addTrack(event.track);
    els.video.srcObject = media;
  });
  pc.addEventListener("connectionstatechange", () => onConnectionState(run, pc));
  try {
    await session.connect(pc);
    if (!run.timer) run.timer = setInterval(() => updateStats(run), 1000);
    onConnectionState(run, pc);
  } catch (err) {
    if (err instanceof SessionClosed || run !== current) return;
    await session.close();
    if (err instanceof HttpError && err.status === 409) {
      const wait = Math.max(1, err.retryAfter ?? RETRY_SECONDS); // never a tight loop, even on Retry-After: 0
      retry(run, wait, "waiting", `stream is not live, retrying in ${wait} s`);
    } else if ((err instanceof HttpError && err.status >= 500) || err instanceof TypeError) {
      // 5xx (e.g. 503 overloaded) or the gateway is unreachable: try again later.
      const wait = Math.max(1, err.retryAfter ?? RETRY_SECONDS);
      retry(run, wait, "waiting", `${describeError(err)}, retrying in ${wait} s`);
    } else {
      await stop();
      setState("error", describeError(err));
    }
  }
}

function retry(run, seconds, state, detail) {
  setState(state, detail);
  run.retryTimer = setTimeout(() => attempt(run), seconds * 1000);
}

function onConnectionState(run, pc) {
  if (run !== current || pc !== run.pc) return;
  switch (pc.connectionState) {
    case "connected":
      setState("live");
      break;
    case "disconnected":
      setState("reconnecting", "connection interrupted");
      break;
    case "failed":
      // The stream ended or the network went away: start a fresh session.
      run.session.close();
      retry(run, RETRY_SECONDS, "reconnecting", "connection lost");
      break;
    case "closed":
      break;
    default:
      setState("connecting");
  }
}

async function updateStats(run) {
  if (run !== current || !run.pc || run.pc.connectionState === "closed") return;
  const report = await run.pc.getStats();
  const video = rtpEntry(report, "inbound-rtp", "video");
  const audio = rtpEntry(report, "inbound-rtp", "audio");
  const out = window.whipgateStats;
  if (video) {
    const v = video.entry;
    out.video = {
      codec: video.codec,
      frameWidth: v.frameWidth ?? 0,
      frameHeight: v.frameHeight ?? 0,
      framesPerSecond: v.framesPerSecond ?? 0,
      framesDecoded: v.framesDecoded ?? 0,
      framesDropped: v.framesDropped ?? 0,
      packetsReceived: v.packetsReceived ?? 0,
      packetsLost: v.packetsLost ?? 0,
      bytesReceived: v.bytesReceived ?? 0,
      bitrate: run.meter.update(v.bytesReceived ?? 0, v.timestamp),
      keyFramesDecoded: v.keyFramesDecoded ?? 0,
    };
  }
  if (audio) {
    const a = audio.entry;
    out.audio = {
      codec: audio.codec,
      packetsReceived: a.packetsReceived ?? 0,
      packetsLost: a.packetsLost ?? 0,
      bytesReceived: a.bytesReceived ?? 0,
    };
  }
  const v = out.video;
  renderStats(els.stats, [
    ["video codec", v.codec],
    ["resolution", v.frameWidth ? `${v.frameWidth}×${v.frameHeight}` : null],
    ["frames per second", v.framesPerSecond],
    ["frames decoded", v.framesDecoded],
    ["bitrate", v.codec ? formatBitrate(v.bitrate) : null],
    ["video packets lost", v.packetsLost],
    ["audio codec", out.audio.codec],
    ["audio packets received", out.audio.packetsReceived],
  ]);
}

async function stop() {
  const run = current;
  if (!run) return;
  current = null;
  clearTimeout(run.retryTimer);
  clearInterval(run.timer);
  els.video.srcObject = null;
  setRunning(false);
  setState("stopped");
  if (run.session) await run.session.close();
}

els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  play();
});
els.stop.addEventListener("click", () => stop());
window.addEventListener("pagehide", () => stop());

if (params.flag("autostart")) play();
