"""`python -m mitto_sim [--host H] [--port P]`: serve the simulator with settings from `MITTO_SIM_*`.

Prints one line "mitto-sim listening on http://host:port" once the socket accepts connections (with
`--port 0` it shows the port the system picked), so scripts can wait for it.
"""

import argparse
import asyncio

import uvicorn
import uvloop

from mitto_sim.app import create_app
from mitto_sim.settings import SimSettings


async def serve(settings: SimSettings) -> None:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http="httptools",
        access_log=False,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    # uvicorn exposes readiness only as a flag.
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if server.started:
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        print(f"mitto-sim listening on http://{host}:{port}", flush=True)
    await task


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mitto_sim", description="Mitto API B simulator")
    parser.add_argument("--host", help="overrides MITTO_SIM_HOST")
    parser.add_argument("--port", type=int, help="overrides MITTO_SIM_PORT")
    args = parser.parse_args()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = SimSettings(**overrides)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings))


if __name__ == "__main__":
    main()
