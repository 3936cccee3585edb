"""Run the real `whipgate` CLI with every decoder and encoder entry point booby-trapped.

The gateway must forward RTP without decoding or re-encoding it. Tests start the gateway through this
wrapper: any attempt to build an aiortc codec or a PyAV codec context is written to the file named by
WHIPGATE_CODEC_GUARD_LOG and raises, so a media test that still sees frames at its viewers, with the log
empty, shows the forwarding path decodes nothing.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import traceback

GUARD_LOG_ENV = "WHIPGATE_CODEC_GUARD_LOG"


def _record(name: str) -> None:
    path = os.environ.get(GUARD_LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{name} was called\n{''.join(traceback.format_stack())}\n")


def _trap(name: str):
    def trapped(*args, **kwargs):
        _record(name)
        raise RuntimeError(f"{name} must not run inside the gateway")

    return trapped


class _TrappedCodecContext:
    create = staticmethod(_trap("av.CodecContext.create"))


def install_guards() -> list[str]:
    """Trap every codec constructor reachable from aiortc and PyAV; return what was trapped."""
    import av
    import aiortc.codecs

    trapped = []
    av.CodecContext = _TrappedCodecContext  # aiortc's codecs call av.CodecContext.create(...)
    av.open = _trap("av.open")
    trapped += ["av.CodecContext.create", "av.open"]
    for name in ("get_decoder", "get_encoder"):
        setattr(aiortc.codecs, name, _trap(f"aiortc.codecs.{name}"))
        trapped.append(f"aiortc.codecs.{name}")
    for modname in ("aiortc.rtcrtpreceiver", "aiortc.rtcrtpsender"):
        mod = importlib.import_module(modname)
        for name in ("get_decoder", "get_encoder"):
            if hasattr(mod, name):
                setattr(mod, name, _trap(f"{modname}.{name}"))
                trapped.append(f"{modname}.{name}")
    for info in pkgutil.iter_modules(aiortc.codecs.__path__):
        mod = importlib.import_module(f"aiortc.codecs.{info.name}")
        for attr, value in vars(mod).items():
            if isinstance(value, type) and attr.endswith(("Decoder", "Encoder")) and value.__module__ == mod.__name__:
                value.__init__ = _trap(f"{mod.__name__}.{attr}")
                trapped.append(f"{mod.__name__}.{attr}")
    return trapped


if __name__ == "__main__":
    # Run as a script: make the checkout importable even before `pip install -e .`.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    install_guards()
    from gateway.cli import main

    sys.exit(main(sys.argv[1:]))
