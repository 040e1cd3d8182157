"""The wiring: every collaborator a role needs, built once per process from `Settings`.

`build` is the only place that decides which parts exist: a ComfyUI and a pipeline where the
role runs ComfyUI (`all`, `worker`), the job store's catalogue copy for the api role's checks
otherwise. Routes reach the result through `services_of(request)`; nothing imports the app for
a type.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field

from starlette.requests import Request

from handler import storage, taskqueue
from handler.access.gate import Access
from handler.collector import ServiceCollector
from handler.comfyui.catalog import StoreCatalog
from handler.comfyui.connection import ComfyConnection
from handler.comfyui.inputs import Sources
from handler.comfyui.instance import Comfy
from handler.config import Settings
from handler.jobs import Jobs, Preflight, Runs
from handler.metrics import Metrics
from handler.models.budget import default_budget, memory_limit_bytes
from handler.models.cache import ModelCache
from handler.models.store import Store
from handler.pipeline import Pipeline
from handler.runtime import Runtime
from handler.tasktoken import TaskTokenVerifier
from handler.templates.registry import Templates


@dataclass(frozen=True, kw_only=True)
class Services:
    """What the routes need, each part complete when built."""

    settings: Settings
    runtime: Runtime
    comfy: Comfy | None  # None in the api role, which has no ComfyUI
    published: StoreCatalog | None  # the api role's: the node catalogue a worker published in the store
    pipeline: Pipeline | None
    models: ModelCache | None  # models fetched by URL, where this process boots ComfyUI
    templates: Templates
    jobs: Jobs
    task_tokens: TaskTokenVerifier
    access: Access
    metrics: Metrics
    collector: ServiceCollector
    started_at: float = field(default_factory=time.time)


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def build(
    settings: Settings,
    runtime: Runtime,
    comfy_client: ComfyConnection | None = None,
    comfy_process: subprocess.Popen[bytes] | None = None,
) -> Services:
    """Everything the role needs. `comfy_client`: the connection to an attached ComfyUI (the
    in-process tests' double); by default Comfy's own. `comfy_process`: ComfyUI already spawned
    by `python -m handler` (`supervisor.boot_early`)."""
    store = storage.from_settings(jobs=settings.jobs, cloud=settings.cloud, state_dir=settings.state_dir)
    templates = Templates.from_settings(models=settings.models, urls=settings.urls, cloud=settings.cloud)
    comfy = pipeline = None
    models: ModelCache | None = None
    catalog = StoreCatalog(store, allow_folder_nodes=settings.allow_folder_nodes)
    published: StoreCatalog | None = catalog  # where no ComfyUI runs here: a worker's, from the store
    checks: Preflight = catalog
    runs = None
    if settings.service_role.runs_comfy:
        comfy = Comfy(
            comfyui=settings.comfyui,
            models=settings.models,
            http=settings.http,
            observability=settings.observability,
            sources=Sources(urls=settings.urls, jobs=settings.jobs, cloud=settings.cloud),
            spawn=runtime.thread,
            client=comfy_client,
            started=comfy_process,
        )
        models = model_cache(settings) if comfy.supervisor is not None and settings.model_urls else None
        pipeline = Pipeline(comfy, runtime, models=models)
        checks, runs = pipeline, Runs(pipeline, comfy)
        published = None
    metrics = Metrics(observability=settings.observability)
    jobs = Jobs.build(
        jobs=settings.jobs,
        http=settings.http,
        urls=settings.urls,
        cloud=settings.cloud,
        models=settings.models,
        webhooks=settings.webhooks,
        observability=settings.observability,
        store=store,
        queue=taskqueue.from_settings(jobs=settings.jobs, cloud=settings.cloud, state_dir=settings.state_dir),
        outbox_queue=taskqueue.outbox_from_settings(
            jobs=settings.jobs, cloud=settings.cloud, state_dir=settings.state_dir
        ),
        checks=checks,
        runs=runs,
        templates=templates,
        runtime=runtime,
        observer=metrics.job_changed if metrics.enabled else None,  # None: no decode of `before` per write
    )
    collector = ServiceCollector(comfy, jobs)
    metrics.registry.register(collector)
    return Services(
        settings=settings,
        runtime=runtime,
        comfy=comfy,
        published=published,
        pipeline=pipeline,
        models=models,
        templates=templates,
        jobs=jobs,
        task_tokens=TaskTokenVerifier.from_settings(cloud=settings.cloud, jobs=settings.jobs),
        access=Access.from_settings(access=settings.access, cloud=settings.cloud),
        metrics=metrics,
        collector=collector,
    )


def model_cache(settings: Settings) -> ModelCache:
    """The cache of models named by URL, its budget MODEL_CACHE_BYTES or derived from memory."""
    budget = settings.model_cache_bytes or default_budget(memory_limit_bytes(), settings.model_cache_reserve_bytes)
    return ModelCache(
        root=settings.model_cache_root,
        budget_bytes=budget,
        urls=settings.urls,
        jobs=settings.jobs,
        cloud=settings.cloud,
        models=settings.models,
        hf_token=settings.hf_token,
        download_timeout_s=settings.model_fetch_timeout_s,
        store=Store(root=settings.model_cache_store) if settings.model_cache_store is not None else None,
    )
