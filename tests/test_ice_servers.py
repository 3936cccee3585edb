"""gateway.ice_servers: Link header values for STUN/TURN servers (RFC 9725 §4.6)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

from gateway.config import IceServer, parse_config
from gateway.ice_servers import ice_server_links

NOW = 1_700_000_000.75


def test_no_servers_no_links():
    assert ice_server_links([], now=NOW) == []


def test_stun_server():
    assert ice_server_links([IceServer(urls=("stun:stun.example.net",))], now=NOW) == [
        '<stun:stun.example.net>; rel="ice-server"'
    ]


def test_turn_server_with_static_credentials():
    server = IceServer(urls=("turn:turn.example.net?transport=udp",), username="user", credential="pass")
    assert ice_server_links([server], now=NOW) == [
        '<turn:turn.example.net?transport=udp>; rel="ice-server"; username="user"; credential="pass";'
        ' credential-type="password"'
    ]


def test_one_link_per_url_in_configuration_order():
    servers = [
        IceServer(urls=("stun:stun.example.net", "stun:[2001:db8::1]:3478")),
        IceServer(urls=("turn:t.example.net", "turns:t.example.net:5349?transport=tcp"), username="u", credential="c"),
    ]
    auth = '; username="u"; credential="c"; credential-type="password"'
    assert ice_server_links(servers, now=NOW) == [
        '<stun:stun.example.net>; rel="ice-server"',
        '<stun:[2001:db8::1]:3478>; rel="ice-server"',
        '<turn:t.example.net>; rel="ice-server"' + auth,
        '<turns:t.example.net:5349?transport=tcp>; rel="ice-server"' + auth,
    ]


def test_quotes_and_backslashes_are_escaped():
    server = IceServer(urls=("turn:t.example.net",), username='a"b', credential="c\\d e")
    assert ice_server_links([server], now=NOW) == [
        '<turn:t.example.net>; rel="ice-server"; username="a\\"b"; credential="c\\\\d e"; credential-type="password"'
    ]


def _reference_coturn_password(secret: str, username: str) -> str:
    """The TURN REST API password as coturn checks it: base64 of HMAC-SHA1 keyed by the shared secret."""
    mac = hmac.HMAC(key=secret.encode(), msg=username.encode(), digestmod="sha1")
    return base64.standard_b64encode(mac.digest()).decode()


LINK_RE = re.compile(
    r'<(?P<url>[^>]+)>; rel="ice-server"; username="(?P<username>[^"]+)"; credential="(?P<credential>[^"]+)";'
    r' credential-type="password"'
)


def test_time_limited_credentials_from_shared_secret():
    server = IceServer(urls=("turn:turn.example.net", "turns:turn.example.net:443"), secret="north-wind", ttl=3600)
    links = ice_server_links([server], now=NOW)
    assert len(links) == 2
    matches = [LINK_RE.fullmatch(link) for link in links]
    assert all(matches), links
    assert [m["url"] for m in matches] == ["turn:turn.example.net", "turns:turn.example.net:443"]
    # Both URLs of one server carry the same credentials.
    assert matches[0]["username"] == matches[1]["username"]
    assert matches[0]["credential"] == matches[1]["credential"]

    username, credential = matches[0]["username"], matches[0]["credential"]
    expiry, user = username.split(":")
    assert int(expiry) == int(NOW) + 3600
    assert user == "whipgate"
    assert credential == _reference_coturn_password("north-wind", username)
    assert len(base64.b64decode(credential)) == hashlib.sha1().digest_size


def test_time_limited_credentials_default_to_current_time():
    server = parse_config({"ice_servers": [{"urls": ["turn:t.example.net"], "secret": "s"}]}).ice_servers[0]
    before = int(time.time())
    match = LINK_RE.fullmatch(ice_server_links([server])[0])
    after = int(time.time())
    assert match
    expiry = int(match["username"].split(":")[0])
    assert before + 86400 <= expiry <= after + 86400
    assert match["credential"] == _reference_coturn_password("s", match["username"])


def test_credentials_change_with_time():
    server = IceServer(urls=("turn:t.example.net",), secret="s", ttl=60)
    assert ice_server_links([server], now=NOW) != ice_server_links([server], now=NOW + 1)
