"""The OpenAPI document and the routes stay in step: every route a caller may use is documented
with its methods, and nothing is documented that no route serves. The Cloud Tasks callbacks
(/tasks/…) and the Swagger UI page (/docs) are the deliberate exceptions."""

from __future__ import annotations

from starlette.routing import Route

from handler.config import Settings
from handler.routes import dashboard, jobs, models, observe, openapi, predict, workflows

UNDOCUMENTED = {"/tasks/run", "/tasks/webhook", "/docs"}


def served() -> dict[str, set[str]]:
    """Every route any role mounts: path (OpenAPI spelling) → methods."""
    mounted = [
        *predict.routes(),
        *models.routes(),
        *workflows.routes(),
        *openapi.routes(),
        *jobs.routes(cloud=Settings().cloud, runs_jobs=True),
        *observe.routes(),
        *dashboard.routes(),
    ]
    paths: dict[str, set[str]] = {}
    for route in mounted:
        if isinstance(route, Route):
            path = route.path.replace("{name:path}", "{name}")
            paths.setdefault(path, set()).update(m.lower() for m in route.methods or () if m != "HEAD")
    return paths


def test_every_route_is_documented_with_its_methods() -> None:
    documented = openapi.document()["paths"]
    for path, methods in served().items():
        if path in UNDOCUMENTED:
            assert path not in documented, path
            continue
        assert path in documented, f"{path} is served but not in the OpenAPI document"
        assert set(documented[path]) == methods, path


def test_nothing_is_documented_that_no_route_serves() -> None:
    assert set(openapi.document()["paths"]) <= set(served())


def test_the_observability_routes_are_documented() -> None:
    paths = openapi.document()["paths"]
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert "text/html" in paths["/dashboard"]["get"]["responses"]["200"]["content"]
    for path in ("/system", "/dashboard/data"):
        assert "application/json" in paths[path]["get"]["responses"]["200"]["content"]
