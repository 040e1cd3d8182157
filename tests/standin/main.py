"""Start the ComfyUI stand-in exactly like ComfyUI: `python main.py --listen ... --port ...`.

It exits with status 0 on SIGTERM or SIGINT.

Flags the stand-in has no use for are accepted and ignored, so the service's command line works
unchanged. Environment knobs (for tests): STANDIN_OBJECT_INFO (catalog file),
STANDIN_CACHE_BYTES (byte budget of the default cache), STANDIN_TEST_GATE=1 (load the TestGate
custom node, `standin_app/testgate.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import shutil
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from standin_app import COMFYUI_VERSION  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="main.py", add_help=True)
    parser.add_argument("--listen", type=str, default="127.0.0.1", nargs="?", const="0.0.0.0,::")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--input-directory", type=str, default=None)
    parser.add_argument("--output-directory", type=str, default=None)
    parser.add_argument("--temp-directory", type=str, default=None)
    parser.add_argument("--user-directory", type=str, default=None)
    parser.add_argument("--base-directory", type=str, default=None)
    parser.add_argument("--models-directory", type=str, default=None)
    parser.add_argument(
        "--verbose", default="INFO", const="DEBUG", nargs="?", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    )
    parser.add_argument("--log-stdout", action="store_true")
    parser.add_argument("--extra-model-paths-config", type=str, nargs="+", action="append", default=None)
    parser.add_argument("--disable-metadata", action="store_true")
    parser.add_argument("--dont-print-server", action="store_true")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache-classic", action="store_true")
    cache.add_argument("--cache-lru", type=int, default=0)
    cache.add_argument("--cache-none", action="store_true")
    cache.add_argument("--cache-ram", nargs="*", type=float, default=[])
    for flag in (
        "--cpu",
        "--disable-auto-launch",
        "--disable-api-nodes",
        "--disable-all-custom-nodes",
        "--disable-smart-memory",
        "--quick-test-for-ci",
        "--windows-standalone-build",
    ):
        parser.add_argument(flag, action="store_true")
    args, _unknown = parser.parse_known_args(argv)
    return args


LEVEL_COLORS = {
    "DEBUG": "\033[36m",
    "INFO": "\033[32m",
    "WARNING": "\033[33m",
    "ERROR": "\033[31m",
    "CRITICAL": "\033[35m",
}


class LevelTagFormatter(logging.Formatter):
    """ComfyUI's console format: a coloured `[LEVEL]` tag, then the message (colour codes even off a TTY)."""

    def format(self, record: logging.LogRecord) -> str:
        bold = "\033[1m" if record.levelno >= logging.WARNING else ""
        tag = f"{bold}{LEVEL_COLORS.get(record.levelname, '')}[{record.levelname}]\033[0m "
        return tag + super().format(record)


def setup_logging(level: str, use_stdout: bool) -> None:
    """Logs go to stderr; with --log-stdout, records below ERROR go to stdout instead."""
    formatter = LevelTagFormatter("%(message)s")
    root = logging.getLogger()
    root.handlers[:] = []
    if use_stdout:
        out = logging.StreamHandler(sys.stdout)
        out.addFilter(lambda record: record.levelno < logging.ERROR)
        err = logging.StreamHandler(sys.stderr)
        err.setLevel(logging.ERROR)
        handlers = [out, err]
    else:
        handlers = [logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose, args.log_stdout)
    log = logging.getLogger("standin")

    from standin_app.catalog import Catalog
    from standin_app.engine import Executor, OutputCache
    from standin_app.nodes import REGISTRY
    from standin_app.server import Paths, StandinServer, isolation_installed, start_worker

    here = os.path.dirname(os.path.abspath(__file__))
    base = os.path.abspath(args.base_directory) if args.base_directory else here
    output_dir = os.path.abspath(args.output_directory or os.path.join(base, "output"))
    input_dir = os.path.abspath(args.input_directory or os.path.join(base, "input"))
    temp_dir = (
        os.path.join(os.path.abspath(args.temp_directory), "temp")
        if args.temp_directory
        else os.path.join(base, "temp")
    )
    models_dir = os.path.abspath(args.models_directory) if args.models_directory else os.path.join(base, "models")

    log.info("Python version: %s", sys.version)
    log.info("ComfyUI version: %s (stand-in)", COMFYUI_VERSION)
    log.info("Setting output directory to: %s", output_dir)
    log.info("Setting input directory to: %s", input_dir)
    log.info("Setting temp directory to: %s", temp_dir)
    shutil.rmtree(temp_dir, ignore_errors=True)
    for folder in (output_dir, input_dir, temp_dir):
        os.makedirs(folder, exist_ok=True)

    if args.cache_none:
        cache = OutputCache("none")
    elif args.cache_classic:
        cache = OutputCache("classic")
    elif args.cache_lru > 0:
        cache = OutputCache("lru", lru_size=args.cache_lru)
    else:
        cache = OutputCache("ram", budget_bytes=int(os.environ.get("STANDIN_CACHE_BYTES", str(1 << 30))))

    catalog = Catalog(api_nodes=not args.disable_api_nodes)
    catalog.input_dir = input_dir
    isolation = isolation_installed([path for group in args.extra_model_paths_config or [] for path in group])
    paths = Paths(input_dir, output_dir, temp_dir, models_dir, isolation=isolation)
    if isolation:
        log.info("Import times for custom nodes:\n   0.0 seconds: comfyrun_isolation\n")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = StandinServer(
        loop,
        catalog,
        REGISTRY,
        paths,
        lambda srv: Executor(srv, catalog, REGISTRY, paths, cache, disable_metadata=args.disable_metadata),
    )
    if os.environ.get("STANDIN_TEST_GATE") == "1" and not args.disable_all_custom_nodes:
        from standin_app import testgate

        testgate.install(catalog, REGISTRY, server.app)
        log.info("Import times for custom nodes:\n   0.0 seconds: custom_nodes/comfyrun_test_gate\n")
    stop = threading.Event()
    start_worker(server, stop)

    stopping = asyncio.Event()
    received: list[int] = []

    def request_stop(signum, _frame=None):
        received.append(signum)
        loop.call_soon_threadsafe(stopping.set)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    async def run() -> int:
        from aiohttp import web

        runner = web.AppRunner(server.app, access_log=None, handle_signals=False)
        await runner.setup()
        publisher = asyncio.ensure_future(server.publish_loop())
        log.info("Starting server\n")
        for address in args.listen.split(","):
            site = web.TCPSite(runner, address, args.port)
            try:
                await site.start()
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    log.error(
                        "Port %s is already in use on address %s. Please close the other application "
                        "or use a different port with --port.",
                        args.port,
                        address,
                    )
                    return 1
                raise
            shown = f"[{address}]" if ":" in address else address
            if not args.dont_print_server:
                log.info("To see the GUI go to: http://%s:%s", shown, args.port)
        await stopping.wait()
        log.info("\nStopped server")
        publisher.cancel()
        for ws in list(server.sockets.values()):
            await ws.close()
        await runner.cleanup()
        return 0

    try:
        code = loop.run_until_complete(run())
    finally:
        stop.set()
        # Like ComfyUI: Ctrl-C (SIGINT) removes the temp folder on the way out, SIGTERM leaves it.
        if signal.SIGTERM not in received:
            shutil.rmtree(temp_dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
