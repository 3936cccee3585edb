// WHEP player: POST /whep/{stream} with a recvonly offer, play what arrives, show inbound stats.
// Query parameters: ?stream=&token=&autostart=1
//   &layer=h   pin the simulcast layer with this rid right after connecting (WHEP layer extension)
//
// WHEP extensions (draft-ietf-wish-whep-02 §4.9), found through the Link headers of the 201:
// - server-sent events: POST a JSON array of event names to the SSE link, read the Location it answers with as an
//   event stream (active, inactive, layers, viewercount);
// - layer selection: POST {"rid": "h"} (or {"spatialLayerId": 0}, {"maxWidth": .., "maxHeight": ..}) to the layer
//   link to pin a layer, {} to return to the server's automatic choice.
//
// For tests (tests/test_browser.py, tests/test_browser_simulcast.py): window.whipgateStats (refreshed every second),
// window.whipgateVideoStats() (fresh inbound video stats), window.whipgateLayers (data of the last `layers` event),
// window.whipgateViewerCount, window.whipgatePublisherActive, window.whipgateEvents (received events with their
// Date.now() time), window.whipgatePin(obj) (POSTs obj to the layer link, resolves to the HTTP status).

import {
  $, HttpError, HttpSession, RateMeter, SessionClosed, authHeaders, describeError, endpointFor, errorDetail,
  formatBitrate, pageParams, renderStats, rtpEntry, showStatus,
} from "./common.js";

const RETRY_SECONDS = 2; // when the server gives no Retry-After, or the connection drops
const SSE_REL = "urn:ietf:params:whep:ext:core:server-sent-events";
const LAYER_REL = "urn:ietf:params:whep:ext:core:layer";
const WANTED_EVENTS = ["active", "inactive", "layers", "viewercount"];
const EVENT_LOG_SIZE = 200;
const PIN_RETRY_MS = 500; // ?layer= before the gateway knows the publisher's layers: try again for a while
const PIN_RETRY_FOR_MS = 10_000;

const els = {
  form: $("controls"), stream: $("stream"), token: $("token"), play: $("play"), stop: $("stop"),
  status: $("status"), video: $("video"), stats: $("stats"), publisherState: $("publisher-state"),
  viewerCount: $("viewer-count"), layersSection: $("layers-section"), layers: $("layers"), selection: $("selection"),
  layerAuto: $("layer-auto"), temporal: $("temporal"), temporalLabel: $("temporal-label"),
};
const TEMPORAL_KEYS = ["temporalLayerId", "maxTemporalLayerId"];

const params = pageParams();
els.stream.value = params.get("stream", "live");
els.token.value = params.get("token");
const initialLayer = params.get("layer").trim();

// Latest inbound stats, for people and for tests (tests/test_browser.py reads this).
window.whipgateStats = { state: "idle", video: {}, audio: {} };
resetEventState();

let current = null; // { stream, token, session, pc, timer, retryTimer, meter, layerUrl, events }

function resetEventState() {
  window.whipgateLayers = null;
  window.whipgateViewerCount = null;
  window.whipgatePublisherActive = null;
  window.whipgateEvents = [];
  window.whipgatePinResult = null; // {request, status, detail} of the last layer request
}

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
  current = {
    stream, token: els.token.value.trim(), session: null, pc: null, timer: null, retryTimer: null, layerUrl: null,
    events: null,
    // The layer request to repeat on every new session (?layer=, then the person's last choice); null = automatic.
    wantedLayer: initialLayer ? { rid: initialLayer } : null,
  };
  window.whipgateStats.video = {};
  window.whipgateStats.audio = {};
  resetEventState();
  renderEventState();
  els.temporal.value = "";
  setRunning(true);
  attempt(current);
}

async function attempt(run) {
  if (run !== current) return;
  closeExtensions(run);
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
    startExtensions(run, session);
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
  closeExtensions(run);
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
    const bitrate = run.meter.update(video.entry.bytesReceived ?? 0, video.entry.timestamp);
    out.video = { ...videoFields(video), bitrate };
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
  els.temporalLabel.hidden = !/^video\/vp[89]$/i.test(v.codec || "");
  renderStats(els.stats, [
    ["video codec", v.codec],
    ["resolution", v.frameWidth ? `${v.frameWidth}×${v.frameHeight}` : null],
    ["frames per second", v.framesPerSecond],
    ["frames decoded", v.framesDecoded],
    ["bitrate", v.codec ? formatBitrate(v.bitrate) : null],
    ["video packets lost", v.packetsLost],
    ["freezes", v.freezeCount],
    ["audio codec", out.audio.codec],
    ["audio packets received", out.audio.packetsReceived],
  ]);
}

/** The inbound video fields tests and people look at. */
function videoFields(video) {
  const v = video.entry;
  return {
    codec: video.codec,
    ssrc: v.ssrc ?? null,
    frameWidth: v.frameWidth ?? 0,
    frameHeight: v.frameHeight ?? 0,
    framesPerSecond: v.framesPerSecond ?? 0,
    framesReceived: v.framesReceived ?? 0,
    framesDecoded: v.framesDecoded ?? 0,
    framesDropped: v.framesDropped ?? 0,
    keyFramesDecoded: v.keyFramesDecoded ?? 0,
    packetsReceived: v.packetsReceived ?? 0,
    packetsLost: v.packetsLost ?? 0,
    bytesReceived: v.bytesReceived ?? 0,
    freezeCount: v.freezeCount ?? 0,
    totalFreezesDuration: v.totalFreezesDuration ?? 0,
    pauseCount: v.pauseCount ?? 0,
    pliCount: v.pliCount ?? 0,
    firCount: v.firCount ?? 0,
    nackCount: v.nackCount ?? 0,
    jitterBufferEmittedCount: v.jitterBufferEmittedCount ?? 0,
    decoderImplementation: v.decoderImplementation ?? null,
    timestamp: v.timestamp,
  };
}

/** Fresh inbound video stats (null when not playing), for tests that sample faster than the 1 s display. */
window.whipgateVideoStats = async () => {
  const run = current;
  if (!run || !run.pc || run.pc.connectionState === "closed") return null;
  const video = rtpEntry(await run.pc.getStats(), "inbound-rtp", "video");
  return video ? videoFields(video) : null;
};

// ---- WHEP extensions: server-sent events and layer selection -------------------------------------------------

function startExtensions(run, session) {
  if (run !== current || session !== run.session) return;
  const layerLink = session.linkFor(LAYER_REL);
  run.layerUrl = layerLink ? layerLink.uri : null;
  const sseLink = session.linkFor(SSE_REL);
  if (sseLink) {
    subscribeEvents(run, session, sseLink).catch((err) => {
      console.warn("server-sent events unavailable:", describeError(err));
    });
  }
  if (run.wantedLayer && run.layerUrl) pinWithRetry(run, session, run.wantedLayer);
}

function closeExtensions(run) {
  if (run.events) run.events.close();
  run.events = null;
  run.layerUrl = null;
}

async function subscribeEvents(run, session, link) {
  // Ask for the events the server announces (events= of the Link) that this page shows.
  const offered = (link.params.events || "").split(",").map((e) => e.trim()).filter(Boolean);
  const names = offered.length ? WANTED_EVENTS.filter((e) => offered.includes(e)) : WANTED_EVENTS;
  const response = await fetch(link.uri, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders(session.token) },
    body: JSON.stringify(names),
  });
  if (response.status !== 201) throw new HttpError(response.status, await errorDetail(response));
  const location = response.headers.get("Location");
  if (!location) throw new Error("the event stream POST answered 201 without a Location");
  if (run !== current || session !== run.session) return;
  const source = new EventSource(new URL(location, response.url || link.uri).href);
  run.events = source;
  for (const name of names) {
    source.addEventListener(name, (event) => {
      if (run.events !== source) return;
      let data = {};
      try {
        data = event.data ? JSON.parse(event.data) : {};
      } catch {
        console.warn(`unparsable ${name} event`, event.data);
        return;
      }
      onEvent(name, data);
    });
  }
  source.addEventListener("error", () => {
    // EventSource reconnects by itself; CLOSED means the server refused (e.g. 404 once the session ended).
    if (source.readyState === EventSource.CLOSED && run.events === source) console.warn("the event stream ended");
  });
}

function onEvent(name, data) {
  const log = window.whipgateEvents;
  log.push({ name, data, time: Date.now() });
  if (log.length > EVENT_LOG_SIZE) log.splice(0, log.length - EVENT_LOG_SIZE);
  if (name === "layers") window.whipgateLayers = data;
  else if (name === "viewercount") window.whipgateViewerCount = data.viewercount ?? null;
  else if (name === "active") window.whipgatePublisherActive = true;
  else if (name === "inactive") window.whipgatePublisherActive = false;
  renderEventState();
}

/** POST a layer request to the session's layer link; resolves to the HTTP status. */
async function pin(request) {
  const run = current;
  if (!run || !run.layerUrl) {
    throw new Error("no layer selection link (not playing, or the server has no layer extension)");
  }
  const response = await fetch(run.layerUrl, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders(run.token) },
    body: JSON.stringify(request),
  });
  const detail = response.ok ? "" : await errorDetail(response);
  window.whipgatePinResult = { request, status: response.status, detail };
  if (response.ok) run.wantedLayer = Object.keys(request).length ? request : null;
  if (!response.ok) console.warn(`layer request ${JSON.stringify(request)}: ${response.status} ${detail}`);
  renderSelection();
  return response.status;
}
window.whipgatePin = pin;

// ?layer=: the gateway answers 400 while it has not yet seen the publisher's layers; keep trying for a while.
async function pinWithRetry(run, session, request) {
  const deadline = Date.now() + PIN_RETRY_FOR_MS;
  while (run === current && session === run.session) {
    let status = 0;
    try {
      status = await pin(request);
    } catch (err) {
      console.warn("layer request failed", err);
    }
    if (status === 200 || status === 404 || Date.now() > deadline) return;
    await new Promise((resolve) => setTimeout(resolve, PIN_RETRY_MS));
  }
}

// A layer as the selection names it: {rid, spatialLayerId} (a bare rid string is accepted too).
function sameLayer(handle, layer) {
  if (handle === null || handle === undefined) return false;
  if (typeof handle !== "object") return handle === layer.rid;
  if (handle.rid !== undefined || layer.rid !== undefined) return handle.rid === layer.rid;
  return handle.spatialLayerId === layer.spatialLayerId;
}

function layerName(handle) {
  if (handle === null || handle === undefined) return "–";
  if (typeof handle !== "object") return String(handle);
  return handle.rid ?? `spatial layer ${handle.spatialLayerId}`;
}

function layerLists(data) {
  // {"<m-line index>": [layer, ...], "selection": {...}}: every key but "selection" is a video m-line.
  if (!data || typeof data !== "object") return [];
  return Object.entries(data).filter(([key, value]) => key !== "selection" && Array.isArray(value));
}

function renderEventState() {
  const active = window.whipgatePublisherActive;
  els.publisherState.textContent = active === null ? "–" : active ? "active" : "inactive";
  els.viewerCount.textContent = window.whipgateViewerCount ?? "–";
  const lists = layerLists(window.whipgateLayers);
  const layered = lists.some(([, layers]) => layers.length > 1);
  els.layersSection.hidden = !layered;
  const selection = (window.whipgateLayers && window.whipgateLayers.selection) || {};
  const rows = [];
  for (const [mline, layers] of lists) {
    const sel = selection[mline] || {};
    for (const layer of layers) {
      const tr = document.createElement("tr");
      // The layer objects carry current/target flags; the selection object says the same plus pinned and why.
      const isCurrent = Boolean(layer.current) || sameLayer(sel.current, layer);
      const isTarget = (Boolean(layer.target) || sameLayer(sel.target, layer)) && !isCurrent;
      const isPinned = Boolean(sel.pinned) && (Boolean(layer.target) || sameLayer(sel.target, layer));
      if (isCurrent) tr.className = "current";
      const receiving = [isCurrent ? "current" : "", isTarget ? "switching to" : "", isPinned ? "pinned" : ""]
        .filter(Boolean)
        .join(", ");
      const cells = [
        layer.rid ?? "–",
        layer.spatialLayerId ?? "–",
        layer.width ? `${layer.width}×${layer.height}` : "–",
        layer.bitrate ? formatBitrate(layer.bitrate) : "inactive",
        receiving || "",
      ];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      const td = document.createElement("td");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "watch";
      button.dataset.rid = layer.rid ?? "";
      const spatial = layer.rid !== undefined ? { rid: layer.rid } : { spatialLayerId: layer.spatialLayerId };
      button.addEventListener("click", () => pin({ ...temporalPart(), ...spatial }).catch((err) => console.warn(err)));
      td.append(button);
      tr.append(td);
      rows.push(tr);
    }
  }
  els.layers.replaceChildren(...rows);
  renderSelection();
}

// The temporal part of the running layer request, kept when a person picks another spatial layer or "auto".
function temporalPart() {
  const wanted = (current && current.wantedLayer) || {};
  return Object.fromEntries(Object.entries(wanted).filter(([key]) => TEMPORAL_KEYS.includes(key)));
}

function spatialPart() {
  const wanted = (current && current.wantedLayer) || {};
  return Object.fromEntries(Object.entries(wanted).filter(([key]) => !TEMPORAL_KEYS.includes(key)));
}

function renderSelection() {
  const selection = (window.whipgateLayers && window.whipgateLayers.selection) || {};
  const parts = Object.values(selection).map((sel) => {
    const mode = sel.pinned ? `pinned to ${layerName(sel.target)}` : "automatic";
    const changing = sel.target && layerName(sel.target) !== layerName(sel.current);
    const switching = changing ? `, switching ${layerName(sel.current)} → ${layerName(sel.target)}` : "";
    const why = !sel.pinned && sel.reason ? ` (${sel.reason})` : "";
    return `${mode}${switching}${why}`;
  });
  const result = window.whipgatePinResult;
  if (result && result.status !== 200) {
    parts.push(`last request ${JSON.stringify(result.request)}: ${result.status} ${result.detail}`);
  }
  els.selection.textContent = parts.join("; ");
}

async function stop() {
  const run = current;
  if (!run) return;
  current = null;
  closeExtensions(run);
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
els.layerAuto.addEventListener("click", () => pin(temporalPart()).catch((err) => console.warn(err)));
els.temporal.addEventListener("change", () => {
  const temporal = els.temporal.value === "" ? {} : { maxTemporalLayerId: Number(els.temporal.value) };
  pin({ ...spatialPart(), ...temporal }).catch((err) => console.warn(err));
});
window.addEventListener("pagehide", () => stop());

if (params.flag("autostart")) play();
