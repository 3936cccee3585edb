// Helpers shared by the WHIP publish page and the WHEP player.
// WHIP (RFC 9725) and WHEP have the same HTTP shape: POST an SDP offer, get a 201 with the SDP answer and
// a Location for the session, DELETE that Location to end it.

/** An HTTP error answer from the gateway; `detail` is the problem-details text when there is one. */
export class HttpError extends Error {
  constructor(status, detail, retryAfter) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

/** Thrown when a session is closed by the user while it is still being set up. */
export class SessionClosed extends Error {
  constructor() {
    super("session closed");
  }
}

const $ = (id) => document.getElementById(id);
export { $ };

/** Query parameters of the page, with the helpers the pages need. */
export function pageParams() {
  const query = new URLSearchParams(location.search);
  return {
    get: (name, fallback = "") => query.get(name) ?? fallback,
    flag: (name) => ["1", "true", "yes", "on"].includes((query.get(name) || "").toLowerCase()),
  };
}

/** Resolves when ICE gathering is complete, or after `timeoutMs` with whatever was gathered so far. */
export function waitForIceGathering(pc, timeoutMs = 2000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") finish();
    };
    const timer = setTimeout(finish, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/** Splits a (possibly combined) Link header value into [{uri, params}] (RFC 8288). */
export function parseLinkHeader(value) {
  if (!value) return [];
  const parts = [];
  let current = "";
  let inAngle = false;
  let inQuote = false;
  for (let i = 0; i < value.length; i++) {
    const ch = value[i];
    if (inQuote && ch === "\\" && i + 1 < value.length) {
      current += ch + value[++i];
      continue;
    }
    if (ch === '"' && !inAngle) inQuote = !inQuote;
    else if (ch === "<" && !inQuote) inAngle = true;
    else if (ch === ">" && !inQuote) inAngle = false;
    else if (ch === "," && !inAngle && !inQuote) {
      parts.push(current);
      current = "";
      continue;
    }
    current += ch;
  }
  parts.push(current);

  const links = [];
  const paramPattern = /;\s*([^\s=;]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*)))?/g;
  for (const part of parts) {
    const match = part.match(/^\s*<([^>]*)>(.*)$/s);
    if (!match) continue;
    const params = {};
    for (const p of match[2].matchAll(paramPattern)) {
      const raw = p[2] !== undefined ? p[2].replace(/\\(.)/g, "$1") : p[3] ?? "";
      params[p[1].toLowerCase()] = raw;
    }
    links.push({ uri: match[1], params });
  }
  return links;
}

/** RTCIceServer entries from Link headers with rel="ice-server" (RFC 9725 section 4.6). */
export function iceServersFromLinks(links) {
  return links
    .filter((link) => (link.params.rel || "").split(/\s+/).includes("ice-server"))
    .map((link) => {
      const server = { urls: link.uri };
      if ("username" in link.params) server.username = link.params.username;
      if ("credential" in link.params) server.credential = link.params.credential;
      return server;
    });
}

/** A Link target made absolute; URIs that are not URLs (stun:, turn:) are kept as they are. */
function resolveLinkUri(uri, base) {
  if (/^(stuns?|turns?):/i.test(uri)) return uri;
  try {
    return new URL(uri, base).href;
  } catch {
    return uri;
  }
}

/** The human-readable reason in an error answer: problem details' `detail` if present, else the body text. */
export async function errorDetail(response) {
  try {
    const type = response.headers.get("Content-Type") || "";
    if (type.includes("json")) {
      const body = await response.json();
      return body.detail || body.title || JSON.stringify(body);
    }
    const text = (await response.text()).trim();
    return text || response.statusText || "request failed";
  } catch {
    return response.statusText || "request failed";
  }
}

export function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/**
 * One WHIP or WHEP session: `connect(pc)` does offer / POST / answer, `close()` closes the peer connection
 * and DELETEs the session resource. Safe to close at any moment, also while connect() is still running.
 */
export class HttpSession {
  constructor(endpoint, token) {
    this.endpoint = endpoint;
    this.token = token;
    this.pc = null;
    this.url = null; // the session resource (Location), absolute
    this.etag = null;
    this.iceServers = [];
    this.links = []; // every Link of the 201, as [{uri (absolute), params}]
    this.closed = false;
    this.deleted = false;
  }

  async connect(pc) {
    this.pc = pc;
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc);
    if (this.closed) throw new SessionClosed();

    const response = await fetch(this.endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", ...authHeaders(this.token) },
      body: pc.localDescription.sdp,
    });
    if (response.status !== 201) {
      const retryAfter = Number.parseInt(response.headers.get("Retry-After") || "", 10);
      throw new HttpError(response.status, await errorDetail(response), Number.isNaN(retryAfter) ? null : retryAfter);
    }
    const location = response.headers.get("Location");
    if (!location) throw new Error("the server answered 201 without a Location header");
    // Relative to the URL that answered (fetch follows 307 redirects).
    this.url = new URL(location, response.url || this.endpoint).href;
    this.etag = response.headers.get("ETag");
    const answer = await response.text();
    if (this.closed) {
      await this.deleteResource();
      throw new SessionClosed();
    }

    // Extension URLs (e.g. WHEP server-sent events and layer selection) are relative to the answering URL too.
    const links = parseLinkHeader(response.headers.get("Link"));
    this.links = links.map((link) => ({ ...link, uri: resolveLinkUri(link.uri, response.url || this.endpoint) }));
    // Keep the server's ICE servers for a later ICE restart; the running gathering is not affected.
    this.iceServers = iceServersFromLinks(links);
    if (this.iceServers.length) {
      try {
        pc.setConfiguration({ ...pc.getConfiguration(), iceServers: this.iceServers });
      } catch (err) {
        console.warn("could not apply the server's ICE servers", err);
      }
    }
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
  }

  /** The absolute URI of the first Link with this rel (e.g. "urn:ietf:params:whep:ext:core:layer"), or null. */
  linkFor(rel) {
    const link = this.links.find((l) => (l.params.rel || "").split(/\s+/).includes(rel));
    return link ? link : null;
  }

  async deleteResource() {
    if (!this.url || this.deleted) return;
    this.deleted = true;
    try {
      // keepalive lets the DELETE finish when the page is being unloaded.
      await fetch(this.url, { method: "DELETE", headers: authHeaders(this.token), keepalive: true });
    } catch (err) {
      console.warn("DELETE of the session failed", err);
    }
  }

  async close() {
    if (this.closed) return;
    this.closed = true;
    if (this.pc) this.pc.close();
    await this.deleteResource();
  }
}

/** Bits per second from a growing byte counter sampled with getStats timestamps (ms). */
export class RateMeter {
  constructor() {
    this.last = null;
  }

  update(bytes, timestampMs) {
    let rate = 0;
    if (this.last && timestampMs > this.last.t && bytes >= this.last.bytes) {
      rate = Math.round(((bytes - this.last.bytes) * 8 * 1000) / (timestampMs - this.last.t));
    } else if (this.last) {
      rate = this.last.rate;
    }
    this.last = { bytes, t: timestampMs, rate };
    return rate;
  }
}

/** The RTP stats entry of one kind and type ("inbound-rtp"/"outbound-rtp"), plus its codec's mime type. */
export function rtpEntry(report, type, kind) {
  let best = null;
  report.forEach((entry) => {
    if (entry.type !== type || entry.kind !== kind) return;
    const bytes = entry.bytesSent ?? entry.bytesReceived ?? 0;
    if (!best || bytes > (best.bytesSent ?? best.bytesReceived ?? 0)) best = entry;
  });
  if (!best) return null;
  const codec = best.codecId ? report.get(best.codecId) : null;
  return { entry: best, codec: codec ? codec.mimeType : null };
}

export function formatBitrate(bps) {
  if (!bps) return "0 kbit/s";
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mbit/s`;
  return `${Math.round(bps / 1e3)} kbit/s`;
}

/** Shows a state word and optional detail in a status element (class drives the colour). */
export function showStatus(el, state, detail = "") {
  el.className = `status ${state}`;
  el.textContent = detail ? `${state}: ${detail}` : state;
}

/** Renders [label, value] pairs into a <dl>. */
export function renderStats(el, rows) {
  el.replaceChildren(
    ...rows.flatMap(([label, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = value ?? "–";
      return [dt, dd];
    }),
  );
}

/** Endpoint URL for a stream on this gateway, e.g. endpointFor("whip", "live"). */
export function endpointFor(kind, stream) {
  return new URL(`/${kind}/${encodeURIComponent(stream)}`, location.href).href;
}

export function describeError(err) {
  if (err instanceof HttpError) return err.detail ? `${err.status} ${err.detail}` : `HTTP ${err.status}`;
  if (err && err.name === "NotAllowedError") return "permission to capture was denied";
  return (err && err.message) || String(err);
}
