"""URLs derived from a server's admin URL."""

from shared.infra.postgres import PostgresServer


def test_url_for_replaces_only_the_database() -> None:
    server = PostgresServer("postgresql://u:p%40ss@h:5433/postgres?sslmode=disable", "env")
    assert server.url_for("run_7") == "postgresql://u:p%40ss@h:5433/run_7?sslmode=disable"


def test_url_for_quotes_awkward_names() -> None:
    server = PostgresServer("postgresql://postgres@127.0.0.1:5432/postgres", "local")
    assert server.url_for("a/b c") == "postgresql://postgres@127.0.0.1:5432/a%2Fb%20c"
