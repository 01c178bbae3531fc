"""MLflow runs of training runs: a view of their evaluation points and configuration in a local MLflow store.

The experiment store (:mod:`unigrad.train.store`) and ``results.json`` hold the results; this module writes a
copy that MLflow's tools read. ``compare(..., mlflow=URI)`` (and ``unigrad train|compare --mlflow URI``) logs
every run of a comparison as one MLflow run in an experiment named after the comparison's run folder
(``compare-digits-mlp-20250101-120000``), one MLflow run per method label and seed.

* **Where** (:func:`check_tracking_uri`): a local store, written without a server. ``sqlite:///PATH.db`` is an
  SQLite database (MLflow's own default backend; the file and its folder are made when missing; four slashes for
  an absolute path); a plain folder path (or a ``file:`` URI) is MLflow's file store in that folder, made when
  missing. MLflow 3 keeps its file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is
  set, so a folder store sets it in this process. A remote tracking URI (``http://...``, ``databricks``) is
  refused: nothing here contacts a network. MLflow's usage telemetry is switched off in this process
  (``MLFLOW_DISABLE_TELEMETRY=true``) before MLflow is imported.
* **Metrics** (the points' scalars of :func:`unigrad.train.tensorboard.point_scalars`, ``step`` the optimizer
  step count): ``loss/train``, ``loss/test``, ``accuracy/test`` (and ``loss/<name>``, ``accuracy/<name>`` of a
  task's extra evaluation sets), ``progress/epoch``, ``progress/forward_equivalents``, ``progress/seconds``
  (training wall time) and, with an exchange, ``progress/bytes``. MLflow's charts can take any metric as their
  x-axis, so the ``vs_forwards/`` copies TensorBoard needs are not logged: plot against
  ``progress/forward_equivalents``. A value that is ``None`` is left out. MLflow keeps metrics as float64: the
  values are the store's exactly.
* **Parameters**: the run's settings flattened as TensorBoard's hyperparameters are
  (:func:`unigrad.train.tensorboard.hyperparameters`: ``method``, ``estimator_options.probes``, ``lr``, ...)
  and the environment it was trained in as ``environment.<key>`` (``environment.torch``); strings as they are,
  anything else as its JSON text (``true``, ``0.001``, ``null``).
* **Tags**: ``task``, ``method`` (the method's label), ``seed`` and ``unigrad_version`` (the version that trained
  the run); the run's name is ``<label> seed <N>``. A run ends ``FINISHED``, or ``FAILED`` when it diverged or
  stopped on an error (``KILLED`` on an interrupt).
* **One run per method and seed**: a run that starts, or resumes from a checkpoint, deletes the experiment's
  MLflow runs of its method label and seed (MLflow's deletion: they leave the lists) and logs a new one that holds
  its configuration and its whole history so far, then goes on adding to it. A resumed run thus shows every point
  once (the points a killed run logged after its last checkpoint included).
* **Stored runs**: a run that the store already has finished is not trained again; its stored points and
  configuration are logged all the same (:func:`write_run`), so the experiment of a comparison is complete. The
  store keeps the points' step, epoch, forward-pass equivalents, seconds and the training and test losses and
  accuracy, so a stored run shows no extra evaluation sets.
* **Cost**: the writes happen at the evaluation points, outside the timed steps, and they read the points only:
  a run logged to MLflow ends bitwise where the same run without it does.

MLflow is an optional dependency (``pip install 'unigrad[mlflow]'``: ``mlflow-skinny``, with SQLAlchemy and
Alembic for the SQLite store); asking for it without the packages installed is refused before anything trains
(:func:`require_mlflow`).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from unigrad.core.errors import UnigradError
from unigrad.core.io import make_folder, to_json
from unigrad.train.loop import Hook, Point, TrainingLoop
from unigrad.train.tensorboard import hyperparameters, point_scalars

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

INSTALL = "pip install 'unigrad[mlflow]'"
SQLITE = "sqlite:///"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: C:\runs is a path
_BATCH_METRICS, _BATCH_PARAMS = 1000, 100  # MLflow's limits of one log_batch call


def _offline() -> None:
    """No usage telemetry from MLflow in this process (read when MLflow is imported, and again if it was)."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    if "mlflow.telemetry" in sys.modules:  # imported before: drop a telemetry client it may have made
        from mlflow.telemetry import get_telemetry_client, set_telemetry_client

        if get_telemetry_client() is not None:
            set_telemetry_client()


def require_mlflow(sqlite: bool = False) -> type[MlflowClient]:
    """``mlflow.tracking.MlflowClient``, with MLflow's telemetry switched off; a one-line :class:`UnigradError`
    when ``mlflow-skinny`` (or, for an SQLite store, SQLAlchemy and Alembic) is not installed."""
    _offline()
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UnigradError(f"MLflow logging needs the mlflow-skinny package; {INSTALL}") from None
    if sqlite:
        try:
            import alembic  # noqa: F401
            import sqlalchemy  # noqa: F401
        except ImportError:
            raise UnigradError(f"an SQLite MLflow store needs the sqlalchemy and alembic packages; {INSTALL}") from None
    return MlflowClient


def check_tracking_uri(uri: str | Path) -> str:
    """The MLflow tracking URI ``uri`` (module docs: where), checked, its folder made, the store opened once (an
    SQLite store gets its tables), after checking that the packages are installed: ``sqlite:///PATH`` as it is,
    a folder or ``file:`` URI as a ``file:`` URI of the absolute folder. A one-line error for an empty value, a
    remote URI, a file or folder in the way, or a store MLflow cannot open."""
    text = str(uri)
    if text == "" or "\x00" in text:
        raise UnigradError(f"the MLflow store must be a non-empty path or URI without NUL characters, got {text!r}")
    scheme = m.group(1).lower() if (m := _SCHEME.match(text)) else None
    if scheme == "sqlite":
        if not text.startswith(SQLITE) or text == SQLITE:
            raise UnigradError(f"an SQLite MLflow store reads sqlite:///PATH (4 slashes if absolute), got {text!r}")
        db = Path(text[len(SQLITE) :].split("?", 1)[0])
        require_mlflow(sqlite=True)
        if db.is_dir():
            raise UnigradError(f"MLflow database {db} is a folder; give a file, e.g. sqlite:///{db}/mlflow.db")
        make_folder(db.parent, "the MLflow database's folder")
        resolved = text
    elif scheme in (None, "file"):
        folder = Path(unquote(urlparse(text).path)) if scheme == "file" else Path(text)
        require_mlflow()
        make_folder(folder, "MLflow folder")
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # module docs: MLflow 3 refuses a folder store without it
        resolved = folder.resolve().as_uri()
    else:
        raise UnigradError(
            f"MLflow logging writes a local store, not a server: give a folder or sqlite:///FILE.db, got {text!r}"
        )
    _call(lambda: _client(resolved).search_experiments(max_results=1), f"cannot open the MLflow store {text}")
    return resolved


def _call(action: Any, what: str) -> Any:
    """``action()``, an error of MLflow's as a one-line :class:`UnigradError` that starts with ``what``."""
    from mlflow.exceptions import MlflowException

    try:
        return action()
    except MlflowException as e:
        first = str(e.message).strip().splitlines()
        raise UnigradError(f"{what}: {first[0] if first else type(e).__name__}") from None


def _client(uri: str) -> MlflowClient:
    return require_mlflow(sqlite=uri.startswith(SQLITE))(tracking_uri=uri)


def _experiment(client: MlflowClient, uri: str, name: str) -> str:
    """The id of the experiment ``name``, made (or restored from MLflow's deletion) when needed. An SQLite store's
    experiments keep their artifact folder (unused here) beside the database, not under the working directory."""
    found = client.get_experiment_by_name(name)
    if found is None:
        where = None
        if uri.startswith(SQLITE):
            where = (Path(uri[len(SQLITE) :].split("?", 1)[0]).parent / "mlartifacts").resolve().as_uri()
        return client.create_experiment(name, artifact_location=where)
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


def _runs(client: MlflowClient, experiment_id: str) -> Iterator[Any]:
    """The experiment's active runs, every page of them."""
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def metrics(points: Iterable[Mapping[str, Any]], timestamp: int) -> list[Any]:
    """MLflow ``Metric`` entities of ``points`` (module docs: metrics) at ``timestamp`` (ms since the epoch)."""
    from mlflow.entities import Metric

    return [
        Metric(tag, value, timestamp, step)
        for point in points
        for tag, value, step in point_scalars(point)
        if not tag.startswith("vs_forwards/")
    ]


def params(config: Mapping[str, Any]) -> dict[str, str]:
    """The MLflow parameters of a run's ``config`` (module docs: parameters)."""
    environment = config.get("environment")
    flat = hyperparameters(config)
    if isinstance(environment, Mapping):
        flat.update({f"environment.{k}": v for k, v in hyperparameters(environment).items()})
    return {k: v if isinstance(v, str) else to_json(v) for k, v in flat.items()}


def tags(config: Mapping[str, Any], label: str, seed: int) -> dict[str, str]:
    """The MLflow tags of a run (module docs: tags)."""
    from unigrad import __version__

    environment = config.get("environment")
    version = environment.get("unigrad", __version__) if isinstance(environment, Mapping) else __version__
    return {"task": str(config.get("task")), "method": label, "seed": str(seed), "unigrad_version": str(version)}


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _Run:
    """One MLflow run of a method label and seed, logged anew (module docs: one run per method and seed)."""

    def __init__(self, uri: str, experiment: str, label: str, seed: int, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.client = _client(uri)
        experiment_id = _experiment(self.client, uri, experiment)
        for old in _runs(self.client, experiment_id):
            if old.data.tags.get("method") == label and old.data.tags.get("seed") == str(seed):
                self.client.delete_run(old.info.run_id)
        run = self.client.create_run(experiment_id, tags=tags(config, label, seed), run_name=f"{label} seed {seed}")
        self.id = run.info.run_id
        for chunk in _chunks([Param(k, v) for k, v in params(config).items()], _BATCH_PARAMS):
            self.client.log_batch(self.id, params=list(chunk))

    def log(self, points: Iterable[Mapping[str, Any]]) -> None:
        for chunk in _chunks(metrics(points, int(time.time() * 1000)), _BATCH_METRICS):
            self.client.log_batch(self.id, metrics=list(chunk))

    def end(self, status: str) -> None:
        self.client.set_terminated(self.id, status)


def write_run(
    uri: str,
    experiment: str,
    label: str,
    seed: int,
    config: Mapping[str, Any],
    points: Iterable[Mapping[str, Any]],
    status: str = "ok",
) -> None:
    """Log a finished run (configuration and evaluation points; ``status`` the store's, ``ok`` or ``diverged``) as
    the MLflow run of ``label`` and ``seed`` in ``experiment``, replacing an earlier one (module docs: stored
    runs). ``uri`` is a URI :func:`check_tracking_uri` returned."""
    run = _Run(uri, experiment, label, seed, config)
    run.log(points)
    run.end("FINISHED" if status == "ok" else "FAILED")


class MLflow(Hook):
    """Log a training run to MLflow (module docs): on start, a new MLflow run of ``label`` and ``seed`` in
    ``experiment`` (replacing the experiment's earlier ones of that label and seed) with ``config`` as parameters,
    the tags, and the points the run already has (a resumed run's history); every later evaluation point as it is
    made; the run is terminated when the loop ends, however it ends.

    Args:
        uri: the tracking URI, as :func:`check_tracking_uri` returned it.
        experiment: the MLflow experiment's name (made when missing).
        label: the method's label (tag ``method``).
        seed: the run's seed (tag ``seed``).
        config: the run's configuration, logged flattened as parameters (``environment`` as
            ``environment.<key>``); its ``task`` is tagged.
    """

    def __init__(self, uri: str, experiment: str, label: str, seed: int, config: Mapping[str, Any]) -> None:
        self.uri, self.experiment, self.label, self.seed, self.config = uri, experiment, label, seed, dict(config)
        self.run: _Run | None = None

    def on_start(self, loop: TrainingLoop) -> None:
        self.run = _Run(self.uri, self.experiment, self.label, self.seed, self.config)
        self.run.log(loop.history)

    def on_evaluate(self, loop: TrainingLoop, point: Point) -> None:
        if self.run is not None:
            self.run.log([point])

    def on_end(self, loop: TrainingLoop) -> None:
        if self.run is None:
            return
        error = sys.exc_info()[1]  # the loop's on_end runs in a finally: set while an exception ends the loop
        if isinstance(error, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED" if error is not None or loop.status != "ok" else "FINISHED"
        self.run.end(status)
        self.run = None


__all__ = [
    "INSTALL",
    "MLflow",
    "check_tracking_uri",
    "metrics",
    "params",
    "require_mlflow",
    "tags",
    "write_run",
]
