"""Only the optional C fast path lives here; everything else is in pyproject.toml.

`optional=True`: if the extension cannot be compiled (no C compiler, no Python headers, not POSIX) setuptools
warns and the install goes on; gateway/aiortc_adapter.py then uses its pure-Python egress path (issue #6).
"""

from setuptools import Extension, setup

# -ffp-contract=off: no fused multiply-adds, so the C bandwidth filter (FeedbackMatcher) computes the very doubles
# simulcast/bwe.py does (tests/test_bwe.py compares whole runs of both).
setup(ext_modules=[Extension("gateway._srtp_send", ["gateway/_srtp_send.c"], optional=True,
                             extra_compile_args=["-ffp-contract=off"])])
