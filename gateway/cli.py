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

    from gateway.workers import WorkerRole

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
    # Internal: how the front process of `http.workers` > 1 starts each worker (gateway/front.py).
    serve.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-urls", help=argparse.SUPPRESS)
    serve.add_argument("--front-url", help=argparse.SUPPRESS)
    serve.add_argument("--front-pid", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(run=_serve)
    return parser


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, listen=args.listen)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    worker = None
    if args.worker is not None:
        from gateway.workers import die_with_parent

        if args.front_pid:
            die_with_parent(args.front_pid)
        worker, config = _worker_role(args, config)
    _configure_logging(config, f"w{worker.index} " if worker is not None else "")
    loop = _install_uvloop()

    if worker is None:
        from gateway.workers import worker_count

        if worker_count(config) > 1:
            from gateway.front import run_front

            return run_front(config, args.config, loop, _run_until_signalled)

    import uvicorn

    from gateway.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, worker),
            host=config.http.host,
            port=config.http.port,
            loop=loop,
            log_level=config.log_level,
            lifespan="on",
        )
    )
    _freeze_startup_objects()
    return _run_until_signalled(server)


def _freeze_startup_objects() -> None:
    """Move everything alive now (modules, classes, functions, the app: ~80,000 objects) out of the collector's
    reach (gc.freeze). They live as long as the process, and every full collection would traverse them again: at
    500 viewers a full collection holds the event loop ~100 ms (BENCHMARKS.md), and packets wait meanwhile.
    Objects made later, the sessions' among them, are collected as usual."""
    import gc

    gc.collect()
    gc.freeze()


def _worker_role(args: argparse.Namespace, config: Config) -> tuple["WorkerRole", Config]:
    """Worker K of the front's workers: its role, and the config it runs with. The front is the node other
    nodes (and clients sent by redirects) talk to: an empty cluster.public_url becomes the front's URL, and
    cluster.node_id gets ".w<K>" appended (empty: "<hostname>:<front port>.w<K>"): with a Redis registry each worker
    is a node of its own. With rtc.udp_port, worker K's media port is rtc.udp_port + K."""
    import socket
    from dataclasses import replace
    from urllib.parse import urlsplit

    from gateway.workers import WorkerRole

    role = WorkerRole(index=args.worker, urls=tuple(args.worker_urls.split(",")))
    cluster = config.cluster
    front_url = args.front_url or ""
    if not cluster.public_url and front_url:
        cluster = replace(cluster, public_url=front_url)
    front_port = urlsplit(front_url).port if front_url else config.http.port
    node_id = cluster.node_id or f"{socket.gethostname()}:{front_port}"
    cluster = replace(cluster, node_id=f"{node_id}.w{role.index}"[-64:])
    rtc = config.rtc
    if rtc.udp_port:  # one socket per worker: worker K takes rtc.udp_port + K
        rtc = replace(rtc, udp_port=rtc.udp_port + role.index)
    return role, replace(config, cluster=cluster, rtc=rtc)


def _configure_logging(config: Config, prefix: str = "") -> None:
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
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


def _run_until_signalled(server: uvicorn.Server, sockets: list | None = None) -> int:
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
        server.run(sockets=sockets)
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind or the app fails to start
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
