"""The `routeq` command line: the typer app, wired from one module per command group.

batches.py    run, submit, status, results, watch, cancel, requeue
workers.py    worker
tools.py      sim, catalog, migrate
admin.py      deployments ..., budget ...
cache.py      cache stats, clear, policy
evals.py      eval (reference sets scored on named deployments)
serving.py    serve, keys ...
replay.py     replay (a batch re-planned under other strategies)
reporting.py  what the commands show: the progress bar, status and summary tables
embedded.py   `routeq run`'s engine: Redis (or fakeredis) and a worker in this process
_common.py    known errors as one red line; connections opened and closed for a command
"""

from __future__ import annotations

import typer

from producer.cli import admin, batches, cache, evals, replay, serving, tools, workers

__all__ = ["app", "main"]

app = typer.Typer(help="routeq: route batches of LLM prompts across providers.", no_args_is_help=True)

# The order of `routeq --help`.
for command in (
    tools.sim,
    tools.catalog,
    batches.run,
    batches.submit,
    batches.status,
    batches.results,
    batches.watch,
    batches.cancel,
    batches.requeue,
    replay.replay,
    workers.worker,
    tools.migrate,
    serving.serve,
):
    app.command()(command)
app.command(name="eval")(evals.run_eval)
app.add_typer(admin.deployments_app, name="deployments")
app.add_typer(admin.budget_app, name="budget")
app.add_typer(cache.cache_app, name="cache")
app.add_typer(serving.keys_app, name="keys")


def main() -> None:
    """The `routeq` console script."""
    app()
