"""Shared test wiring. Fixtures live in tests/fixtures/, one module per real component.

Markers (registered in pyproject.toml) are applied here, by fixture and by module, not by hand:

* `integration`: the test runs real processes over real sockets: it uses a ComfyUI target, a
  service process, the stand-in, an emulator, or lives in a module that starts such servers.
* `cloud`: it needs the Cloud Tasks emulator, fake-gcs-server or the gcloud CLI.
* `image`: it builds or runs the Docker images (tests/image/): Docker's engine, the Dockerfile's
  two targets built on a local base; integration and slow as well. Without an engine it skips
  (scripts/image-env.sh starts one; .ci/run does).
* `slow`: it takes seconds. Listed below (modules, fixtures, names), and also any test whose own
  run (its call, not its fixtures' setup) took SLOW_S or more the last time it ran on this machine:
  durations are kept in .pytest_cache, so a new slow test leaves the quick loop after its first
  run. `./scripts/test.sh -m "not slow"` is the quick loop; `./scripts/test.sh` (what CI runs)
  runs everything.

The real-gcloud runs (tests/deploy/test_gcloud_replay.py's replay, tests/deploy/test_deploy_api.py's tests) run in CI (CI set, as .ci/run does), with
`--gcloud-replay`, without a pytest cache (`-p no:cacheprovider`), or when the files that decide the
recorded commands changed since it last passed on this machine: their content hash is kept in
.pytest_cache after a pass. Otherwise it is skipped and says why.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.comfy",
    "tests.fixtures.gcs",
    "tests.fixtures.cloudtasks",
    "tests.fixtures.tiny_model",
    "tests.fixtures.modelserver",
]

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

# Fixtures that mean real processes on real sockets, and those that mean the cloud emulators.
INTEGRATION_FIXTURES = {
    "comfy_target",
    "service",
    "fresh_service",
    "standin",
    "attached",
    "local",
    "cloud",
    "fake_gcs",
    "tasks_emulator",
    "gcs",
    "gcs_bucket",
    "od_service",
    "real_service",
}
CLOUD_FIXTURES = {"fake_gcs", "tasks_emulator", "gcs", "gcs_bucket", "cloud"}
# Test modules are named by their path under tests/ ("routes/test_jobs.py"); a name ending in "/"
# names every module in that folder. A name that matches no file stops the run (check_lists), so a
# moved or renamed module cannot silently lose its markers.
# Modules whose tests start servers of their own (ServiceProcess, StandIn, uvicorn) without a fixture.
INTEGRATION_MODULES = {
    "test_real_model.py",
    "test_app.py",
    "comfyui/test_instance.py",
    "comfyui/test_client.py",
    "routes/test_jobs.py",
    "test_lifecycle.py",
    "protocol/",
    "comfyui/test_supervisor.py",
    "routes/test_workflows.py",
    "test_security.py",
    "test_runtime.py",
    "test_pipeline_queue.py",
    "routes/test_observability.py",
    "client/test_modes.py",
    "taskqueue/test_dispatch.py",
    "models/test_store_service.py",
}
# Slow (measured: seconds each on 2 cores): modules whose every test runs deploy.sh, external linters or
# a service and ComfyUI of its own; fixtures that start those; and single tests by name.
SLOW_MODULES = {
    "test_real_model.py",
    "deploy/",
    "comfyui/test_supervisor.py",
    "comfyui/test_instance.py",
    "comfyui/test_client.py",
    "models/test_store_service.py",
}
SLOW_FIXTURES = {"fresh_service", "attached", "cloud", "od_service", "real_service"}
SLOW_TESTS = {
    "test_every_recorded_command_parses_in_the_real_gcloud",  # 40-90 s: the real gcloud CLI per command
    "test_replays_every_recorded_scenario",
    "test_cancel_and_errors_through_the_module",
    "test_sync_and_async_through_the_module",
    "test_sigkill_at_each_step_loses_no_job_and_no_webhook",
    "test_restart_with_queued_jobs_loses_none",
    "test_comfyui_crash_is_transient_and_retried_to_success",
    "test_a_body_over_the_limit_is_413",
    "test_not_ready_is_503_with_retry_after",
    "test_an_answer_over_40_mib_reaches_the_client_through_cloud_runs_limit",  # 56 MB of base64, 10-20 s
    "test_without_chunking_cloud_runs_limit_would_refuse_that_answer",
    "test_gs_inputs_are_read_from_allowlisted_buckets_and_url_delivery_goes_to_cloud_storage",
    "test_a_request_over_32_mib_never_reaches_the_service",
    "test_cli_stream_raw_and_url",
}

SLOW_S = 1.0
IMAGE_TIMEOUT_S = 1800
DURATIONS_KEY = "comfyrun/call-durations"

# Tests that drive the real gcloud CLI: a minute or more each on a loaded machine.
GCLOUD_REPLAYS = {
    "test_every_recorded_command_parses_in_the_real_gcloud",
    "test_every_request_deploy_sh_sends_is_one_the_google_apis_accept",
    "test_updates_and_the_workers_other_shapes_are_accepted_too",
}
# What decides the commands they feed to the real gcloud, and how their answers are checked.
GCLOUD_REPLAY_INPUTS = [
    "deploy.sh",
    "cloudbuild.yaml",
    "models.txt",
    "deploy",
    "tests/deploy_fixtures",
    "tests/fixtures/deploy.py",
    "tests/fixtures/googleapis.py",
    "tests/deploy/test_gcloud_replay.py",
    "tests/deploy/test_deploy_api.py",
]
CACHE_KEY = "comfyrun/gcloud-replay-passed"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--gcloud-replay",
        action="store_true",
        help="run the real-gcloud replay of deploy.sh's commands even if they did not change",
    )


def gcloud_replay_inputs_hash() -> str:
    digest = hashlib.sha256()
    for name in GCLOUD_REPLAY_INPUTS:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0")
            digest.update(file.read_bytes() if file.exists() else b"(missing)")
            digest.update(b"\0")
    return digest.hexdigest()


def _replay_skip_reason(config: pytest.Config, name: str) -> str | None:
    if os.environ.get("CI", "").lower() not in ("", "0", "false") or config.getoption("--gcloud-replay"):
        return None
    cache = getattr(config, "cache", None)
    if cache is None:
        return None
    if cache.get(f"{CACHE_KEY}/{name}", None) != gcloud_replay_inputs_hash():
        return None
    return (
        "deploy.sh and its recorded commands are unchanged since this replay last passed here "
        "(CI=1 or --gcloud-replay runs it anyway)"
    )


def module_path(item: pytest.Item) -> str:
    """The item's module as a path under tests/ ("routes/test_jobs.py"); "" outside tests/."""
    path = Path(str(getattr(item, "path", ""))).resolve()
    return path.relative_to(TESTS).as_posix() if path.is_relative_to(TESTS) else ""


def listed(module: str, names: set[str]) -> bool:
    return any(module == name or (name.endswith("/") and module.startswith(name)) for name in names)


def check_lists() -> None:
    """Every module and test the marker lists name exists, so a move or a rename updates them."""
    missing = sorted(name for name in INTEGRATION_MODULES | SLOW_MODULES if not (TESTS / name).exists())
    sources = "\n".join(p.read_text() for p in TESTS.rglob("test_*.py"))
    missing += sorted(name for name in SLOW_TESTS | GCLOUD_REPLAYS if f"def {name}(" not in sources)
    missing += sorted(name for name in GCLOUD_REPLAY_INPUTS if not (ROOT / name).exists())
    if missing:
        raise pytest.UsageError(f"tests/conftest.py names what does not exist (moved or renamed?): {missing}")


def pytest_configure(config: pytest.Config) -> None:
    check_lists()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cache = getattr(config, "cache", None)
    measured: dict[str, float] = cache.get(DURATIONS_KEY, {}) if cache is not None else {}
    for item in items:
        module = module_path(item)
        name = getattr(item, "originalname", item.name)
        fixtures = set(getattr(item, "fixturenames", ()))
        in_image_tier = module.startswith("image/")
        if in_image_tier:
            item.add_marker(pytest.mark.image)
            # The session's first test waits for both builds: a first worker build takes minutes.
            item.add_marker(pytest.mark.timeout(IMAGE_TIMEOUT_S))
        if fixtures & INTEGRATION_FIXTURES or listed(module, INTEGRATION_MODULES) or in_image_tier:
            item.add_marker(pytest.mark.integration)
        if fixtures & CLOUD_FIXTURES or name in GCLOUD_REPLAYS:
            item.add_marker(pytest.mark.cloud)
        if (
            in_image_tier
            or listed(module, SLOW_MODULES)
            or fixtures & SLOW_FIXTURES
            or name in SLOW_TESTS
            or measured.get(item.nodeid, 0.0) >= SLOW_S
        ):
            item.add_marker(pytest.mark.slow)
        if name in GCLOUD_REPLAYS:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)
            replay_skip = _replay_skip_reason(config, name)
            if replay_skip:
                item.add_marker(pytest.mark.skip(reason=replay_skip))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    name = getattr(item, "originalname", item.name)
    if call.when == "call" and report.passed and name in GCLOUD_REPLAYS:
        cache = getattr(item.config, "cache", None)
        if cache is not None:
            cache.set(f"{CACHE_KEY}/{name}", gcloud_replay_inputs_hash())
    return report


_durations: dict[str, float] = {}  # nodeid -> seconds of its call, this session


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _durations[report.nodeid] = round(report.duration, 3)


def pytest_sessionfinish(session: pytest.Session) -> None:
    cache = getattr(session.config, "cache", None)
    if cache is not None and _durations:
        cache.set(DURATIONS_KEY, {**cache.get(DURATIONS_KEY, {}), **_durations})
