"""The training loop: single process or ``torchrun`` DDP, resumable bit-for-bit on CPU."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

import rep3d
from rep3d.layers.mask import mask_health_scalars
from rep3d.metrics import dice_per_class, mean_dice
from rep3d.train.checkpoint import atomic_save, load_state, rng_state, set_rng_state
from rep3d.train.data import CachedVolumes, StepSampler, preprocessing, train_loader
from rep3d.train.recipes import TrainConfig

STATE_DIR = "train_state"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint of the last finished step was written."""


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{ctx.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and ctx.enabled and device.index is None:
        device = torch.device(f"cuda:{ctx.local_rank}")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """``None`` for full precision; on CUDA ``auto`` prefers bf16 and falls back to fp16 (with a grad scaler)."""
    if mode == "off" or device.type != "cuda":
        if mode in ("bf16", "fp16") and device.type != "cuda":
            raise ValueError(f"--amp {mode} needs a CUDA device; this run is on {device}")
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def lr_lambda(cfg: TrainConfig):
    """Linear warmup to ``cfg.lr``, then cosine decay to ``cfg.min_lr_ratio * cfg.lr`` at the last step."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(cfg.iterations - cfg.warmup_steps, 1)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


@torch.no_grad()
def evaluate(model: nn.Module, volumes: list[dict[str, torch.Tensor]], cfg: TrainConfig, num_classes: int,
             device: torch.device, autocast_dtype: torch.dtype | None = None) -> list[float]:
    """Mean per-class Dice (classes 1..N-1) of sliding-window predictions over preprocessed volumes."""
    was_training = model.training
    model.eval()
    per_volume = []
    for vol in volumes:
        image = vol["image"][None].to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = sliding_window_inference(image, cfg.roi_size, cfg.sw_batch_size, model, overlap=cfg.sw_overlap,
                                              mode="gaussian")
        per_volume.append(dice_per_class(logits.argmax(1)[0].cpu(), vol["label"][0].long(), num_classes))
    model.train(was_training)
    return [mean_dice([v[c] for v in per_volume]) for c in range(num_classes - 1)]


class RunLog:
    """Rank-0 CSV + TensorBoard scalars; on resume, rows after the resumed step are dropped."""

    def __init__(self, state_dir: Path, class_names: list[str], start_step: int, enabled: bool,
                 extra_fields: list[str] = ()) -> None:
        self.enabled = enabled
        self.path = state_dir / "metrics.csv"
        self.fields = ["step", "loss", "lr", "seconds", "samples_per_s", "val_mean_dice"] + [
            f"val_dice_{name}" for name in class_names[1:]
        ] + list(extra_fields)
        self.writer = None
        if not enabled:
            return
        rows = []
        if self.path.exists() and start_step > 0:
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            w.writeheader()
            w.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(state_dir / "tensorboard"), purge_step=start_step + 1)
        except ImportError:  # tensorboard is an optional extra: the CSV has everything
            self.writer = None

    def write(self, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow({"step": step, **values})
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, float) and not math.isnan(value):
                    self.writer.add_scalar(key.replace("val_dice_", "val_dice/"), value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def parameter_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _StopFlag:
    """Turns SIGTERM / SIGINT into a flag checked between steps (the step in flight finishes first)."""

    def __init__(self) -> None:
        self.raised: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(cfg: TrainConfig, *, resume: bool = False, command: str | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns the summary written to ``<out>/train_state/summary.json``."""
    ctx = DistContext.from_env()
    out = Path(cfg.out)
    state_dir = out / STATE_DIR
    last_path = state_dir / "last.pt"
    state = None
    if resume:
        state = load_state(last_path)
        cfg = TrainConfig.from_dict({**state["config"], "out": cfg.out})
    elif last_path.exists():
        raise FileExistsError(f"{out} already holds a run ({last_path}); pass --resume to continue it, or choose "
                              "another --out")
    device = resolve_device(cfg.device, ctx)
    if ctx.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    autocast_dtype = amp_dtype(cfg.amp, device)

    from rep3d.data.msd import load_msd_dataset

    dataset = load_msd_dataset(cfg.data, num_val=cfg.num_val or None, seed=cfg.seed)
    if not dataset.val:
        raise ValueError(f"{cfg.data}: need at least 2 labelled training cases (1 for validation)")
    class_names = dataset.class_names
    num_classes = len(class_names)
    modality = ", ".join(dataset.modality[k] for k in sorted(dataset.modality))
    synthetic = bool(dataset.meta.get("synthetic", False))
    description = dataset.meta.get("description", "")

    torch.manual_seed(cfg.seed)
    model = rep3d.create_model(cfg.model, num_classes=num_classes, in_chans=dataset.in_chans, **cfg.model_args)
    model.pretrained_cfg.update(
        roi_size=tuple(cfg.roi_size), spacing=tuple(cfg.spacing), intensity_window=tuple(cfg.intensity_window),
        orientation=cfg.orientation, modality=modality, class_names=class_names, dataset=dataset.name,
        synthetic=synthetic,
    )
    memory_format = torch.channels_last_3d if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    net: nn.Module = model
    if ctx.enabled:
        if device.type == "cuda":  # BatchNorm statistics over the global batch (2 crops per GPU are too few)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    start_step, best = 0, {"dice": -1.0, "step": 0, "per_class": []}
    wall_before = 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_step, best, wall_before = state["step"], state["best"], state.get("wall_time_s", 0.0)

    if ctx.is_main:
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    train_set = CachedVolumes(dataset.train, cfg)
    val_volumes = [preprocessing(cfg)(dict(item)) for item in dataset.val] if ctx.is_main else []
    sampler = StepSampler(len(train_set), cfg.iterations, start_step, cfg.seed, cfg.subjects_per_step, ctx.rank,
                          ctx.world_size)
    log = RunLog(state_dir, class_names, start_step, ctx.is_main, extra_fields=list(mask_health_scalars(model)))

    def checkpoint(step: int, wall: float) -> None:
        if ctx.is_main:
            atomic_save({
                "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                "best": best, "config": cfg.to_dict(), "wall_time_s": wall,
            }, last_path)
        ctx.barrier()

    def publish(target: nn.Module, wall: float, test: list[float] | None = None) -> None:
        """Write the publishable folder: best weights, config and a model card with recipe and Dice."""
        metrics: dict[str, Any] = {"val_mean_dice": best["dice"]}
        metrics.update({f"val_dice/{n}": d for n, d in zip(class_names[1:], best["per_class"])})
        if test is not None:
            metrics["test_mean_dice"] = mean_dice(test)
            metrics.update({f"test_dice/{n}": d for n, d in zip(class_names[1:], test)})
        training = {
            "recipe": cfg.recipe, "iterations": cfg.iterations, "best_step": best["step"],
            "wall_time_s": round(wall, 1), "hardware": hardware_description(device), "world_size": ctx.world_size,
            "num_train": len(dataset.train), "num_val": len(dataset.val),
            "num_test": len(dataset.test_labeled) if test is not None else 0, "config": cfg.to_dict(),
        }
        rep3d.save_pretrained(target, out, metrics=metrics, command=command, dataset=dataset.name,
                              description=description or None, metadata={"training": training})

    t0 = time.perf_counter()
    samples = cfg.subjects_per_step * cfg.crops_per_subject * ctx.world_size
    bar = tqdm(total=cfg.iterations, initial=start_step, disable=not ctx.is_main, desc="train", unit="step",
               dynamic_ncols=True)
    net.train()
    step = start_step
    with _StopFlag() as stop:
        for batch in train_loader(train_set, sampler, cfg.workers):
            t_step = time.perf_counter()
            image = batch["image"].to(device, memory_format=memory_format)
            label = batch["label"].to(device)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = loss_fn(net(image), label)
            if ctx.any(not torch.isfinite(loss).item(), device):
                bar.close()
                log.close()
                raise NonFiniteLossError(
                    f"loss became {loss.item()} at step {step + 1}; stopped without saving. The last good "
                    f"checkpoint ({last_path}, step {load_state(last_path)['step'] if last_path.exists() else 0})"
                    " is kept: check the data (NaNs?) or lower --lr, then --resume or restart")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            seconds = time.perf_counter() - t_step
            lr = optimizer.param_groups[0]["lr"]
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", samples_s=f"{samples / seconds:.2f}")
            row: dict[str, Any] = dict(loss=loss.item(), lr=lr, seconds=seconds, samples_per_s=samples / seconds)
            validate = step % cfg.val_every == 0 or step == cfg.iterations
            if validate:
                if ctx.is_main:
                    per_class = evaluate(model, val_volumes, cfg, num_classes, device, autocast_dtype)
                    row["val_mean_dice"] = mean_dice(per_class)
                    row.update({f"val_dice_{n}": d for n, d in zip(class_names[1:], per_class)})
                    row.update(mask_health_scalars(model))  # saturation / a frozen generator shows up here
                    bar.write(f"step {step}: validation mean Dice {row['val_mean_dice']:.4f}")
                    if row["val_mean_dice"] > best["dice"]:
                        best = {"dice": row["val_mean_dice"], "step": step, "per_class": per_class}
                        publish(model, wall_before + time.perf_counter() - t0)
                ctx.barrier()
            log.write(step, **row)
            wall = wall_before + time.perf_counter() - t0
            if validate or step % cfg.checkpoint_every == 0:
                checkpoint(step, wall)
            if ctx.any(stop.raised is not None, device):
                if not (validate or step % cfg.checkpoint_every == 0):
                    checkpoint(step, wall)
                bar.close()
                log.close()
                raise TrainingInterrupted(
                    f"{stop.raised or 'a stop signal'} received: stopped after step {step}, checkpoint saved to "
                    f"{last_path}; continue with: rep3d train --out {cfg.out} --resume")
    bar.close()
    log.close()
    wall = wall_before + time.perf_counter() - t0

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
    summary: dict[str, Any] = {"steps": step, "wall_time_s": wall, "best": best, "rank_parameter_sha256": digests,
                               "hardware": hardware_description(device), "world_size": ctx.world_size}
    if ctx.is_main:
        if dataset.test_labeled:
            best_model = _load_best(out, device)
            test_volumes = [preprocessing(cfg)(dict(item)) for item in dataset.test_labeled]
            test = evaluate(best_model, test_volumes, cfg, num_classes, device, autocast_dtype)
            summary["test_dice"] = dict(zip(class_names[1:], test))
            summary["test_mean_dice"] = mean_dice(test)
            summary["num_test"] = len(test_volumes)
            publish(best_model, wall, test)
        (state_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    ctx.barrier()
    if ctx.enabled:
        dist.destroy_process_group()
    return summary


def _load_best(out: Path, device: torch.device) -> nn.Module:
    return rep3d.create_model(f"local-dir:{out}", pretrained=True).to(device).eval()


def main_guard(fn, *args, **kwargs) -> int:
    """Run ``fn`` and map the training errors to exit codes with one clear line on stderr."""
    try:
        fn(*args, **kwargs)
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 143
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0
