"""gateway.auth: Bearer token checks (RFC 6750 §2.1) and per-stream token lookup."""

from __future__ import annotations

import pytest

from gateway.auth import bearer_token_matches, stream_tokens
from gateway.config import StreamAuth, parse_config


@pytest.mark.parametrize("authorization", [None, "", "Bearer anything", "Basic dXNlcjpwYXNz"])
def test_no_expected_token_always_matches(authorization):
    assert bearer_token_matches(authorization, None)


@pytest.mark.parametrize(
    "authorization",
    ["Bearer s3cr3t", "bearer s3cr3t", "BEARER s3cr3t", "BeArEr s3cr3t", "Bearer   s3cr3t", " Bearer s3cr3t "],
)
def test_matching_token(authorization):
    assert bearer_token_matches(authorization, "s3cr3t")


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "s3cr3t",
        "Bearer s3cr3",
        "Bearer s3cr3tt",
        "Bearer S3CR3T",
        "Basic s3cr3t",
        "Bearers3cr3t",
        "Bearer s3cr3t extra",
        "Token s3cr3t",
        "Bearer sécret",
    ],
)
def test_wrong_or_missing_token(authorization):
    assert not bearer_token_matches(authorization, "s3cr3t")


def test_token_with_b64_characters():
    assert bearer_token_matches("Bearer a-b.c_d~e+f/g==", "a-b.c_d~e+f/g==")


def test_stream_tokens():
    config = parse_config({"streams": {"live": {"publish_token": "pub"}, "show": {"play_token": "view"}}})
    assert stream_tokens(config, "live") == StreamAuth(publish_token="pub")
    assert stream_tokens(config, "show") == StreamAuth(play_token="view")
    assert stream_tokens(config, "other") == StreamAuth()
