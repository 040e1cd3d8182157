"""`python -m handler`: boot ComfyUI, then serve the API on $PORT.

ComfyUI is spawned first, before the web stack (uvicorn, starlette, the cloud clients) is even
imported: on a cold start its own boot, seconds long, then overlaps the service's imports and
wiring instead of following them. The server itself is `handler/server.py`.
"""

from __future__ import annotations

import sys

from handler import logs
from handler.comfyui.supervisor import boot_early
from handler.config import ConfigError, Settings


def main() -> int:
    try:
        settings = Settings.from_env()
        # JSON lines for Cloud Logging on Cloud Run, readable text locally.
        logs.configure(observability=settings.observability, cloud=settings.cloud)
        comfy_process = boot_early(
            cloud=settings.cloud, comfyui=settings.comfyui, models=settings.models, http=settings.http
        )
    except (ConfigError, ValueError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    from handler.server import serve  # the web stack: imported while ComfyUI boots

    return serve(settings, comfy_process)


if __name__ == "__main__":
    sys.exit(main())
