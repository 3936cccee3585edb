"""gateway.config: the documented defaults file, valid configurations and one error per kind of mistake."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from conftest import TEST_CONFIG, to_toml
from gateway.config import (
    Config,
    ConfigError,
    HttpConfig,
    IceServer,
    RtcConfig,
    StreamAuth,
    load_config,
    parse_config,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULTS_FILE = ROOT / "config.toml"


def write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def load_text(tmp_path: pathlib.Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


# --------------------------------------------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------------------------------------------


def test_defaults_file_equals_builtin_defaults():
    assert load_config(DEFAULTS_FILE) == load_config(None) == Config()


def test_builtin_defaults():
    config = load_config(None)
    assert config.http == HttpConfig(host="127.0.0.1", port=8080, cors_allow_origin="*")
    assert config.rtc == RtcConfig(
        ice_addresses=(),
        announced_ip=None,
        ice_timeout=30.0,
        consent_interval=5.0,
        consent_failures=6,
        keyframe_request_interval=0.5,
        packet_history=1024,
        udp_receive_buffer=4 * 1024 * 1024,
    )
    assert config.ice_servers == ()
    assert dict(config.streams) == {}
    assert config.whep_retry_after == 5
    assert config.log_level == "info"


@pytest.mark.parametrize(
    "key",
    [f"{name} =" for name in ("listen", "cors_allow_origin", "retry_after", "level")]
    + [f"{f.name} =" for f in dataclasses.fields(RtcConfig)]
    + [f"{f.name} =" for f in dataclasses.fields(IceServer)]
    + [f"{f.name} =" for f in dataclasses.fields(StreamAuth)],
)
def test_defaults_file_documents_every_key(key):
    assert key in DEFAULTS_FILE.read_text()


def test_config_is_immutable():
    config = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.http.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.streams["x"] = StreamAuth()  # type: ignore[index]


# --------------------------------------------------------------------------------------------------------------
# Valid configurations
# --------------------------------------------------------------------------------------------------------------

FULL = """
[http]
listen = "0.0.0.0:9000"
cors_allow_origin = "https://studio.example.com"

[rtc]
ice_addresses = ["127.0.0.1", "2001:DB8::0:1"]
announced_ip = "203.0.113.7"
ice_timeout = 12
consent_interval = 0.5
consent_failures = 4
keyframe_request_interval = 1
packet_history = 64
udp_receive_buffer = 0
udp_port_min = 50000
udp_port_max = 50000

[[ice_servers]]
urls = ["stun:stun.example.net", "stuns:stun.example.net:5349"]

[[ice_servers]]
urls = ["turn:turn.example.net?transport=udp", "turns:[2001:db8::2]:443?transport=tcp"]
username = "user"
credential = "p\\"a ss"

[[ice_servers]]
urls = ["turn:192.0.2.10:3478"]
secret = "s3cret"
ttl = 600

[streams.live]
publish_token = "pub-token"
play_token = "play+token/=="

[streams."cam.1"]
play_token = "viewer"

[streams.open-stream]

[whep]
retry_after = 0

[log]
level = "DEBUG"
"""


def test_full_config(tmp_path):
    config = load_text(tmp_path, FULL)
    assert config.http == HttpConfig(host="0.0.0.0", port=9000, cors_allow_origin="https://studio.example.com")
    assert config.rtc == RtcConfig(
        ice_addresses=("127.0.0.1", "2001:db8::1"),
        announced_ip="203.0.113.7",
        ice_timeout=12.0,
        consent_interval=0.5,
        consent_failures=4,
        keyframe_request_interval=1.0,
        packet_history=64,
        udp_receive_buffer=0,
        udp_port_min=50000,
        udp_port_max=50000,
    )
    assert config.ice_servers == (
        IceServer(urls=("stun:stun.example.net", "stuns:stun.example.net:5349")),
        IceServer(
            urls=("turn:turn.example.net?transport=udp", "turns:[2001:db8::2]:443?transport=tcp"),
            username="user",
            credential='p"a ss',
        ),
        IceServer(urls=("turn:192.0.2.10:3478",), secret="s3cret", ttl=600),
    )
    assert dict(config.streams) == {
        "live": StreamAuth(publish_token="pub-token", play_token="play+token/=="),
        "cam.1": StreamAuth(play_token="viewer"),
        "open-stream": StreamAuth(),
    }
    assert config.whep_retry_after == 0
    assert config.log_level == "debug"


def test_test_suite_gateway_config_is_valid(tmp_path):
    """The config conftest.launch_gateway writes for every gateway test loads."""
    data = dict(TEST_CONFIG, http={"listen": "127.0.0.1:18080"})
    config = load_text(tmp_path, to_toml(data))
    assert (config.http.host, config.http.port) == ("127.0.0.1", 18080)
    assert config.rtc.ice_addresses == ("127.0.0.1",)
    assert config.rtc.consent_interval == 0.5


def test_parse_config_from_dict():
    config = parse_config({"whep": {"retry_after": 9}})
    assert config.whep_retry_after == 9


# --------------------------------------------------------------------------------------------------------------
# Listen address
# --------------------------------------------------------------------------------------------------------------


def test_listen_override_replaces_file_value(tmp_path):
    path = write(tmp_path, '[http]\nlisten = "127.0.0.1:8080"\ncors_allow_origin = "http://localhost:3000"\n')
    config = load_config(path, listen="0.0.0.0:9090")
    assert config.http == HttpConfig(host="0.0.0.0", port=9090, cors_allow_origin="http://localhost:3000")


def test_listen_override_without_file():
    assert load_config(None, listen="localhost:0").http == HttpConfig(host="localhost", port=0)


@pytest.mark.parametrize(
    "listen, host, port",
    [("[::1]:8080", "::1", 8080), ("[::]:443", "::", 443), ("[fe80::1%eth0]:9", "fe80::1%eth0", 9)],
)
def test_ipv6_listen(tmp_path, listen, host, port):
    config = load_text(tmp_path, f'[http]\nlisten = "{listen}"\n')
    assert (config.http.host, config.http.port) == (host, port)
    assert load_config(None, listen=listen).http.host == host


@pytest.mark.parametrize(
    "listen, problem",
    [
        ("8080", "HOST:PORT"),
        (":8080", "HOST:PORT"),
        ("::1:8080", "in brackets"),
        ("[::1]8080", "HOST:PORT"),
        ("[::1:8080", "HOST:PORT"),
        ("[127.0.0.1]:80", "not an IPv6 address"),
        ("256.0.0.1:80", "neither an IPv4 address nor a host name"),
        ("bad_host:80", "neither an IPv4 address nor a host name"),
        ("127.0.0.1:http", "port must be a number"),
        ("127.0.0.1:-1", "port must be a number"),
        ("127.0.0.1:65536", "port must be 1..65535"),
    ],
)
def test_malformed_listen(tmp_path, listen, problem):
    path = write(tmp_path, f'[http]\nlisten = "{listen}"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert str(excinfo.value).startswith(f"{path}: http.listen: ")
    assert problem in str(excinfo.value)

    with pytest.raises(ConfigError) as excinfo:
        load_config(None, listen=listen)
    assert "--listen" in str(excinfo.value) and problem in str(excinfo.value)


# --------------------------------------------------------------------------------------------------------------
# Errors: every message names the file, the dotted key and the problem
# --------------------------------------------------------------------------------------------------------------

ERRORS = [
    # unknown tables and keys (typos)
    ("[htpp]\n", "htpp", "unknown table (did you mean http?)"),
    ("[rtc]\nice_timout = 5\n", "rtc.ice_timout", "did you mean rtc.ice_timeout?"),
    ("[http]\nport = 80\n", "http.port", "unknown key"),
    ("[whep]\nretry = 1\n", "whep.retry", "did you mean whep.retry_after?"),
    ("[log]\nlevels = 'info'\n", "log.levels", "did you mean log.level?"),
    ("[[ice_servers]]\nurls = ['stun:a']\nusername_ = 'x'\n", "ice_servers[0].username_", "unknown key"),
    ("[streams.live]\nplay = 'x'\n", "streams.live.play", "unknown key"),
    ("verbose = true\n", "verbose", "unknown key"),
    # wrong types
    ("[rtc]\nice_timeout = '30'\n", "rtc.ice_timeout", "must be a number, got string '30'"),
    ("[rtc]\nice_timeout = true\n", "rtc.ice_timeout", "must be a number, got boolean true"),
    ("[rtc]\nconsent_failures = 6.0\n", "rtc.consent_failures", "must be an integer, got float 6.0"),
    ("[rtc]\nice_addresses = '127.0.0.1'\n", "rtc.ice_addresses", "must be an array of strings"),
    ("[rtc]\nice_addresses = [1]\n", "rtc.ice_addresses[0]", "must be a string, got integer 1"),
    ("[http]\nlisten = 8080\n", "http.listen", "must be a string"),
    ("http = 1\n", "http", "must be a table"),
    ("ice_servers = ['stun:a']\n", "ice_servers", "must be an array of tables"),
    ("[streams]\nlive = 'token'\n", "streams.live", "must be a table"),
    ("[whep]\nretry_after = 1.5\n", "whep.retry_after", "must be an integer"),
    ("[log]\nlevel = 10\n", "log.level", "must be a string"),
    # out-of-range numbers
    ("[rtc]\nice_timeout = 0\n", "rtc.ice_timeout", "must be a number > 0, got 0"),
    ("[rtc]\nconsent_interval = -1.5\n", "rtc.consent_interval", "must be a number > 0"),
    ("[rtc]\nkeyframe_request_interval = nan\n", "rtc.keyframe_request_interval", "must be a number > 0"),
    ("[rtc]\nice_timeout = inf\n", "rtc.ice_timeout", "must be a number > 0"),
    ("[rtc]\nconsent_failures = 0\n", "rtc.consent_failures", "must be >= 1, got 0"),
    ("[rtc]\npacket_history = 32\n", "rtc.packet_history", "between 64 and 65536"),
    ("[rtc]\npacket_history = 131072\n", "rtc.packet_history", "between 64 and 65536"),
    ("[rtc]\npacket_history = 1000\n", "rtc.packet_history", "power of two"),
    ("[whep]\nretry_after = -1\n", "whep.retry_after", "must be >= 0"),
    ("[rtc]\nudp_receive_buffer = -1\n", "rtc.udp_receive_buffer", "must be between 0 and"),
    ("[[ice_servers]]\nurls = ['turn:t']\nsecret = 's'\nttl = 0\n", "ice_servers[0].ttl", "must be >= 1"),
    # other values
    ("[log]\nlevel = 'verbose'\n", "log.level", "must be one of debug, info, warning, error, critical"),
    ("[http]\ncors_allow_origin = 'https://a.example/path'\n", "http.cors_allow_origin", "single origin"),
    ("[http]\ncors_allow_origin = ''\n", "http.cors_allow_origin", "single origin"),
    # IP addresses
    ("[rtc]\nice_addresses = ['localhost']\n", "rtc.ice_addresses[0]", "'localhost' is not an IP address"),
    ("[rtc]\nice_addresses = ['10.0.0.1', '10.0.0.256']\n", "rtc.ice_addresses[1]", "not an IP address"),
    ("[rtc]\nice_addresses = ['0.0.0.0']\n", "rtc.ice_addresses[0]", "unspecified address"),
    ("[rtc]\nice_addresses = ['::1', '0::1']\n", "rtc.ice_addresses[1]", "listed twice"),
    ("[rtc]\nannounced_ip = 'example.com'\n", "rtc.announced_ip", "not an IP address"),
    ("[rtc]\nannounced_ip = '224.0.0.1'\n", "rtc.announced_ip", "multicast address"),
    # ICE servers
    ("[[ice_servers]]\nusername = 'u'\n", "ice_servers[0].urls", "is required"),
    ("[[ice_servers]]\nurls = []\n", "ice_servers[0].urls", "at least one URL"),
    ("[[ice_servers]]\nurls = ['http://stun.example']\n", "ice_servers[0].urls[0]", "must start with stun:"),
    ("[[ice_servers]]\nurls = ['stun.example.net']\n", "ice_servers[0].urls[0]", "must start with stun:"),
    ("[[ice_servers]]\nurls = ['stun:']\n", "ice_servers[0].urls[0]", 'expected "stun:HOST[:PORT]"'),
    ("[[ice_servers]]\nurls = ['stun:a b']\n", "ice_servers[0].urls[0]", "neither an IP address nor a host name"),
    ("[[ice_servers]]\nurls = ['stun:a:0']\n", "ice_servers[0].urls[0]", "port must be 1..65535"),
    ("[[ice_servers]]\nurls = ['stun:a?transport=udp']\n", "ice_servers[0].urls[0]", "take no query"),
    (
        "[[ice_servers]]\nurls = ['turn:a?transport=sctp']\nusername = 'u'\ncredential = 'c'\n",
        "ice_servers[0].urls[0]",
        "?transport=udp",
    ),
    (
        "[[ice_servers]]\nurls = ['turn:a']\nusername = 'u'\ncredential = 'c'\nsecret = 's'\n",
        "ice_servers[0].username",
        "cannot be combined with secret",
    ),
    ("[[ice_servers]]\nurls = ['turn:a']\nusername = 'u'\n", "ice_servers[0].credential", "is required"),
    ("[[ice_servers]]\nurls = ['turn:a']\ncredential = 'c'\n", "ice_servers[0].username", "is required"),
    ("[[ice_servers]]\nurls = ['turn:a']\n", "ice_servers[0].urls[0]", "need username+credential or secret"),
    (
        "[[ice_servers]]\nurls = ['stun:a']\nusername = 'u'\ncredential = 'c'\n",
        "ice_servers[0].urls[0]",
        "stun: URLs take no credentials",
    ),
    (
        "[[ice_servers]]\nurls = ['turn:a', 'stuns:a']\nsecret = 's'\n",
        "ice_servers[0].urls[1]",
        "stuns: URLs take no credentials",
    ),
    ("[[ice_servers]]\nurls = ['stun:a']\nttl = 60\n", "ice_servers[0].ttl", "only applies to time-limited"),
    (
        "[[ice_servers]]\nurls = ['turn:a']\nusername = 'u'\ncredential = \"line\\nbreak\"\n",
        "ice_servers[0].credential",
        "printable ASCII",
    ),
    ("[[ice_servers]]\nurls = ['turn:a']\nsecret = ''\n", "ice_servers[0].secret", "must not be empty"),
    (
        "[[ice_servers]]\nurls = ['stun:a']\n[[ice_servers]]\nurls = ['turn:b']\n",
        "ice_servers[1].urls[0]",
        "need username+credential",
    ),
    # rtc.udp_port_min..udp_port_max
    ("[rtc]\nudp_port_min = 50000\n", "rtc.udp_port_max", "must be set with the other end of the range"),
    ("[rtc]\nudp_port_max = 50000\n", "rtc.udp_port_min", "must be set with the other end of the range"),
    ("[rtc]\nudp_port_min = 50010\nudp_port_max = 50000\n", "rtc.udp_port_max", "must be >= udp_port_min (50010)"),
    ("[rtc]\nudp_port_min = 50000\nudp_port_max = 70000\n", "rtc.udp_port_max", "between 0 and 65535"),
    ("[rtc]\nudp_port = 40000\nudp_port_min = 50000\nudp_port_max = 50100\n", "rtc.udp_port_min", "set one or the other"),
    # streams
    ('[streams."a/b"]\n', 'streams."a/b"', "a stream name may contain only"),
    ('[streams.".."]\n', 'streams.".."', "not only dots"),
    ("[streams.live]\npublish_token = 'has space'\n", "streams.live.publish_token", "RFC 6750"),
    ("[streams.live]\nplay_token = ''\n", "streams.live.play_token", "must not be empty"),
    ("[streams.live]\nplay_token = 5\n", "streams.live.play_token", "must be a string, got integer 5"),
]


@pytest.mark.parametrize("text, key, problem", ERRORS, ids=[f"{i}-{e[1]}" for i, e in enumerate(ERRORS)])
def test_error_names_file_key_and_problem(tmp_path, text, key, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    error = excinfo.value
    assert (error.source, error.key) == (str(path), key)
    assert problem in error.problem
    assert str(error) == f"{path}: {key}: {error.problem}"


def test_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert str(excinfo.value) == f"{path}: cannot read the file: No such file or directory"


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path)


def test_toml_syntax_error_gives_line(tmp_path):
    path = write(tmp_path, '[http]\nlisten = "127.0.0.1:8080"\nlisten = "127.0.0.1:9090"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in message


def test_unterminated_string(tmp_path):
    path = write(tmp_path, '[rtc]\nannounced_ip = "10.0.0.1\n')
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 2"):
        load_config(path)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[log]\nlevel = "\xe9"\n')
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)


def test_parse_config_error_names_source():
    with pytest.raises(ConfigError) as excinfo:
        parse_config({"rtc": {"ice_timeout": -1}}, source="inline")
    assert str(excinfo.value) == "inline: rtc.ice_timeout: must be a number > 0, got -1"


# --------------------------------------------------------------------------------------------------------------
# Publisher continuity and placement: whep.publisher_grace, whip.takeover, cluster.max_publishers/over_capacity
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["publisher_grace =", "takeover =", "max_publishers =", "over_capacity ="])
def test_defaults_file_documents_continuity_keys(key):
    assert key in DEFAULTS_FILE.read_text()


def test_continuity_keys(tmp_path):
    config = load_text(
        tmp_path,
        "[whep]\npublisher_grace = 12.5\n[whip]\ntakeover = true\n"
        '[cluster]\nmax_publishers = 3\nover_capacity = "redirect"\n',
    )
    assert (config.whep_publisher_grace, config.whip_takeover) == (12.5, True)
    assert (config.cluster.max_publishers, config.cluster.over_capacity) == (3, "redirect")
    defaults = load_config(None)
    assert (defaults.whep_publisher_grace, defaults.whip_takeover) == (10.0, False)
    assert (defaults.cluster.max_publishers, defaults.cluster.over_capacity) == (0, "reject")


@pytest.mark.parametrize(
    "text, key, problem",
    [
        ("[whep]\npublisher_grace = -1\n", "whep.publisher_grace", "must be a number >= 0"),
        ('[whip]\ntakeover = "yes"\n', "whip.takeover", "must be true or false"),
        ("[whip]\ntake_over = true\n", "whip.take_over", "did you mean whip.takeover?"),
        ("[cluster]\nmax_publishers = -2\n", "cluster.max_publishers", "must be >= 0"),
        ('[cluster]\nover_capacity = "queue"\n', "cluster.over_capacity", 'must be "reject" or "redirect"'),
    ],
)
def test_continuity_key_errors(tmp_path, text, key, problem):
    with pytest.raises(ConfigError) as raised:
        load_text(tmp_path, text)
    assert raised.value.key == key and problem in raised.value.problem, str(raised.value)
