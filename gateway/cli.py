"""The `whipgate` command line: `whipgate serve [--config FILE] [--listen HOST:PORT]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING

from gateway.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    import uvicorn

__all__ = ["main"]

PROG = "whipgate"
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required (try '{PROG} serve')", file=sys.stderr)
        return EXIT_USAGE
    return args.run(args)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="WHIP/WHEP live-streaming gateway.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the gateway", description="Run the gateway until SIGTERM/SIGINT.")
    serve.add_argument("--config", metavar="FILE", help="TOML configuration file (default: built-in defaults)")
    serve.add_argument("--listen", metavar="HOST:PORT", help="override http.listen, e.g. 0.0.0.0:8080 or [::]:8080")
    serve.set_defaults(run=_serve)
    return parser


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, listen=args.listen)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(config)
    loop = _install_uvloop()

    import uvicorn

    from gateway.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=config.http.host,
            port=config.http.port,
            loop=loop,
            log_level=config.log_level,
            lifespan="on",
        )
    )
    return _run_until_signalled(server)


def _configure_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _install_uvloop() -> str:
    """Make uvloop the event loop when it is installed; return uvicorn's name for the loop to use."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def _run_until_signalled(server: uvicorn.Server) -> int:
    """Run uvicorn; a SIGTERM/SIGINT shuts it down gracefully and the process exits 0.

    uvicorn installs its own handlers while serving and, once shut down, re-raises the signal it caught
    against the handlers that were there before it. With the default handlers that would kill the process
    by the signal after the clean shutdown; these handlers absorb the re-raised signal, and one that arrives
    before uvicorn is listening still asks the server to stop.
    """

    def request_exit(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.signal(signum, request_exit) for signum in handled}
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind or the app fails to start
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
