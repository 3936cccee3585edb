// WHIP publish page: capture camera or screen, send it to POST /whip/{stream}, show outbound stats.
// Query parameters: ?stream=&token=&source=camera|screen&codec=auto|VP8|H264&autostart=1
//   &simulcast=1    send three simulcast encodings (RFC 8853): rid "q" (1/4 size), "h" (1/2), "f" (full), in that order
//   &rids=0,1,2     simulcast with these rids, listed from FULL resolution down (OBS-style: "0" full, "1" 1/2,
//                   "2" 1/4) and sent in that order; implies simulcast=1
//
// For tests (tests/test_browser_simulcast.py): window.whipgatePublishStats (.video, .audio and per-layer .layers),
// window.whipgatePublisher ({pc, sender} of the running session) and window.whipgateSetLayerActive(rid, active).

import {
  $, HttpSession, RateMeter, describeError, endpointFor, formatBitrate, pageParams, renderStats, rtpEntry,
  showStatus, SessionClosed,
} from "./common.js";

const els = {
  form: $("controls"), stream: $("stream"), token: $("token"), source: $("source"), codec: $("codec"),
  simulcast: $("simulcast"), start: $("start"), stop: $("stop"), status: $("status"), preview: $("preview"),
  stats: $("stats"), layersSection: $("layers-section"), layers: $("layers"),
};

// Default simulcast encodings, lowest first as most browsers' examples list them.
const DEFAULT_ENCODINGS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];
// ?rids=: names from full resolution down; the i-th gets scale 2^i and these bitrates.
const BITRATE_BY_RANK = [1_500_000, 500_000, 150_000, 100_000];
const RID_PATTERN = /^[A-Za-z0-9]{1,16}$/; // what Chromium accepts (RFC 8851 also allows - and _)

const params = pageParams();
els.stream.value = params.get("stream", "live");
els.token.value = params.get("token");
for (const [name, el] of [["source", els.source], ["codec", els.codec]]) {
  const wanted = params.get(name);
  if ([...el.options].some((o) => o.value === wanted)) el.value = wanted;
}
const ridsParam = params.get("rids").trim();
// ?degradation=: what the browser's encoder gives up when the CPU or the network cannot keep up (RTCDegradationPreference).
// Chromium's default scales the resolution down, every simulcast layer with it; maintain-resolution drops frames instead.
const DEGRADATION_PREFERENCES = ["maintain-framerate", "maintain-resolution", "balanced"];
const degradation = params.get("degradation").trim();
els.simulcast.checked = params.flag("simulcast") || ridsParam !== "";

/** The sendEncodings for a simulcast publication: the defaults, or ?rids= (full resolution first). */
function simulcastEncodings() {
  if (!ridsParam) return DEFAULT_ENCODINGS.map((e) => ({ ...e }));
  const rids = ridsParam.split(",").map((r) => r.trim());
  if (rids.length < 2 || rids.length > BITRATE_BY_RANK.length) {
    throw new Error(`rids= needs 2 to ${BITRATE_BY_RANK.length} names, got ${rids.length}`);
  }
  for (const rid of rids) {
    if (!RID_PATTERN.test(rid)) throw new Error(`rid ${JSON.stringify(rid)} is not 1-16 letters or digits`);
  }
  if (new Set(rids).size !== rids.length) throw new Error("rids= lists a name twice");
  return rids.map((rid, rank) => ({ rid, scaleResolutionDownBy: 2 ** rank, maxBitrate: BITRATE_BY_RANK[rank] }));
}

// Latest outbound stats, for people and for tests (tests/test_browser.py and test_browser_simulcast.py read this).
// `layers` (simulcast only): one entry per encoding, in sendEncodings order.
// `history` (simulcast only): one entry per second with the bandwidth estimate and each layer's size, fps, bitrate.
// `degradation`: the video sender's degradationPreference when ?degradation= asked for one (null otherwise).
window.whipgatePublishStats = {
  state: "idle", simulcast: false, degradation: null, video: {}, audio: {}, layers: [], transport: {}, history: [],
};
const HISTORY_SIZE = 600;
window.whipgatePublisher = null;

/** Turn one simulcast encoding on or off (RTCRtpSender.setParameters); resolves to the new encodings. */
window.whipgateSetLayerActive = async (rid, active) => {
  const run = current;
  if (!run || !run.sender) throw new Error("not publishing");
  const parameters = run.sender.getParameters();
  const encoding = parameters.encodings.find((e) => e.rid === rid);
  if (!encoding) throw new Error(`no encoding with rid ${JSON.stringify(rid)}`);
  encoding.active = Boolean(active);
  await run.sender.setParameters(parameters);
  return run.sender.getParameters().encodings.map((e) => ({ rid: e.rid, active: e.active }));
};

// { session, media, timer, meter, sender (the video RTCRtpSender), encodings (simulcast sendEncodings, else null),
//   layerMeters }
let current = null;

function setState(state, detail = "") {
  window.whipgatePublishStats.state = state;
  window.whipgatePublishStats.detail = detail;
  showStatus(els.status, state, detail);
}

function setRunning(running) {
  for (const el of [els.stream, els.token, els.source, els.codec, els.simulcast, els.start]) el.disabled = running;
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
  const run = (current = {
    session, media: null, timer: null, meter: new RateMeter(), sender: null, encodings: null, layerMeters: new Map(),
  });
  setRunning(true);
  setState("connecting");
  const out = window.whipgatePublishStats;
  out.video = {};
  out.audio = {};
  out.layers = [];
  out.transport = {};
  out.history = [];
  out.simulcast = els.simulcast.checked;
  out.degradation = null;
  els.layersSection.hidden = !out.simulcast;
  els.layers.replaceChildren();
  try {
    if (out.simulcast) run.encodings = simulcastEncodings();
    if (degradation && !DEGRADATION_PREFERENCES.includes(degradation)) {
      throw new Error(`degradation= must be one of ${DEGRADATION_PREFERENCES.join(", ")}, got ${JSON.stringify(degradation)}`);
    }
    run.media = await capture(els.source.value);
    if (run !== current) throw new SessionClosed();
    els.preview.srcObject = run.media;

    const pc = new RTCPeerConnection();
    pc.addEventListener("connectionstatechange", () => onConnectionState(run, pc));
    // Audio first, then video; at most one track of each kind (WHIP servers refuse more).
    const tracks = [...run.media.getAudioTracks().slice(0, 1), ...run.media.getVideoTracks().slice(0, 1)];
    for (const track of tracks) {
      track.addEventListener("ended", () => run === current && stop("capture ended"));
      const init = { direction: "sendonly", streams: [run.media] };
      if (track.kind === "video" && run.encodings) init.sendEncodings = run.encodings;
      const transceiver = pc.addTransceiver(track, init);
      if (track.kind === "video") {
        preferCodec(transceiver, els.codec.value);
        run.sender = transceiver.sender;
      }
    }
    if (run.encodings) checkEncodings(run);
    if (degradation && run.sender) await setDegradation(run.sender, degradation);
    window.whipgatePublisher = { pc, sender: run.sender };
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

/** Ask the video sender for `preference` (checked against DEGRADATION_PREFERENCES before capture). */
async function setDegradation(sender, preference) {
  const parameters = sender.getParameters();
  parameters.degradationPreference = preference;
  await sender.setParameters(parameters);
  const kept = sender.getParameters().degradationPreference ?? null;
  window.whipgatePublishStats.degradation = kept;
  if (kept !== preference) console.warn(`degradation: the browser did not keep ${preference}`);
}

// A browser may silently drop encodings it cannot send (e.g. too few pixels for three layers): say so.
function checkEncodings(run) {
  const got = run.sender ? run.sender.getParameters().encodings.map((e) => e.rid) : [];
  const wanted = run.encodings.map((e) => e.rid);
  if (got.join() !== wanted.join()) {
    console.warn(`simulcast: asked for encodings ${wanted.join(",")}, the browser kept ${got.join(",") || "none"}`);
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
  // Simulcast: the summary shows the largest layer being sent (and, below, the bitrate of all layers together).
  const video = (run.encodings && topSendingLayer(report)) || rtpEntry(report, "outbound-rtp", "video");
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
  out.transport = transportStats(report);
  if (run.encodings) {
    out.layers = layerStats(run, report);
    out.video.bitrate = out.layers.reduce((sum, l) => sum + l.bitrate, 0);
    renderLayers(run, out.layers);
    // What the browser's congestion control allowed and which layers it sent, second by second (for diagnosis:
    // a browser turns its top layer off when the estimate drops, qualityLimitationReason "bandwidth").
    out.history.push({
      t: Date.now(),
      availableOutgoingBitrate: out.transport.availableOutgoingBitrate,
      layers: Object.fromEntries(
        out.layers.map((l) => [l.rid, [l.frameWidth, l.frameHeight, l.framesPerSecond, l.bitrate]]),
      ),
      qualityLimitationReason:
        out.layers.map((l) => l.qualityLimitationReason).find((r) => r && r !== "none") ?? "none",
    });
    if (out.history.length > HISTORY_SIZE) out.history.splice(0, out.history.length - HISTORY_SIZE);
  }
  const v = out.video;
  const bandwidth = out.transport.availableOutgoingBitrate;
  renderStats(els.stats, [
    ["video codec", v.codec],
    ["resolution", v.frameWidth ? `${v.frameWidth}×${v.frameHeight}` : null],
    ["frames per second", v.framesPerSecond],
    ["frames encoded", v.framesEncoded],
    [run.encodings ? "bitrate (all layers)" : "bitrate", v.codec ? formatBitrate(v.bitrate) : null],
    ["limited by", v.qualityLimitationReason],
    ["estimated bandwidth", bandwidth ? formatBitrate(bandwidth) : null],
    ["audio codec", out.audio.codec],
    ["audio packets sent", out.audio.packetsSent],
  ]);
}

/** rtpEntry-shaped: the simulcast layer with the most pixels among those sending frames, or null. */
function topSendingLayer(report) {
  let best = null;
  report.forEach((entry) => {
    if (entry.type !== "outbound-rtp" || entry.kind !== "video" || !entry.framesPerSecond) return;
    const area = (entry.frameWidth ?? 0) * (entry.frameHeight ?? 0);
    if (!best || area > best.area) best = { entry, area };
  });
  if (!best) return null;
  const codec = best.entry.codecId ? report.get(best.entry.codecId) : null;
  return { entry: best.entry, codec: codec ? codec.mimeType : null };
}

/** The browser's send-side bandwidth estimate and round trip time, from the selected candidate pair. */
function transportStats(report) {
  let pair = null;
  report.forEach((entry) => {
    if (entry.type === "transport" && entry.selectedCandidatePairId) pair = report.get(entry.selectedCandidatePairId);
  });
  if (!pair) {
    report.forEach((entry) => {
      if (entry.type === "candidate-pair" && entry.nominated && entry.state === "succeeded") pair = entry;
    });
  }
  return {
    availableOutgoingBitrate: pair?.availableOutgoingBitrate ?? null,
    currentRoundTripTime: pair?.currentRoundTripTime ?? null,
  };
}

/** One entry per simulcast encoding, in sendEncodings order, from its outbound-rtp stats (matched by rid). */
function layerStats(run, report) {
  const byRid = new Map();
  report.forEach((entry) => {
    if (entry.type === "outbound-rtp" && entry.kind === "video" && entry.rid !== undefined) byRid.set(entry.rid, entry);
  });
  const encodings = run.sender ? run.sender.getParameters().encodings : [];
  return run.encodings.map((wanted) => {
    const e = byRid.get(wanted.rid);
    const params = encodings.find((p) => p.rid === wanted.rid);
    let meter = run.layerMeters.get(wanted.rid);
    if (!meter) run.layerMeters.set(wanted.rid, (meter = new RateMeter()));
    const codec = e && e.codecId ? report.get(e.codecId) : null;
    return {
      rid: wanted.rid,
      scaleResolutionDownBy: params?.scaleResolutionDownBy ?? wanted.scaleResolutionDownBy,
      maxBitrate: params?.maxBitrate ?? wanted.maxBitrate,
      // The stats' `active` (Chromium) when present, else what the sender's parameters say.
      active: e?.active ?? params?.active ?? true,
      ssrc: e?.ssrc ?? null,
      codec: codec ? codec.mimeType : null,
      frameWidth: e?.frameWidth ?? 0,
      frameHeight: e?.frameHeight ?? 0,
      framesPerSecond: e?.framesPerSecond ?? 0,
      framesEncoded: e?.framesEncoded ?? 0,
      framesSent: e?.framesSent ?? 0,
      keyFramesEncoded: e?.keyFramesEncoded ?? 0,
      packetsSent: e?.packetsSent ?? 0,
      bytesSent: e?.bytesSent ?? 0,
      bitrate: e ? meter.update(e.bytesSent ?? 0, e.timestamp) : 0,
      targetBitrate: e?.targetBitrate ?? null,
      qualityLimitationReason: e?.qualityLimitationReason ?? null,
      scalabilityMode: e?.scalabilityMode ?? null,
      encoderImplementation: e?.encoderImplementation ?? null,
      pliCount: e?.pliCount ?? 0,
      firCount: e?.firCount ?? 0,
      nackCount: e?.nackCount ?? 0,
    };
  });
}

function renderLayers(run, layers) {
  const rows = layers.map((layer) => {
    const tr = document.createElement("tr");
    const cells = [
      layer.rid,
      `1/${layer.scaleResolutionDownBy}`,
      layer.frameWidth ? `${layer.frameWidth}×${layer.frameHeight}` : "–",
      layer.framesPerSecond || "–",
      formatBitrate(layer.bitrate),
      layer.qualityLimitationReason ?? "–",
    ];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    const td = document.createElement("td");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = layer.active;
    box.title = `send the ${layer.rid} encoding`;
    box.addEventListener("change", () => {
      window.whipgateSetLayerActive(layer.rid, box.checked).catch((err) => console.warn("setParameters failed", err));
    });
    td.append(box);
    tr.append(td);
    return tr;
  });
  els.layers.replaceChildren(...rows);
}

async function teardown(run) {
  clearInterval(run.timer);
  if (run.media) run.media.getTracks().forEach((t) => t.stop());
  if (run === current) {
    current = null;
    window.whipgatePublisher = null;
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
