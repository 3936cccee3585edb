"""Gateway configuration: frozen dataclasses and a strict TOML loader.

Every problem in a configuration file is reported as a `ConfigError` whose message names the file, the dotted
key (`rtc.ice_timeout`, `ice_servers[0].urls[1]`, `streams.live.play_token`) and what is wrong with it, so a
typo or a bad value stops the gateway at start-up instead of surfacing later as odd behaviour.

The documented defaults live in `config.toml` at the repository root; `load_config(None)` and
`load_config("config.toml")` give the same `Config`.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

__all__ = [
    "Config",
    "ConfigError",
    "HttpConfig",
    "IceServer",
    "LOG_LEVELS",
    "RtcConfig",
    "StreamAuth",
    "load_config",
    "parse_config",
]

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ICE_URL_SCHEMES = ("stun", "stuns", "turn", "turns")


# --------------------------------------------------------------------------------------------------------------
# The configuration model
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    cors_allow_origin: str = "*"
    # Worker processes: 0 = one per CPU core (the default; one core: a single process); 1 = this process serves
    # everything; N = N (gateway/workers.py).
    workers: int = 0


@dataclass(frozen=True)
class RtcConfig:
    # Empty: the transport layer uses every non-loopback interface address.
    ice_addresses: tuple[str, ...] = ()
    announced_ip: str | None = None
    ice_timeout: float = 30.0
    # RFC 7675 §5.1: consent expires after 30 s without a response; checks every 5 s, 6 misses = 30 s.
    consent_interval: float = 5.0
    consent_failures: int = 6
    keyframe_request_interval: float = 0.5
    packet_history: int = 1024
    # Per-viewer send-side bandwidth estimation picks each viewer's simulcast layer; off: highest layer alive.
    bandwidth_estimation: bool = True
    # One UDP port for every session (demultiplexed by ICE ufrag, then remote address); 0: a port per session.
    udp_port: int = 0
    # Without udp_port: each session's own port comes from udp_port_min..udp_port_max (both 0: any free port).
    udp_port_min: int = 0
    udp_port_max: int = 0
    # SO_RCVBUF of the gateway's UDP sockets, bytes (capped by net.core.rmem_max); 0: leave it as bound.
    udp_receive_buffer: int = 4 * 1024 * 1024


@dataclass(frozen=True)
class IceServer:
    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None
    # coturn "use-auth-secret": credentials are derived per response (see gateway.ice_servers).
    secret: str | None = None
    ttl: int = 86400


@dataclass(frozen=True)
class StreamAuth:
    publish_token: str | None = None
    play_token: str | None = None


@dataclass(frozen=True)
class ClusterConfig:
    # "memory": the embedded in-process registry (one node). Else a Redis URL: several gateways serve as one.
    registry: str = "memory"
    node_id: str = ""  # empty: "<hostname>:<http port>"
    public_url: str = ""  # this node's base URL for redirects; empty: http://<http.listen>
    ttl: float = 10.0  # seconds a node's and its streams' registry entries live without a heartbeat
    viewer_mode: str = "redirect"  # WHEP POST to a node without the stream: 307 to the owner, or "relay" it here
    max_publishers: int = 0  # publishers this node takes; 0 = unlimited
    over_capacity: str = "reject"  # WHIP POST at max_publishers: "reject" (503) or "redirect" (307 to another node)
    relay_grace: float = 5.0  # relay mode: seconds an upstream pull outlives its last local viewer
    relay_token: str | None = None  # relay mode: Bearer token this node sends to the origin's WHEP endpoint


@dataclass(frozen=True)
class Config:
    http: HttpConfig = field(default_factory=HttpConfig)
    rtc: RtcConfig = field(default_factory=RtcConfig)
    ice_servers: tuple[IceServer, ...] = ()
    streams: Mapping[str, StreamAuth] = field(default_factory=lambda: MappingProxyType({}))
    whep_retry_after: int = 5
    # Seconds a stream's viewers wait for a publisher to come back after it left; 0: they end with it.
    whep_publisher_grace: float = 10.0
    # A WHIP POST with the live publisher's Bearer token replaces it (a reconnecting encoder); needs a publish_token.
    whip_takeover: bool = False
    log_level: str = "info"
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


class ConfigError(Exception):
    """A configuration problem: `str(error)` is "SOURCE: KEY: PROBLEM" (or "SOURCE: PROBLEM" without a key)."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------

DEFAULT_SOURCE = "<config>"
LISTEN_OVERRIDE_SOURCE = "command line"


def load_config(path: str | os.PathLike[str] | None = None, *, listen: str | None = None) -> Config:
    """Read and validate a TOML configuration file (`None`: built-in defaults).

    `listen` ("HOST:PORT", IPv6 as "[::1]:8080") overrides the file's `http.listen`.
    """
    if path is None:
        config = parse_config({})
    else:
        source = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(source, None, f"cannot read the file: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, None, f"invalid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(source, None, f"invalid TOML: the file is not UTF-8 ({exc.reason})") from exc
        config = parse_config(data, source=source)
    if listen is not None:
        host, port = _parse_listen(_Table(LISTEN_OVERRIDE_SOURCE, "", {}), "--listen", listen)
        config = replace(config, http=replace(config.http, host=host, port=port))
    return config


def parse_config(data: dict, *, source: str = DEFAULT_SOURCE) -> Config:
    """Validate an already-decoded TOML document; `source` names it in error messages."""
    root = _Table(source, "", data)
    root.reject_unknown(("http", "rtc", "ice_servers", "streams", "whip", "whep", "log", "cluster"))
    whep_retry_after, whep_publisher_grace = _parse_whep(root.table("whep"))
    return Config(
        http=_parse_http(root.table("http")),
        rtc=_parse_rtc(root.table("rtc")),
        ice_servers=_parse_ice_servers(root),
        streams=_parse_streams(root.table("streams")),
        whep_retry_after=whep_retry_after,
        whep_publisher_grace=whep_publisher_grace,
        whip_takeover=_parse_whip(root.table("whip")),
        log_level=_parse_log_level(root.table("log")),
        cluster=_parse_cluster(root.table("cluster")),
    )


_NODE_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _parse_cluster(table: _Table) -> ClusterConfig:
    table.reject_unknown(
        ("registry", "node_id", "public_url", "ttl", "viewer_mode", "max_publishers", "over_capacity", "relay_grace", "relay_token")
    )
    defaults = ClusterConfig()
    registry = table.string("registry", defaults.registry)
    if registry != "memory" and not registry.startswith(("redis://", "rediss://", "unix://")):
        raise table.error("registry", f'must be "memory" or a Redis URL (redis://host:port/db), got {registry!r}')
    node_id = table.string("node_id", defaults.node_id)
    if node_id and not _NODE_ID_RE.fullmatch(node_id):
        raise table.error("node_id", "may contain letters, digits, '.', '_', ':' and '-' (at most 64)")
    public_url = table.string("public_url", defaults.public_url).rstrip("/")
    if public_url and not re.fullmatch(r"https?://[^/\s]+(/[^\s]*)?", public_url):
        raise table.error("public_url", f"must be an http:// or https:// URL, got {public_url!r}")
    mode = table.string("viewer_mode", defaults.viewer_mode)
    if mode not in ("redirect", "relay"):
        raise table.error("viewer_mode", f'must be "redirect" or "relay", got {mode!r}')
    relay_token = table.string("relay_token", "")
    problem = _check_bearer_token(relay_token) if relay_token else None
    if problem:
        raise table.error("relay_token", problem)
    over_capacity = table.string("over_capacity", defaults.over_capacity)
    if over_capacity not in ("reject", "redirect"):
        raise table.error("over_capacity", f'must be "reject" or "redirect", got {over_capacity!r}')
    return ClusterConfig(
        registry=registry,
        node_id=node_id,
        public_url=public_url,
        ttl=table.positive_number("ttl", defaults.ttl),
        viewer_mode=mode,
        max_publishers=table.integer("max_publishers", defaults.max_publishers, minimum=0),
        over_capacity=over_capacity,
        relay_grace=table.positive_number("relay_grace", defaults.relay_grace),
        relay_token=relay_token or None,
    )


# --------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------

# Access-Control-Allow-Origin carries "*" or one serialized origin (Fetch standard, "CORS protocol").
_ORIGIN_RE = re.compile(r"https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


MAX_WORKERS = 256


def _parse_http(table: _Table) -> HttpConfig:
    table.reject_unknown(("listen", "cors_allow_origin", "workers"))
    defaults = HttpConfig()
    host, port = defaults.host, defaults.port
    if "listen" in table.values:
        host, port = _parse_listen(table, "listen", table.string("listen", ""))
    origin = table.string("cors_allow_origin", defaults.cors_allow_origin)
    if origin != "*" and not _ORIGIN_RE.fullmatch(origin):
        raise table.error(
            "cors_allow_origin",
            f'must be "*" or a single origin such as "https://example.com" (no path), got {origin!r}',
        )
    workers = table.integer("workers", defaults.workers, minimum=0, maximum=MAX_WORKERS)
    return HttpConfig(host=host, port=port, cors_allow_origin=origin, workers=workers)


def _parse_rtc(table: _Table) -> RtcConfig:
    fields = (
        "ice_addresses",
        "announced_ip",
        "ice_timeout",
        "consent_interval",
        "consent_failures",
        "keyframe_request_interval",
        "packet_history",
        "bandwidth_estimation",
        "udp_port",
        "udp_port_min",
        "udp_port_max",
        "udp_receive_buffer",
    )
    table.reject_unknown(fields)
    defaults = RtcConfig()

    addresses: list[str] = []
    for index, text in enumerate(table.string_list("ice_addresses", ())):
        address = _parse_host_ip(table, f"ice_addresses[{index}]", text)
        if address in addresses:
            raise table.error(f"ice_addresses[{index}]", f"{address} is listed twice")
        addresses.append(address)

    announced = table.string("announced_ip", "")
    announced_ip = _parse_host_ip(table, "announced_ip", announced) if announced else None

    packet_history = table.integer("packet_history", defaults.packet_history, minimum=64, maximum=65536)
    # A power of two divides 2**16, so a ring indexed by RTP sequence number (RFC 3550 §5.1) modulo its
    # size stays consistent across sequence-number wrap-around.
    if packet_history & (packet_history - 1):
        raise table.error("packet_history", f"must be a power of two (64, 128, ... 65536), got {packet_history}")

    udp_port = table.integer("udp_port", defaults.udp_port, minimum=0, maximum=65535)
    port_min = table.integer("udp_port_min", defaults.udp_port_min, minimum=0, maximum=65535)
    port_max = table.integer("udp_port_max", defaults.udp_port_max, minimum=0, maximum=65535)
    if (port_min == 0) != (port_max == 0):
        name = "udp_port_max" if port_min else "udp_port_min"
        raise table.error(name, "must be set with the other end of the range (both 0: any free port)")
    if port_min > port_max:
        raise table.error("udp_port_max", f"must be >= udp_port_min ({port_min}), got {port_max}")
    if port_min and udp_port:
        raise table.error(
            "udp_port_min",
            f"a port range is for sessions with ports of their own; udp_port ({udp_port}) puts every session on one "
            "port: set one or the other",
        )

    return RtcConfig(
        ice_addresses=tuple(addresses),
        announced_ip=announced_ip,
        ice_timeout=table.positive_number("ice_timeout", defaults.ice_timeout),
        consent_interval=table.positive_number("consent_interval", defaults.consent_interval),
        consent_failures=table.integer("consent_failures", defaults.consent_failures, minimum=1),
        keyframe_request_interval=table.positive_number(
            "keyframe_request_interval", defaults.keyframe_request_interval
        ),
        packet_history=packet_history,
        bandwidth_estimation=table.boolean("bandwidth_estimation", defaults.bandwidth_estimation),
        udp_port=udp_port,
        udp_port_min=port_min,
        udp_port_max=port_max,
        udp_receive_buffer=table.integer(
            "udp_receive_buffer", defaults.udp_receive_buffer, minimum=0, maximum=1 << 30
        ),
    )


def _parse_ice_servers(root: _Table) -> tuple[IceServer, ...]:
    if "ice_servers" not in root.values:
        return ()
    entries = root.values["ice_servers"]
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise root.error("ice_servers", f"must be an array of tables ([[ice_servers]]), got {_describe(entries)}")
    return tuple(
        _parse_ice_server(_Table(root.source, f"ice_servers[{index}]", entry)) for index, entry in enumerate(entries)
    )


def _parse_ice_server(table: _Table) -> IceServer:
    table.reject_unknown(("urls", "username", "credential", "secret", "ttl"))
    if "urls" not in table.values:
        raise table.error("urls", "is required (an array of stun:, stuns:, turn: or turns: URLs)")
    urls = table.string_list("urls", ())
    if not urls:
        raise table.error("urls", "must list at least one URL")
    schemes = [_check_ice_url(table, f"urls[{index}]", url) for index, url in enumerate(urls)]

    username = table.optional_string("username", _check_header_text)
    credential = table.optional_string("credential", _check_header_text)
    secret = table.optional_string("secret")
    if "ttl" in table.values and secret is None:
        raise table.error("ttl", "only applies to time-limited credentials; set secret or remove ttl")
    ttl = table.integer("ttl", IceServer.ttl, minimum=1)

    if secret is not None and (username is not None or credential is not None):
        clashing = "username" if username is not None else "credential"
        raise table.error(
            clashing, "cannot be combined with secret: use username+credential (static) or secret (coturn REST)"
        )
    if (username is None) != (credential is None):
        present, missing = ("username", "credential") if credential is None else ("credential", "username")
        raise table.error(missing, f"is required when {present} is set")

    has_credentials = username is not None or secret is not None
    for index, scheme in enumerate(schemes):
        if scheme in ("stun", "stuns") and has_credentials:
            raise table.error(
                f"urls[{index}]",
                f"{scheme}: URLs take no credentials; put STUN servers in their own [[ice_servers]] entry",
            )
        # W3C WebRTC 1.0 ("validate an ICE server"): browsers reject turn:/turns: URLs without credentials.
        if scheme in ("turn", "turns") and not has_credentials:
            raise table.error(f"urls[{index}]", f"{scheme}: URLs need username+credential or secret")

    return IceServer(urls=tuple(urls), username=username, credential=credential, secret=secret, ttl=ttl)


# Stream names appear as one path segment of /whip/{stream} and /whep/{stream}.
_STREAM_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def _parse_streams(table: _Table) -> Mapping[str, StreamAuth]:
    streams: dict[str, StreamAuth] = {}
    for name, value in table.values.items():
        key = table.key(name)
        if not _STREAM_NAME_RE.fullmatch(name) or set(name) == {"."}:
            raise ConfigError(
                table.source, key, "a stream name may contain only letters, digits, '-', '_' and '.' (not only dots)"
            )
        if not isinstance(value, dict):
            raise ConfigError(table.source, key, f"must be a table ([{key}]), got {_describe(value)}")
        stream = _Table(table.source, key, value)
        stream.reject_unknown(("publish_token", "play_token"))
        streams[name] = StreamAuth(
            publish_token=stream.optional_string("publish_token", _check_bearer_token),
            play_token=stream.optional_string("play_token", _check_bearer_token),
        )
    return MappingProxyType(streams)


def _parse_whep(table: _Table) -> tuple[int, float]:
    table.reject_unknown(("retry_after", "publisher_grace"))
    # RFC 9110 §10.2.3: Retry-After delay-seconds is a non-negative integer.
    retry_after = table.integer("retry_after", Config.whep_retry_after, minimum=0)
    return retry_after, table.non_negative_number("publisher_grace", Config.whep_publisher_grace)


def _parse_whip(table: _Table) -> bool:
    table.reject_unknown(("takeover",))
    return table.boolean("takeover", Config.whip_takeover)


def _parse_log_level(table: _Table) -> str:
    table.reject_unknown(("level",))
    level = table.string("level", "info").lower()
    if level not in LOG_LEVELS:
        raise table.error("level", f"must be one of {', '.join(LOG_LEVELS)}, got {table.values['level']!r}")
    return level


# --------------------------------------------------------------------------------------------------------------
# Value checks
# --------------------------------------------------------------------------------------------------------------

_HOSTNAME_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _parse_listen(table: _Table, name: str, value: str) -> tuple[str, int]:
    """Split "HOST:PORT" ("[IPv6]:PORT" for IPv6) into a bindable host and a port."""
    usage = 'expected "HOST:PORT", e.g. "127.0.0.1:8080" or "[::1]:8080"'
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise table.error(name, f"{usage}, got {value!r}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise table.error(name, f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon or not host:
            raise table.error(name, f"{usage}, got {value!r}")
        if ":" in host:
            raise table.error(name, f'an IPv6 address must be in brackets, e.g. "[::1]:8080", got {value!r}')
        if not _is_ipv4_or_hostname(host):
            raise table.error(name, f"{host!r} is neither an IPv4 address nor a host name")
    if not port_text.isascii() or not port_text.isdigit():
        raise table.error(name, f"port must be a number, got {port_text!r} in {value!r}")
    port = int(port_text)
    if port > 65535:
        raise table.error(name, f"port must be 1..65535 (or 0 for any free port), got {port}")
    return host, port


def _is_ipv4_or_hostname(host: str) -> bool:
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    # RFC 1123 §2.1 host names.
    return len(host) <= 253 and all(_HOSTNAME_LABEL_RE.fullmatch(label) for label in host.split("."))


def _parse_host_ip(table: _Table, name: str, text: str) -> str:
    """An IPv4/IPv6 literal usable as an ICE host candidate address, in canonical form."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise table.error(name, f"{text!r} is not an IP address") from None
    if address.is_unspecified or address.is_multicast:
        kind = "unspecified" if address.is_unspecified else "multicast"
        raise table.error(name, f"{text!r} is a {kind} address; a candidate needs a unicast host address")
    return str(address)


_ICE_URL_RE = re.compile(
    # RFC 7064 §3.1 (stun/stuns) and RFC 7065 §3.1 (turn/turns): scheme ":" host [":" port] ["?transport=" ...]
    r"(?P<scheme>[a-z]+):(?P<host>\[[^\]]*\]|[^:?\[\]]+)(?::(?P<port>[0-9]+))?(?:\?(?P<query>.*))?",
    re.DOTALL,
)


def _check_ice_url(table: _Table, name: str, url: str) -> str:
    """Validate one ICE server URL and return its scheme."""
    match = _ICE_URL_RE.fullmatch(url)
    scheme = match["scheme"] if match else url.partition(":")[0]
    if scheme not in ICE_URL_SCHEMES:
        raise table.error(name, f"must start with stun:, stuns:, turn: or turns:, got {url!r}")
    if match is None:
        raise table.error(name, f'expected "{scheme}:HOST[:PORT]", got {url!r}')
    host = match["host"]
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise table.error(name, f"{host} is not an IPv6 address in {url!r}") from None
    elif not _is_ipv4_or_hostname(host):
        raise table.error(name, f"{host!r} is neither an IP address nor a host name in {url!r}")
    if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        raise table.error(name, f"port must be 1..65535 in {url!r}")
    query = match["query"]
    if query is not None:
        if scheme in ("stun", "stuns"):
            raise table.error(name, f"{scheme}: URLs take no query (RFC 7064 §3.1), got {url!r}")
        if query not in ("transport=udp", "transport=tcp"):
            raise table.error(name, f'the only query allowed is "?transport=udp" or "?transport=tcp", got {url!r}')
    return scheme


def _check_header_text(value: str) -> str | None:
    # Sent as an RFC 8288 quoted-string in a Link header: printable ASCII only, so no header injection.
    if all(" " <= char <= "~" for char in value):
        return None
    return "must be printable ASCII (it is sent in a Link header)"


def _check_bearer_token(value: str) -> str | None:
    if _B64TOKEN_RE.fullmatch(value):
        return None
    return "must be an RFC 6750 §2.1 token: letters, digits and - . _ ~ + / with optional trailing ="


# --------------------------------------------------------------------------------------------------------------
# Typed access to one TOML table
# --------------------------------------------------------------------------------------------------------------

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class _Table:
    """One decoded TOML table plus where it sits, so every error can name the file and the dotted key."""

    source: str
    prefix: str
    values: Mapping[str, Any]

    def key(self, name: str) -> str:
        part = name if _BARE_KEY_RE.fullmatch(name.partition("[")[0]) else _toml_quote(name)
        return f"{self.prefix}.{part}" if self.prefix else part

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    def reject_unknown(self, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for name, value in self.values.items():
            if name in allowed:
                continue
            problem = "unknown table" if isinstance(value, dict) else "unknown key"
            close = difflib.get_close_matches(name, allowed, n=1)
            if close:
                problem += f" (did you mean {self.key(close[0])}?)"
            else:
                problem += f"; expected one of: {', '.join(allowed)}" if allowed else ""
            raise self.error(name, problem)

    def table(self, name: str) -> _Table:
        value = self.values.get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, f"must be a table ([{self.key(name)}]), got {_describe(value)}")
        return _Table(self.source, self.key(name), value)

    def _get(self, name: str, default: Any, expected: str, accept: Callable[[Any], bool]) -> Any:
        if name not in self.values:
            return default
        value = self.values[name]
        if not accept(value):
            raise self.error(name, f"must be {expected}, got {_describe(value)}")
        return value

    def string(self, name: str, default: str) -> str:
        return self._get(name, default, "a string", lambda v: isinstance(v, str))

    def boolean(self, name: str, default: bool) -> bool:
        return self._get(name, default, "true or false", lambda v: isinstance(v, bool))

    def optional_string(self, name: str, check: Callable[[str], str | None] | None = None) -> str | None:
        value = self._get(name, None, "a string", lambda v: isinstance(v, str))
        if value is None:
            return None
        if value == "":
            raise self.error(name, "must not be empty; remove the key instead")
        problem = check(value) if check else None
        if problem:
            raise self.error(name, problem)
        return value

    def string_list(self, name: str, default: Iterable[str]) -> list[str]:
        value = self._get(name, list(default), "an array of strings", lambda v: isinstance(v, list))
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{name}[{index}]", f"must be a string, got {_describe(item)}")
        return list(value)

    def integer(self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self._get(name, default, "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self.error(name, f"must be {_range_text(minimum, maximum)}, got {value}")
        return value

    def non_negative_number(self, name: str, default: float) -> float:
        """Seconds that may be 0 (off): an integer or float, finite and >= 0."""
        value = self._get(
            name, default, "a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
        )
        if not math.isfinite(value) or value < 0:
            raise self.error(name, f"must be a number >= 0, got {value}")
        return float(value)

    def positive_number(self, name: str, default: float) -> float:
        """Seconds and the like: an integer or float, finite and > 0."""
        value = self._get(
            name, default, "a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
        )
        if not math.isfinite(value) or value <= 0:
            raise self.error(name, f"must be a number > 0, got {value}")
        return float(value)


def _range_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"between {minimum} and {maximum}"
    if minimum is not None:
        return f">= {minimum}"
    return f"<= {maximum}"


def _toml_quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


_TOML_TYPE_NAMES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}


def _describe(value: Any) -> str:
    """"string 'abc'", "integer 5", "table": how a wrong value looked in the TOML."""
    type_name = _TOML_TYPE_NAMES.get(type(value), "date/time")
    if isinstance(value, dict):
        return "a table"
    shown = repr(value) if not isinstance(value, bool) else str(value).lower()
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{type_name} {shown}"
