"""The training loop as a :class:`Trainer`: single process or ``torchrun`` DDP, resumable bit-for-bit on CPU.

Validation and the final test use :func:`rep3d.inference.evaluate_cases` (the evaluation path of
``rep3d evaluate``) on volumes preprocessed by the Predictor's own preprocessing, on the model grid.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from monai.losses import DiceCELoss
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from rep3d.builder import create_model
from rep3d.configs.pretrained import with_values
from rep3d.data.msd import MSDDataset, load_msd_dataset
from rep3d.errors import Rep3DDataError, Rep3DError, Rep3DValueError
from rep3d.hub import save_pretrained
from rep3d.inference.distribution import TRAINING_DISTRIBUTION_KEY, dataset_distribution
from rep3d.layers.mask import mask_health_scalars
from rep3d.metrics import mean_dice
from rep3d.outputs import record_outputs
from rep3d.train.checkpoint import (
    STATE_DIR,
    CheckpointError,
    DiskFullError,
    atomic_save,
    check_run_folder,
    is_disk_full,
    last_checkpoint_path,
    load_state,
    remove_stale_temp_files,
    rng_state,
    set_rng_state,
)
from rep3d.train.curves import write_run_curves
from rep3d.train.data import FLIP_AXES, CachedVolumes, StepSampler, preprocessing, train_loader
from rep3d.train.progress import ESTIMATE_AFTER_STEPS, format_estimate
from rep3d.train.recipes import TrainConfig
from rep3d.train.runtime import (
    DistContext,
    RunLog,
    StopFlag,
    amp_dtype,
    hardware_description,
    lr_lambda,
    parameter_digest,
    resolve_device,
)
from rep3d.train.validation import evaluate

RESUME_OVERRIDES = ("iterations", "val_every", "checkpoint_every", "workers", "threads")
"""Settings ``--resume`` may change: when and how the run proceeds, not what it computes per step."""


class NonFiniteLossError(Rep3DError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint of the last finished step was written."""


class Trainer:
    """One run: builds data, model, optimizer from ``cfg`` (or from the checkpoint in ``cfg.out`` when ``resume``),
    then :meth:`run` trains, validates, checkpoints and publishes. ``command`` is recorded in the model card."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, command: str | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        self.ctx = DistContext.from_env()
        self.out = Path(cfg.out)
        self.state_dir = self.out / STATE_DIR
        self.last_path = last_checkpoint_path(self.out)
        self.command = command
        self.t_created = time.perf_counter()  # wall times count set-up (data caching, model building) too
        if self.out.exists() and not self.out.is_dir():
            raise Rep3DValueError(f"--out {self.out} is a file; give a folder for the run (it will hold the model and "
                                  "train_state/)")
        state = None
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        if resume:
            refused = sorted(set(overrides) - set(RESUME_OVERRIDES))
            if refused:
                raise Rep3DValueError(f"--resume continues the recorded run; it can change only "
                                      f"{', '.join(RESUME_OVERRIDES)}, not {', '.join(refused)}: start a new run "
                                      "with another --out to change those")
            state = load_state(self.last_path)
            try:
                cfg = TrainConfig.from_dict({**state["config"], **overrides, "out": cfg.out})
            except (Rep3DError, TypeError, ValueError) as err:
                raise CheckpointError(f"training checkpoint {self.last_path} holds an unusable config ({err}); "
                                      "start a new run with another --out") from err
            if cfg.iterations <= int(state["step"]):
                raise Rep3DValueError(f"--iterations {cfg.iterations}: the run in {self.out} already reached step "
                                      f"{int(state['step'])}; give more iterations than that to continue it")
        elif self.last_path.exists():
            raise FileExistsError(f"{self.out} already holds a run ({self.last_path}); pass --resume to continue it, "
                                  "or choose another --out")
        else:
            check_run_folder(self.out)
        if self.ctx.is_main:  # killed checkpoint writes of an earlier process leave partial files behind
            remove_stale_temp_files(self.last_path)
        self.cfg = cfg
        self._setup_runtime()
        self.dataset = self._load_dataset()
        self._setup_model()
        self._setup_optimizer()
        self.start_step, self.best, self.wall_before = 0, {"dice": -1.0, "step": 0, "per_class": []}, 0.0
        if state is not None:
            self._restore(state)
        if self.ctx.is_main:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            record_outputs(self.out, [], "rep3d train")  # the run folder is rep3d's: the model is published into it
            (self.state_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        num_classes = len(self.class_names)  # label values are checked against it as the volumes are cached
        self.train_set = CachedVolumes(self.dataset.train, cfg, num_classes)
        self.val_volumes = ([preprocessing(cfg, num_classes=num_classes)(dict(item)) for item in self.dataset.val]
                            if self.ctx.is_main else [])
        self.sampler = StepSampler(len(self.train_set), cfg.iterations, self.start_step, cfg.seed,
                                   cfg.subjects_per_step, self.ctx.rank, self.ctx.world_size)
        self.log = RunLog(self.state_dir, self.class_names, self.start_step, self.ctx.is_main,
                          extra_fields=list(mask_health_scalars(self.model)))

    # ------------------------------------------------------------------------------------------------ setup
    def _setup_runtime(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.device = resolve_device(cfg.device, ctx)
        if ctx.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.autocast_dtype = amp_dtype(cfg.amp, self.device)

    def _load_dataset(self) -> MSDDataset:
        cfg = self.cfg
        dataset = load_msd_dataset(cfg.data, num_val=cfg.num_val or None, seed=cfg.seed)
        if not dataset.val:
            raise Rep3DDataError(f"{cfg.data}: need at least 2 labelled training cases (1 for validation)")
        self.class_names = dataset.class_names
        return dataset

    def _setup_model(self) -> None:
        cfg, dataset = self.cfg, self.dataset
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, num_classes=len(self.class_names), in_chans=dataset.in_chans,
                             **cfg.model_args)
        modality = ", ".join(dataset.modality[k] for k in sorted(dataset.modality))
        model.pretrained_cfg = model.default_cfg = with_values(
            model.pretrained_cfg,
            roi_size=tuple(cfg.roi_size), spacing=tuple(cfg.spacing), intensity_window=tuple(cfg.intensity_window),
            orientation=cfg.orientation, modality=modality, class_names=self.class_names, dataset=dataset.name,
            synthetic=dataset.synthetic,
            tta_flip_axes=list(FLIP_AXES),  # what the Predictor's TTA may flip: what augmentation flipped
        )
        if self.ctx.is_main and cfg.intensity_window is not None:
            # what rep3d predict compares every input with (rep3d.inference.distribution)
            model.pretrained_cfg = model.default_cfg = with_values(model.pretrained_cfg, **{
                TRAINING_DISTRIBUTION_KEY: dataset_distribution(
                    dataset.train, modality=modality or "?", window=cfg.intensity_window,
                    source=f"{dataset.name} training cases" + (" (SYNTHETIC)" if dataset.synthetic else ""))})
        self.memory_format = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
        model.to(self.device, memory_format=self.memory_format)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        self.net: nn.Module = model
        if self.ctx.enabled:
            if self.device.type == "cuda":  # BatchNorm statistics over the global batch (2 crops per GPU are too few)
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.net = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                               else None)
        self.model = model

    def _setup_optimizer(self) -> None:
        cfg = self.cfg
        self.optimizer = torch.optim.AdamW(param_groups_weight_decay(self.model, cfg.weight_decay), lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            self.start_step, self.best = int(state["step"]), dict(state["best"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"training checkpoint {self.last_path} does not fit the run it describes "
                                  f"({type(err).__name__}: {detail}); start a new run with another --out") from err
        self.wall_before = state.get("wall_time_s", 0.0)

    # ------------------------------------------------------------------------------------------------ saving
    def checkpoint(self, step: int, wall: float) -> None:
        """Write ``train_state/last.pt`` (rank 0), then wait for every rank."""
        if self.ctx.is_main:
            atomic_save({
                "step": step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
                "best": self.best, "config": self.cfg.to_dict(), "wall_time_s": wall,
            }, self.last_path)
        self.ctx.barrier()

    def publish(self, target: nn.Module, wall: float, test: list[float] | None = None) -> None:
        """Write the publishable folder: best weights, config and a model card with recipe and Dice."""
        names, dataset, cfg = self.class_names[1:], self.dataset, self.cfg
        metrics: dict[str, Any] = {"val_mean_dice": self.best["dice"]}
        metrics.update({f"val_dice/{n}": d for n, d in zip(names, self.best["per_class"])})
        if test is not None:
            metrics["test_mean_dice"] = mean_dice(test)
            metrics.update({f"test_dice/{n}": d for n, d in zip(names, test)})
        training = {
            "recipe": cfg.recipe, "iterations": cfg.iterations, "best_step": self.best["step"],
            "wall_time_s": round(wall, 1), "hardware": hardware_description(self.device),
            "world_size": self.ctx.world_size, "num_train": len(dataset.train), "num_val": len(dataset.val),
            "num_test": len(dataset.test_labeled) if test is not None else 0, "config": cfg.to_dict(),
        }
        try:
            save_pretrained(target, self.out, metrics=metrics, command=self.command, dataset=dataset.name,
                            description=dataset.description, metadata={"training": training},
                            overwrite=True)
        except (OSError, RuntimeError) as err:
            if isinstance(err, DiskFullError) or not is_disk_full(err):
                raise
            raise DiskFullError(28, f"the disk holding {self.out} is full: cannot write the model folder; the "
                                "previous model files and the last checkpoint "
                                f"{self.last_path} are kept; free some space, then continue with --resume") from err

    # ------------------------------------------------------------------------------------------------ training
    def _step(self, batch: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        """One optimisation step on ``batch``; returns the loss. Raises :class:`NonFiniteLossError` before
        touching the weights when the loss (on any rank) is not finite."""
        cfg, device = self.cfg, self.device
        image = batch["image"].to(device, memory_format=self.memory_format)
        label = batch["label"].to(device)
        with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            loss = self.loss_fn(self.net(image), label)
        if self.ctx.any(not torch.isfinite(loss).item(), device):
            kept = load_state(self.last_path)["step"] if self.last_path.exists() else 0
            raise NonFiniteLossError(
                f"loss became {loss.item()} at step {step + 1}; stopped without saving. The last good "
                f"checkpoint ({self.last_path}, step {kept}) is kept: check the data (NaNs?) or lower --lr, then "
                "--resume or restart")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss

    def _validate(self, step: int, row: dict[str, Any], bar: tqdm, wall: float) -> None:
        """Validation Dice into ``row`` (rank 0); publishes the model when it is the best so far."""
        if self.ctx.is_main:
            per_class = evaluate(self.model, self.val_volumes, self.cfg, self.class_names, self.device,
                                 self.autocast_dtype)
            row["val_mean_dice"] = mean_dice(per_class)
            row.update({f"val_dice_{n}": d for n, d in zip(self.class_names[1:], per_class)})
            row.update(mask_health_scalars(self.model))  # saturation / a frozen generator shows up here
            bar.write(f"step {step}: validation mean Dice {row['val_mean_dice']:.4f}")
            if row["val_mean_dice"] > self.best["dice"]:
                self.best = {"dice": row["val_mean_dice"], "step": step, "per_class": per_class}
                self.publish(self.model, wall)
        self.ctx.barrier()

    def _write_curves(self) -> None:
        if self.ctx.is_main:
            write_run_curves(self.out, self.log.path, title=f"rep3d train: {self.out} ({self.cfg.model}, "
                             f"{self.cfg.recipe} recipe)")

    def _loop(self, bar: tqdm) -> tuple[int, float]:
        cfg, t0 = self.cfg, self.t_created
        samples = cfg.subjects_per_step * cfg.crops_per_subject * self.ctx.world_size
        step = self.start_step
        # the time estimate: printed once ESTIMATE_AFTER_STEPS steps are timed, and again after the first validation
        timed_from, val_in_timing, seconds_per_step, val_seconds = None, 0.0, None, None
        self.net.train()
        with StopFlag() as stop:
            for batch in train_loader(self.train_set, self.sampler, cfg.workers):
                t_step = time.perf_counter()
                loss = self._step(batch, step)
                step += 1
                seconds = time.perf_counter() - t_step
                lr = self.optimizer.param_groups[0]["lr"]
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", samples_s=f"{samples / seconds:.2f}")
                row: dict[str, Any] = dict(loss=loss.item(), lr=lr, seconds=seconds, samples_per_s=samples / seconds)
                validate = step % cfg.val_every == 0 or step == cfg.iterations
                if step == self.start_step + 1:
                    timed_from = (time.perf_counter(), step)
                if validate:
                    t_val = time.perf_counter()
                    self._validate(step, row, bar, self.wall_before + time.perf_counter() - t0)
                    seconds_val = time.perf_counter() - t_val
                    if seconds_per_step is None:
                        val_in_timing += seconds_val
                    elif val_seconds is None and self.ctx.is_main and step < cfg.iterations:
                        bar.write(format_estimate(seconds_per_step, step, cfg.iterations, cfg.val_every,
                                                  seconds_val))
                    val_seconds = seconds_val
                if (seconds_per_step is None and timed_from is not None
                        and step - timed_from[1] >= ESTIMATE_AFTER_STEPS and step < cfg.iterations):
                    elapsed = time.perf_counter() - timed_from[0] - val_in_timing
                    seconds_per_step = elapsed / (step - timed_from[1])
                    if self.ctx.is_main:
                        bar.write(format_estimate(seconds_per_step, step, cfg.iterations, cfg.val_every, val_seconds))
                self.log.write(step, **row)
                if validate:
                    self._write_curves()
                wall = self.wall_before + time.perf_counter() - t0
                saved = validate or step % cfg.checkpoint_every == 0
                if saved:
                    self.checkpoint(step, wall)
                if self.ctx.any(stop.raised is not None, self.device):
                    if not saved:
                        self.checkpoint(step, wall)
                    raise TrainingInterrupted(
                        f"{stop.raised or 'a stop signal'} received: stopped after step {step}, checkpoint saved to "
                        f"{self.last_path}; continue with: rep3d train --out {cfg.out} --resume")
        return step, self.wall_before + time.perf_counter() - t0

    def run(self) -> dict[str, Any]:
        """Train to ``cfg.iterations``; returns the summary written to ``<out>/train_state/summary.json``."""
        bar = tqdm(total=self.cfg.iterations, initial=self.start_step, disable=not self.ctx.is_main, desc="train",
                   unit="step", dynamic_ncols=True)
        try:
            step, wall = self._loop(bar)
        finally:
            bar.close()
            self.log.close()
        return self._finish(step, wall)

    def _finish(self, step: int, wall: float) -> dict[str, Any]:
        ctx, model = self.ctx, self.model
        if ctx.enabled:
            # DDP syncs gradients and broadcasts rank 0's buffers before each forward; the last forward's BatchNorm
            # update is local, so hand every rank rank 0's final buffers (the ones rank 0 saved).
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        digests = [parameter_digest(model)]
        if ctx.enabled:
            gathered: list[Any] = [None] * ctx.world_size
            dist.all_gather_object(gathered, digests[0])
            digests = gathered
        summary: dict[str, Any] = {"steps": step, "wall_time_s": wall, "best": self.best,
                                   "rank_parameter_sha256": digests, "hardware": hardware_description(self.device),
                                   "world_size": ctx.world_size}
        if ctx.is_main:
            if self.dataset.test_labeled:
                summary.update(self._test())
            elif self.best["step"] > 0:  # the card was written at the best validation: give it the whole wall time
                self.publish(self._best_model(), self._wall())
            summary["wall_time_s"] = self._wall()
            summary["model_dir"] = str(self.out)
            self._write_curves()
            summary["curves"] = str(self.out / "curves.png")
            (self.state_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        ctx.barrier()
        if ctx.enabled:
            dist.destroy_process_group()
        return summary

    def _wall(self) -> float:
        """Seconds of this run so far: earlier processes' (resumed) plus this one's since the Trainer was built."""
        return self.wall_before + time.perf_counter() - self.t_created

    def _best_model(self) -> nn.Module:
        return create_model(f"local-dir:{self.out}", pretrained=True).to(self.device).eval()

    def _test(self) -> dict[str, Any]:
        """Dice of the best (published) model on the labelled test cases; republishes with the test Dice and the
        run's wall time, test included."""
        best_model = self._best_model()
        test_volumes = [preprocessing(self.cfg, num_classes=len(self.class_names))(dict(item))
                        for item in self.dataset.test_labeled]
        test = evaluate(best_model, test_volumes, self.cfg, self.class_names, self.device, self.autocast_dtype)
        self.publish(best_model, self._wall(), test)
        return {"test_dice": dict(zip(self.class_names[1:], test)), "test_mean_dice": mean_dice(test),
                "num_test": len(test_volumes)}


def train(cfg: TrainConfig, *, resume: bool = False, command: str | None = None,
          overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns the summary written to ``<out>/train_state/summary.json``.

    With ``resume``, ``overrides`` may change the settings in :data:`RESUME_OVERRIDES` (e.g. more ``iterations``);
    any other key is refused by name."""
    return Trainer(cfg, resume=resume, command=command, overrides=overrides).run()
