"""What the registry needs kept on disk: the run folder of every registered version's training run.

A version's files live in MLflow (never touched by `steelqc gc`), but its training run folder
(``STEELQC_HOME/runs/train-*``, the MLflow run's ``steelqc.run_dir`` tag) holds the splits its export calibrates
and checks parity on and the evaluation it was gated on; so every version of every registered model, whatever its
alias or age, keeps its folder. A registry that cannot be read raises: gc then removes no run folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

RUN_DIR_TAG = "steelqc.run_dir"
PAGE = 1000


def _pages(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """Every item of a paged MLflow search."""
    token = None
    while True:
        page = search(max_results=PAGE, page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


def _aliases(model: Any, version: str) -> str:
    """`` (champion, challenger)`` for the aliases naming ``version`` of a registered model, else empty."""
    aliases = sorted(alias for alias, v in (getattr(model, "aliases", None) or {}).items() if str(v) == str(version))
    return f" ({', '.join(aliases)})" if aliases else ""


def needed_run_folders(client: MlflowClient) -> dict[str, str]:
    """Run folder name -> why it is needed (``name vN (champion)``), for every version of every registered model
    whose training run names a run folder."""
    needed: dict[str, str] = {}
    for model in _pages(client.search_registered_models):
        for version in _pages(client.search_model_versions, filter_string=f"name='{model.name}'"):
            if not version.run_id:
                continue
            try:
                tag = client.get_run(version.run_id).data.tags.get(RUN_DIR_TAG)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # the run was deleted: nothing on disk to keep
                    continue
                raise
            if tag:
                why = f"needed by {version.name} v{version.version}{_aliases(model, version.version)}"
                name = Path(tag).name
                needed[name] = f"{needed[name]}; {why}" if name in needed else why
    return needed
