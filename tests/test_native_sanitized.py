"""gateway/_srtp_send.c built with AddressSanitizer and UndefinedBehaviorSanitizer.

Its FeedbackMatcher parses a viewer's transport-cc feedback, input from the network, and writes into the send log's
arrays; its lanes write headers into fixed buffers. So a second build of the same source, with both sanitizers, runs
in a child process (libasan preloaded, since the interpreter is not built with it): 30,000 fuzzed FCIs (random bytes,
and well-formed headers with random chunks, runs up to 65,535 statuses and deltas cut anywhere), then the compiled
feedback tests of tests/test_bwe.py and the lane tests of tests/test_lanes.py; then 12,000 fuzzed SRTP and SRTCP datagrams
(whole, cut, lengthened, a bit flipped, random) through its Unprotector, and the adapter's unprotect tests. A read or write out of bounds, a
use-after-free or undefined behaviour (shifts, overflow) ends the child with a report, and the test fails.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

RUNNER = r'''
import importlib.util, random, struct, sys
spec = importlib.util.spec_from_file_location("gateway._srtp_send", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
import gateway
sys.modules["gateway._srtp_send"] = module
gateway._srtp_send = module
from gateway import aiortc_adapter
assert aiortc_adapter.FeedbackMatcher is module.FeedbackMatcher, "the sanitized build is not the one in use"
print("sanitized build in use:", module.__file__, flush=True)

from simulcast.bwe import Prober, SendLog, SendSideEstimator
rng = random.Random(7)
estimator = SendSideEstimator(SendLog(capacity=1024), prober=Prober())
estimator.use_matcher(module.FeedbackMatcher)
for k in range(3000):
    estimator._log.record(k & 0xFFFF, 1000, 1_000_000 + k * 1000, rng.choice((None, 2)))
accepted = refused = 0
for _ in range(30_000):
    if rng.random() < 0.3:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
    else:
        count = rng.choice((1, 7, 14, 100, 8191, 65535, rng.randrange(1, 3000)))
        head = struct.pack("!HHI", rng.randrange(65536), count, rng.getrandbits(32))
        chunks = b"".join(struct.pack("!H", rng.choice((
            0x2000 | rng.randrange(0x2000), 0x4000 | rng.randrange(0x2000), 0x8000 | rng.getrandbits(14),
            0xC000 | rng.getrandbits(14), rng.getrandbits(16)))) for _ in range(rng.randrange(0, 40)))
        data = head + chunks + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
    try:
        estimator._native_match(data, 0)
        accepted += 1
    except ValueError:
        refused += 1
print(f"fuzzed FCIs: {accepted} accepted, {refused} refused", flush=True)

# SRTP/SRTCP from peers through the compiled Unprotector: random datagrams, and protected packets left whole,
# cut short, lengthened or with one byte flipped.
import pylibsrtp
from pylibsrtp import Policy, Session
key = bytes(range(28))
profile = Policy.SRTP_PROFILE_AEAD_AES_128_GCM
tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
accepted = refused = 0
for rtcp in (False, True):
    unprotect = aiortc_adapter.unprotector(rx, rtcp=rtcp)
    assert "Unprotector" in repr(unprotect), unprotect
    for i in range(6000):
        if rtcp:
            clear = bytes([0x80, 201, 0, 1]) + rng.getrandbits(32).to_bytes(4, "big")
            data = tx.protect_rtcp(clear)
        else:
            clear = bytes([0x80, 96]) + (i & 0xFFFF).to_bytes(2, "big") + bytes(4) + (7).to_bytes(4, "big")
            data = tx.protect(clear + bytes(rng.randrange(0, 1200)))
        kind = rng.randrange(5)
        if kind == 1:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 1700)))
        elif kind == 2:
            data = data[: rng.randrange(len(data))]
        elif kind == 3:
            data = data + bytes(rng.randrange(1, 400))
        elif kind == 4:
            flipped = bytearray(data)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            data = bytes(flipped)
        try:
            unprotect(data)
            accepted += 1
        except pylibsrtp.Error:
            refused += 1
print(f"fuzzed SRTP: {accepted} accepted, {refused} refused", flush=True)

import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_bwe.py", "-k", "compiled or test_lanes", "tests/test_lanes.py",
                      "tests/test_aiortc_adapter.py"]))
'''


def _runtime(name: str) -> str | None:
    """The path gcc links `name` from, or None when it has none (gcc prints the bare name then)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    path = subprocess.run([gcc, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.timeout(300)
def test_compiled_extension_under_address_and_undefined_behaviour_sanitizers(tmp_path: pathlib.Path) -> None:
    asan, ubsan = _runtime("libasan.so"), _runtime("libubsan.so")
    if asan is None or ubsan is None:
        pytest.skip("gcc with libasan and libubsan is needed (Debian: gcc)")
    library = tmp_path / ("_srtp_send" + sysconfig.get_config_var("EXT_SUFFIX"))
    build = subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer", "-ffp-contract=off",
         "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
         f"-I{sysconfig.get_paths()['include']}", str(ROOT / "gateway" / "_srtp_send.c"), "-o", str(library)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    # PYTHONMALLOC=malloc: every Python object its own malloc, so ASan puts its red zones around each (bytes objects
    # from pymalloc's arenas would hide a read past their end).
    env = dict(os.environ, LD_PRELOAD=f"{asan}:{ubsan}", ASAN_OPTIONS="detect_leaks=0", PYTHONMALLOC="malloc",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", RUNNER, str(library)], capture_output=True, text=True, env=env,
                         cwd=str(ROOT), timeout=280)
    output = run.stdout + run.stderr
    assert "AddressSanitizer" not in output and "runtime error" not in output, output[-6000:]
    assert run.returncode == 0, output[-6000:]
    assert f"sanitized build in use: {library}" in run.stdout, output[-3000:]
    counts = run.stdout.split("fuzzed FCIs: ")[1].split()
    assert int(counts[0]) > 1000 and int(counts[2]) > 1000, run.stdout  # both paths of the parser were taken
    counts = run.stdout.split("fuzzed SRTP: ")[1].split()
    assert int(counts[0]) > 1000 and int(counts[2]) > 1000, run.stdout  # authenticated and refused packets
    assert " passed" in run.stdout and "failed" not in run.stdout, run.stdout[-3000:]
    # -k applies to every file given: the lane tests ran only once the expression named their module. The
    # compiled tests of test_bwe.py (5) and test_aiortc_adapter.py (3) and test_lanes.py's 12, at least.
    passed = int(run.stdout.split(" passed")[0].rsplit(None, 1)[-1])
    assert passed >= 20, run.stdout[-3000:]
