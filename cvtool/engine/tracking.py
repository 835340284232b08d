"""MLflow experiment tracking: one MLflow run per cvtool run, continued by a resume (the checkpoint keeps its id).

Runs go to a store (a local SQLite file by default: no server) through `MlflowClient`: no active-run globals, no network
(MLflow's usage telemetry is switched off while it is imported).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from pathlib import Path
from unittest import mock

from cvtool.errors import CvtoolError

from .metrics_log import FINISHED

log = logging.getLogger("cvtool.train")

INSTALL = "pip install 'cvtool[mlflow]'"
FLUSH_EVERY_S = 1.0  # metrics wait in memory at most this long between writes (one SQLite commit: ~10-30 ms)
STORE_FIX = "use mlflow.tracking_uri=sqlite:///PATH (a local file) or http://HOST:PORT of a running `mlflow server`"


def import_mlflow():
    """The mlflow package, imported offline (its telemetry off); a missing one is one line naming the install."""
    with mock.patch.dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"):  # for the import only
        try:
            import mlflow
        except ImportError as err:
            raise CvtoolError(f"logger mlflow needs the mlflow package, which is not installed ({err.msg})",
                              where="logger", fix=INSTALL) from err
        with contextlib.suppress(ImportError):  # (MLflow before 3.2 has no telemetry)
            from mlflow.telemetry import set_telemetry_client

            set_telemetry_client()  # drops a client an earlier import of mlflow in this process may have started
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database..."
    return mlflow


def mlflow_name(key: str) -> str:
    """`key` as an MLflow param/metric name (letters, digits, `_ - . / space`; other characters become `_`)."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    return re.sub(r"[^\w./\- ]", "_", key)[:MAX_ENTITY_KEY_LENGTH]


def override_params(overrides: list[str]) -> dict[str, str]:
    """key -> value of `key=value` overrides (the last of a key wins; `+`/`~` prefixes and outer quotes dropped)."""
    params = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep:
            params[key.lstrip("+~")] = value.strip("'\"")
    return params


class MLflowBackend:
    """Mirrors metric records to an MLflow run: params and config.yaml at its start, best.pt when it finishes."""

    def __init__(self, *, tracking_uri: str, artifacts: str, experiment: str, run_name: str, params: dict,
                 tags: dict[str, str], config_text: str, best: Path | None):
        self.mlflow = import_mlflow()
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        self.tracking_uri, self.artifacts, self.experiment = tracking_uri, artifacts, experiment
        self.run_name, self.tags, self.config_text, self.best = run_name, tags, config_text, best
        self.params = {mlflow_name(k): str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in params.items()}
        self.run_id: str | None = None
        self.logged_until: dict[str, int] = {}  # per metric: the last step the run already holds (a resumed run)
        self.pending: list = []  # metrics not yet written
        self.flushed_at = time.monotonic()
        with self._refused():  # opening the store (a new SQLite file: its schema) fails before any data loads
            self.client = self.mlflow.MlflowClient(tracking_uri=_prepared(tracking_uri))

    def resume_at(self, step: int, state: dict) -> None:
        self.run_id = state.get("run_id")

    @contextlib.contextmanager
    def _refused(self):
        """MLflow's refusal (a bad URI, an unwritable store) as one line naming mlflow.tracking_uri."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except (MlflowException, OSError) as err:
            what = (err.message if isinstance(err, MlflowException) else str(err)).strip().splitlines()[0][:200]
            raise CvtoolError(f"MLflow refused the run: {what}", where=f"mlflow.tracking_uri={self.tracking_uri}",
                              fix=STORE_FIX) from err

    def start(self) -> None:
        """Reopen the checkpoint's run (resume), else create one."""
        with self._refused():
            if not (self.run_id and self._reopen()):
                self._create()

    def _create(self) -> None:
        run = self.client.create_run(self._experiment_id(), run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        self._log_params(self.params)
        self.client.log_text(self.run_id, self.config_text, "config.yaml")
        log.info("MLflow run %s (experiment %s) in %s", self.run_id, self.experiment, self.tracking_uri)

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = self.artifacts if "://" in self.artifacts else Path(self.artifacts).resolve().as_uri()
        try:
            return self.client.create_experiment(self.experiment, artifact_location=location)
        except MlflowException:  # a parallel sweep job created it first
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def _reopen(self) -> bool:
        """Continue the run `run_id`: RUNNING again, params it lacks added, steps it holds not logged again."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(self.run_id)
        except MlflowException:
            run = None
        if run is None or run.info.lifecycle_stage != "active":
            log.warning("the checkpoint's MLflow run %s is not in %s: this resume starts a new MLflow run",
                        self.run_id, self.tracking_uri)
            return False
        self.client.update_run(self.run_id, status="RUNNING")
        self.logged_until = {key: max(m.step for m in self.client.get_metric_history(self.run_id, key))
                             for key in run.data.metrics}
        held = run.data.params
        self._log_params({k: v for k, v in self.params.items() if k not in held})
        for key, value in self.params.items():  # MLflow keeps a param's first value: a changed one becomes a tag
            if key in held and held[key] != value:
                self.client.set_tag(self.run_id, f"resumed.{key}", value)
        log.info("MLflow run %s continued", self.run_id)
        return True

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        items = [Param(k, v) for k, v in params.items()]
        for first in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[first:first + MAX_PARAMS_TAGS_PER_BATCH])

    def log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(name, float(value), now, step) for key, value in scalars.items()
                         if step > self.logged_until.get(name := mlflow_name(key), -1)]
        if time.monotonic() - self.flushed_at >= FLUSH_EVERY_S:
            self._flush()

    def _flush(self) -> None:
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        for first in range(0, len(self.pending), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[first:first + MAX_METRICS_PER_BATCH])
        self.pending, self.flushed_at = [], time.monotonic()

    def state_dict(self) -> dict:
        return {"run_id": self.run_id} if self.run_id else {}

    def close(self, status: str) -> None:
        """End the run with `status`: FINISHED (best.pt stored when asked), or KILLED/FAILED for a resume to reopen."""
        if self.run_id is None:
            return
        self._flush()
        if status == FINISHED and self.best is not None and self.best.is_file():
            self.client.log_artifact(self.run_id, str(self.best), "checkpoints")
        self.client.set_terminated(self.run_id, status)


def _prepared(tracking_uri: str) -> str:
    """`tracking_uri`, with the directory of a SQLite store file created."""
    if tracking_uri.startswith("sqlite:///"):
        path = tracking_uri[len("sqlite:///"):].split("?")[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    return tracking_uri
