"""An error nobody foresaw in a request handler: 500 for the client, the traceback in the gateway's log."""

from __future__ import annotations

import logging

import pytest
from litestar.testing import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from gateway.sessions import SessionManager
from sdp_offers import ffmpeg_offer


def test_an_unexpected_error_is_a_500_whose_traceback_is_logged(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    async def broken(self: SessionManager, *args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug nobody foresaw")

    monkeypatch.setattr(SessionManager, "publish", broken)
    app = create_app(parse_config({"rtc": {"ice_addresses": ["127.0.0.1"]}}))
    with caplog.at_level(logging.ERROR, logger="gateway.app"), TestClient(app) as client:
        response = client.post("/whip/live", content=ffmpeg_offer(), headers={"Content-Type": "application/sdp"})
        missing = client.get("/no/such/page")
    assert response.status_code == 500
    assert "a bug nobody foresaw" not in response.text  # nothing of the internals reaches the client
    failures = [r for r in caplog.records if r.name == "gateway.app" and r.exc_info]
    assert len(failures) == 1, caplog.text
    assert failures[0].getMessage() == "POST /whip/live failed"
    assert "RuntimeError: a bug nobody foresaw" in caplog.text
    assert missing.status_code == 404  # an HTTP error a handler meant is not logged as a failure
