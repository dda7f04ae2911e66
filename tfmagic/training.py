"""`train(recipe)`: the one place that assembles a run.

A run reads its data, builds the backbone, the optimizer and the loss, trains with
`model.fit`, evaluates on the test split and leaves in `recipe.output_dir`:

- `recipe.cfg`: the flagfile of the run (written first; `tfmagic-train --flagfile` repeats it);
- `schedules.png`: learning rate and weight decay over the planned training;
- `history.csv`: one row per epoch (loss, accuracy, validation metrics, `learning_rate` and
  `weight_decay` at the epoch's end, `epoch_time_s`, `train_images_per_s`);
- `tensorboard/`: the same curves for TensorBoard, and the recipe's fields with the final
  metrics (`test_accuracy`, `test_loss`, `val_accuracy`, `best_val_accuracy`) for its HParams
  dashboard;
- `model.keras`: the trained model (reloads with `keras.saving.load_model`). With an
  auxiliary head (`aux_loss_weight > 0`) it is the inference model, head removed, and not
  compiled;
- `result.json`: the outcome, written last and atomically. Its presence marks a finished run.

These names, and what a run may do with an output directory that already holds one, are
`tfmagic.rundir`'s.

The model, optimizer, loss and metrics are built under the recipe's `tf.distribute` strategy
(`tfmagic.distribute`), with its precision policy, `jit_compile` and `steps_per_execution`.
In a multi-worker run only the chief writes these files.

A run that is killed continues where it stopped when it is started again with the same
recipe (the last finished epoch is restored from `backup/`). A finished run is never
overwritten unless `overwrite=True`. A run whose loss becomes NaN or infinite stops and
ends with `"status": "diverged"` in result.json instead of raising.
"""

import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

import tfmagic
from tfmagic import data, distribute, models, plots, rundir
from tfmagic._atomic import atomic_path, ensure_space, no_space_message, write_atomic
from tfmagic.augment import pipeline as augmentation
from tfmagic.callbacks import BackupAndRestore, DivergenceGuard, ScheduleLogger, ThroughputLogger
from tfmagic.choices import CROP_LOADER_SCALES
from tfmagic.layers import auxiliary_loss_weights, strip_auxiliary
from tfmagic.losses import LabelSmoothingCrossEntropy
from tfmagic.optimizers import build_optimizer
from tfmagic.recipe import Recipe, RecipeError
from tfmagic.rundir import (
    BACKUP_DIR,
    HISTORY_FILE,
    MODEL_FILE,
    RECIPE_FILE,
    REPLACED_DIR,
    RESULT_FILE,
    SCHEDULES_PLOT,
    TENSORBOARD_DIR,
)
from tfmagic.rundir import DiskFullError as DiskFullError
from tfmagic.rundir import OutputDirError as OutputDirError
from tfmagic.rundir import RunExistsError as RunExistsError
from tfmagic.wiring import build_schedules, steps_in_epoch


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """The outcome of `train`, as written to result.json.

    `train_images_per_s` is the training throughput of the epochs after the first (the
    first one includes tracing); with a single epoch, that epoch's. `wall_time_s` counts
    every epoch, also those of an earlier, interrupted invocation, plus this invocation's
    setup and evaluation. `resumed_from_epoch` is 0 for a run that started from scratch.
    `streamed` says whether the images were read from their files every epoch,
    `input_mean` / `input_std` are the per-channel normalization statistics (0..255 scale;
    None for a keras.applications model, which uses its own preprocessing) and `bad_files`
    the undecodable files a streamed folder left out. `val_accuracy` is the last epoch's
    validation accuracy (the model that is saved and tested), `best_val_accuracy` the highest
    of any epoch; both None without a validation split.
    """

    status: str
    output_dir: str
    test_accuracy: float | None
    test_loss: float | None
    best_val_accuracy: float | None
    epochs_run: int
    wall_time_s: float
    train_images_per_s: float | None
    params: int
    resumed_from_epoch: int
    recipe: Recipe
    streamed: bool = False
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    bad_files: tuple[str, ...] = ()
    val_accuracy: float | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: the recipe as a dict of fields, non-finite numbers as null."""
        out = {f.name: _finite_or_none(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["recipe"] = dataclasses.asdict(self.recipe)
        out["versions"] = {
            "tfmagic": tfmagic.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
        }
        return out


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def train(
    recipe: Recipe,
    *,
    overwrite: bool = False,
    verbose: int | str = "auto",
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainResult:
    """Train `recipe` and write its results into `recipe.output_dir`.

    Args:
        recipe: the configuration of the run.
        overwrite: replace a finished run (or an unfinished run of another recipe) in
            `output_dir` instead of refusing. The old run is moved to
            `output_dir/.replaced/` once the new one has loaded its data and built its
            model, put back if the new one fails with an exception, and deleted when the new
            one has written its result (after a `kill -9` it is still there).
        verbose: Keras' verbosity: 1 a progress bar per epoch, 2 a line per epoch, 0
            silent; "auto" is 1 on a terminal and 2 otherwise.
        callbacks: extra Keras callbacks, run after tfmagic's own.

    Returns:
        The TrainResult that was also written to `output_dir/result.json`.

    Raises:
        OutputDirError: `output_dir` cannot be created or written to (checked before
            anything is loaded), or another run is writing it (the run holds the lock file
            `output_dir/.lock`, with its pid, until it ends).
        DiskFullError: an OutputDirError: the disk filled up; the message names what could
            not be written. No temporary file is left; a new run that had saved no epoch
            leaves nothing, any other continues from its last finished epoch when run again.
        RunExistsError: `output_dir` holds a finished run, or an unfinished run of a
            different recipe (or a recipe.cfg that cannot be read), and `overwrite` is False.
        RecipeError, data.DataError: the recipe does not fit the data.

    Example:

    >>> import tempfile
    >>> quick = Recipe(model="resnet8", train_subset=1000, epochs=1, width=0.25,
    ...                eval_batch_size=1000, output_dir=tempfile.mkdtemp())
    >>> result = train(quick, verbose=0)
    >>> result.status, result.epochs_run, sorted(os.listdir(quick.output_dir))[:3]
    ('completed', 1, ['history.csv', 'model.keras', 'recipe.cfg'])
    """
    started = time.perf_counter()
    chief = distribute.is_chief()
    with rundir.lock_output_dir(recipe.output_dir) if chief else contextlib.nullcontext():
        replace = rundir.check_output_dir(recipe, overwrite) if chief else False
        verbosity = _verbosity(verbose)
        strategy = distribute.make_strategy(recipe.strategy)
        if verbosity:
            print(f"tfmagic: {recipe.model} on {recipe.dataset}, "
                  f"{distribute.describe_devices(strategy)}", flush=True)
        previous_policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(recipe.precision)
        fresh = chief and not replace and not os.path.exists(
            os.path.join(recipe.output_dir, RECIPE_FILE))
        try:
            return _train(recipe, strategy, chief, replace, started, verbosity, callbacks)
        except Exception as error:
            full = no_space_message(error, recipe.output_dir)
            if full is None:
                raise
            if fresh:
                rundir.remove_if_no_checkpoint(recipe.output_dir)
            raise DiskFullError(
                f"{full}; free some space and run the same command again (the run continues "
                "from its last finished epoch, if it finished one)") from error
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)


def _train(recipe: Recipe, strategy: tf.distribute.Strategy, chief: bool, replace: bool,
           started: float, verbose: int,
           callbacks: list[keras.callbacks.Callback] | None) -> TrainResult:
    keras.utils.set_random_seed(recipe.seed)
    splits = _load_data(recipe)
    num_classes = recipe.num_classes or splits.num_classes
    if num_classes < splits.num_classes:
        raise RecipeError(
            "num_classes", recipe.num_classes, f"the data has {splits.num_classes} classes"
        )
    steps_per_epoch = steps_in_epoch(recipe, splits.train_size)
    lr_schedule, wd_schedule = build_schedules(recipe, steps_per_epoch)
    with strategy.scope():
        model = models.build_model(
            recipe.model,
            splits.input_shape,
            num_classes,
            width=recipe.width,
            downscale_activation=recipe.downscale_activation,
            se=recipe.se,
            drop_path_rate=recipe.drop_path_rate,
            pooling=recipe.pooling,
            aux_loss_weight=recipe.aux_loss_weight,
            pretrained=recipe.pretrained,
        )
        model.compile(
            optimizer=build_optimizer(
                recipe.optimizer,
                lr_schedule,
                momentum=recipe.momentum,
                weight_decay=recipe.weight_decay,
                weight_decay_schedule=wd_schedule,
                decay_mode=recipe.weight_decay_mode,
            ),
            jit_compile=recipe.jit_compile,
            steps_per_execution=recipe.steps_per_execution,
            **_loss_and_metrics(recipe, model),
        )
        if not tf.distribute.has_strategy():
            _build_compiled_state(model, splits.validation or splits.test, auxiliary=(
                recipe.aux_loss_weight > 0))
    # Only the chief writes the run's files; another worker of a multi-worker run keeps its
    # history and checkpoints in a folder of its own under backup/, which the chief removes
    # with the rest of backup/ when the run is finished.
    if chief:
        out = recipe.output_dir
    else:
        kind, index = distribute.task()
        out = os.path.join(recipe.output_dir, BACKUP_DIR, f"{kind}-{index}")
    if replace:
        rundir.set_aside(out)
    try:
        if chief:
            os.makedirs(out, exist_ok=True)
            recipe.to_flagfile(os.path.join(out, RECIPE_FILE))
            plots.draw_schedules(recipe, lr_schedule, wd_schedule, steps_per_epoch,
                                 os.path.join(out, SCHEDULES_PLOT))
        result = _fit_and_evaluate(recipe, model, splits, strategy, chief, out, started,
                                   verbose, callbacks)
    except BaseException:
        if replace:
            rundir.put_back(out)
        raise
    # The run it replaced goes now: set aside by this call, or by an earlier `overwrite` run
    # that was killed and which this call resumed to its end.
    shutil.rmtree(os.path.join(out, REPLACED_DIR), ignore_errors=True)
    return result


def _training_input(splits: data.DataSplits, first_epoch: int,
                    strategy: tf.distribute.Strategy, batch_size: int, auxiliary: bool):
    """The training batches from ``first_epoch`` on. Under a multi-worker strategy a streamed
    dataset is read by each worker for its own share only (`DataSplits.train_from_epoch`
    with ``worker``); in-memory data is split example by example."""
    def batches(**share):
        stream = splits.train_from_epoch(first_epoch, **share)
        return stream.map(_duplicate_labels) if auxiliary else stream

    if not (splits.streamed and distribute.is_multi_worker(strategy)):
        return distribute.shard_by_example(batches(), strategy)

    def share(context: tf.distribute.InputContext) -> tf.data.Dataset:
        mine = batches(worker=context.input_pipeline_id, workers=context.num_input_pipelines)
        return mine.rebatch(context.get_per_replica_batch_size(batch_size))

    return strategy.distribute_datasets_from_function(share)


def _fit_and_evaluate(recipe: Recipe, model: keras.Model, splits: data.DataSplits,
                      strategy: tf.distribute.Strategy, chief: bool, out: str, started: float,
                      verbose: int,
                      callbacks: list[keras.callbacks.Callback] | None) -> TrainResult:
    """Train from the last finished epoch in `out`, evaluate, and write the result there.

    The training batches of epoch k come in the order an uninterrupted run sees them
    (`DataSplits.train_from_epoch`), so a resumed run continues as if it had never stopped.
    """
    auxiliary = recipe.aux_loss_weight > 0
    os.makedirs(out, exist_ok=True)
    backup = BackupAndRestore(os.path.join(out, BACKUP_DIR), delete_checkpoint=False)
    first_epoch = backup.initial_epoch(strategy)
    train_data = _training_input(splits, first_epoch, strategy, recipe.batch_size, auxiliary)
    validation_data = splits.validation
    if auxiliary:
        validation_data = validation_data and validation_data.map(_duplicate_labels)
    rundir.drop_partial_line(os.path.join(out, HISTORY_FILE))
    guard = DivergenceGuard()
    with distribute.multi_worker_fit(model):
        model.fit(
            train_data,
            validation_data=distribute.shard_by_example(validation_data, strategy),
            epochs=recipe.epochs,
            steps_per_epoch=steps_in_epoch(recipe, splits.train_size),
            shuffle=False,
            verbose=verbose,
            callbacks=[
                guard,
                *([_MainOutputLogs()] if auxiliary else []),
                ScheduleLogger(),
                ThroughputLogger(splits.train_size),
                keras.callbacks.CSVLogger(os.path.join(out, HISTORY_FILE), append=True),
                *([_async_safe(keras.callbacks.TensorBoard(
                    os.path.join(out, TENSORBOARD_DIR), write_graph=False, profile_batch=0,
                    update_freq="epoch",
                ))] if chief else []),
                # Last of tfmagic's own: an epoch is checkpointed only after its row is logged, so
                # a kill in between repeats the epoch (and tidy_history keeps one row) instead of
                # losing the row.
                backup,
                *(callbacks or []),
            ],
        )
    history = rundir.tidy_history(os.path.join(out, HISTORY_FILE))

    test_loss = test_accuracy = None
    if auxiliary:
        model = strip_auxiliary(model)
    if not guard.diverged:
        if chief:
            ensure_space(os.path.join(out, MODEL_FILE), backup.room_needed())
            with atomic_path(os.path.join(out, MODEL_FILE)) as partial:
                model.save(partial)
        if auxiliary:
            model.compile(**_loss_and_metrics(recipe, model))
        with distribute.multi_worker_fit(model):
            test_loss, test_accuracy = (
                float(v) for v in model.evaluate(
                    distribute.shard_by_example(splits.test, strategy), verbose=0,
                    return_dict=False)
            )
    earlier_epochs = sum(row["epoch_time_s"] for row in history if row["epoch"] < first_epoch)
    val_accuracies = [row["val_accuracy"] for row in history if "val_accuracy" in row]
    speeds = [row["train_images_per_s"] for row in history]
    result = TrainResult(
        status="diverged" if guard.diverged else "completed",
        output_dir=os.path.abspath(out),
        test_accuracy=test_accuracy,
        test_loss=test_loss,
        best_val_accuracy=max(val_accuracies) if val_accuracies else None,
        val_accuracy=val_accuracies[-1] if val_accuracies else None,
        epochs_run=len(history),
        wall_time_s=earlier_epochs + time.perf_counter() - started,
        train_images_per_s=float(np.mean(speeds[1:] or speeds)) if speeds else None,
        params=model.count_params(),
        resumed_from_epoch=first_epoch,
        recipe=recipe,
        streamed=splits.streamed,
        input_mean=None if models.is_application(recipe.model) else splits.mean,
        input_std=None if models.is_application(recipe.model) else splits.std,
        bad_files=splits.bad_files,
    )
    if chief:
        _log_hparams(recipe, result, os.path.join(out, TENSORBOARD_DIR))
        write_atomic(os.path.join(out, RESULT_FILE),
                     json.dumps(result.to_json(), indent=2) + "\n")
        shutil.rmtree(os.path.join(out, BACKUP_DIR), ignore_errors=True)
    return result


def _log_hparams(recipe: Recipe, result: TrainResult, logdir: str) -> None:
    """Record the recipe's fields and the final metrics for TensorBoard's HParams dashboard,
    so `tensorboard --logdir` over many runs (a checklist's, say) compares them."""
    values = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(Recipe)
              if f.name != "output_dir"}
    final = {"test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
             "val_accuracy": result.val_accuracy,
             "best_val_accuracy": result.best_val_accuracy}
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        hparams_api.hparams(values, trial_id=os.path.abspath(recipe.output_dir))
        for name, value in final.items():
            if value is not None:
                tf.summary.scalar(name, value, step=result.epochs_run)
    writer.close()


def _load_data(recipe: Recipe) -> data.DataSplits:
    """The recipe's data; for a keras.applications model three channels, at least its
    smallest input size, and its own preprocessing instead of the standardization."""
    application = models.is_application(recipe.model)
    return data.load(
        recipe.dataset,
        batch_size=recipe.batch_size,
        eval_batch_size=recipe.eval_batch_size or None,
        seed=recipe.seed,
        train_subset=recipe.train_subset or None,
        validation_fraction=recipe.validation_fraction,
        image_size=recipe.image_size or None,
        augment=augmentation.build_train_augment(recipe, resized_crop=False),
        crop_scale=CROP_LOADER_SCALES.get(recipe.crop_scheme),
        crop_fraction=recipe.crop_fraction,
        cache=recipe.cache,
        label_base=recipe.label_base,
        one_hot=recipe.mixes_labels,
        channels=3 if application else None,
        preprocess=models.preprocess_function(recipe.model) if application else None,
        min_image_size=models.min_input_size(recipe.model) if application else None,
    )


def _loss_and_metrics(recipe: Recipe, model: keras.Model) -> dict[str, Any]:
    """`compile` arguments: the label-smoothing loss on every output (weighted for a model
    with an auxiliary head) and the accuracy of the main output."""
    loss = LabelSmoothingCrossEntropy(
        recipe.label_smoothing, recipe.label_smoothing_convention, from_logits=True
    )
    accuracy = (
        keras.metrics.CategoricalAccuracy(name="accuracy")
        if recipe.mixes_labels
        else keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    )
    if len(model.outputs) == 1:
        return {"loss": loss, "metrics": [accuracy]}
    return {
        "loss": [loss, loss],
        "loss_weights": auxiliary_loss_weights(model),
        "metrics": [[accuracy], []],
    }


def _build_compiled_state(model: keras.Model, batches: tf.data.Dataset, auxiliary: bool) -> None:
    """Create the optimizer's, loss trackers' and metrics' variables now (the metrics from one
    image of ``batches``).

    Under the default strategy Keras creates them inside the first traced train step, and a
    step that creates variables is traced a second time; built here, it is traced once (one
    first-epoch trace fewer: seconds on a short run). Other strategies build them already.
    """
    images, labels = next(iter(batches.take(1)))
    images, labels = images[:1], labels[:1]
    if auxiliary:
        images, labels = _duplicate_labels(images, labels)
    predictions = model(images, training=False)
    model.compute_loss(images, labels, predictions)
    model.compute_metrics(images, labels, predictions, sample_weight=None)
    model.reset_metrics()
    model.optimizer.build(model.trainable_variables)


@tf.autograph.experimental.do_not_convert
def _duplicate_labels(images: tf.Tensor, labels: tf.Tensor):
    return images, (labels, labels)


class _MainOutputLogs(keras.callbacks.Callback):
    """With an auxiliary head, Keras logs the main output's accuracy as `logits_accuracy`;
    this adds it as `accuracy` (and `val_accuracy`), the names of every other run."""

    def on_epoch_end(self, epoch, logs=None):
        for prefix in ("", "val_"):
            if f"{prefix}logits_accuracy" in logs:
                logs[f"{prefix}accuracy"] = logs[f"{prefix}logits_accuracy"]


def _async_safe(callback: keras.callbacks.Callback) -> keras.callbacks.Callback:
    """Mark a callback whose batch hooks do nothing in epoch mode as safe to run on Keras'
    callback thread, so that it does not make the train loop wait for every step."""
    callback.async_safe = True
    return callback


def _verbosity(verbose: int | str) -> int:
    if verbose == "auto":
        return 1 if os.isatty(1) else 2
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose={verbose!r} is not allowed: must be 0, 1, 2 or 'auto'")
    return verbose

