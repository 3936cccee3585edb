"""This node's place in the cluster: its registry (in-process or Redis) and identity.

The registry (gateway/registry.py) holds every live stream and node; a stream key has one publisher cluster-wide
(claimed atomically), and a node that does not hold a stream redirects its viewers to the one that does.
"""

from __future__ import annotations

import socket
from typing import Callable, Optional

from gateway.config import Config
from gateway.registry import InProcessRegistry, NodeInfo, RedisRegistry, Registry


def node_identity(config: Config) -> NodeInfo:
    host, port = config.http.host, config.http.port
    node_id = config.cluster.node_id or f"{socket.gethostname()}:{port}"
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    base_url = config.cluster.public_url or f"http://{shown}:{port}"
    return NodeInfo(node_id=node_id, base_url=base_url)


def make_registry(
    config: Config,
    load: Callable[[], int],
    on_stream_lost: Optional[Callable[[str, str], object]] = None,
) -> Registry:
    node = node_identity(config)
    if config.cluster.registry == "memory":
        return InProcessRegistry(node, ttl=config.cluster.ttl, load_fn=load, on_stream_lost=on_stream_lost)
    return RedisRegistry(
        config.cluster.registry, node, ttl=config.cluster.ttl, load_fn=load, on_stream_lost=on_stream_lost
    )
