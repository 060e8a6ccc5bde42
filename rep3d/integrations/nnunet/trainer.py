"""nnU-Net trainers with rep3d's optimisation recipe (importing this module imports nnunetv2).

``nnUNetTrainerRep3D`` changes only the optimisation, taking its values from rep3d's ``paper`` recipe
(:func:`rep3d.train.recipes.build_config`): AdamW without weight decay on norms and biases, linear warmup then
cosine decay per iteration over nnU-Net's ``num_epochs x num_iterations_per_epoch``, and the recipe's gradient-norm
clipping (nnU-Net's ``train_step`` hard-codes 12). Data loading, augmentation, deep-supervision loss, validation and
checkpoints are nnU-Net's. On CPU the trainers keep ``OMP_NUM_THREADS`` threads when it is set (nnU-Net's
``-device cpu`` otherwise takes every core).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from rep3d.integrations.nnunet import check_patch_size, require_nnunet
from rep3d.train.runtime import warmup_cosine

require_nnunet()

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402
from nnunetv2.utilities.helpers import dummy_context  # noqa: E402
from torch import autocast  # noqa: E402

DEFAULT_DEVICE = torch.device("cuda")  # nnU-Net's default; its entry points pass the device explicitly


def recipe_values() -> dict[str, float]:
    """lr, weight decay, warmup steps, final lr ratio and clipping norm of rep3d's ``paper`` recipe."""
    from rep3d.train.recipes import build_config

    cfg = build_config("paper")
    return dict(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                min_lr_ratio=cfg.min_lr_ratio, grad_clip=cfg.grad_clip)


class _PerIterationLR:
    """Stands in for nnU-Net's per-epoch scheduler: ``step(epoch)`` sets the lr of the epoch's first iteration;
    :meth:`set` is called by the trainer before every optimiser step."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, total: int, warmup: int,
                 min_ratio: float, iterations_per_epoch: int) -> None:
        self.optimizer, self.base_lr, self.total = optimizer, base_lr, total
        self.warmup, self.min_ratio, self.per_epoch = warmup, min_ratio, iterations_per_epoch
        self.iteration = 0

    def set(self, iteration: int) -> None:
        self.iteration = iteration
        lr = self.base_lr * warmup_cosine(iteration, self.total, self.warmup, self.min_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, epoch: int | None = None) -> None:
        self.set(self.iteration if epoch is None else epoch * self.per_epoch)

    def state_dict(self) -> dict:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state.get("iteration", 0))


class nnUNetTrainerRep3D(nnUNetTrainer):  # noqa: N801 - nnU-Net's naming convention
    """nnU-Net training with rep3d's recipe: AdamW (no decay on norms / biases), warmup + cosine per iteration,
    the recipe's gradient clipping. Use with a rep3d configuration (``rep3d nnunet-plans``)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = DEFAULT_DEVICE) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        recipe = recipe_values()
        self.initial_lr = recipe["lr"]
        self.weight_decay = recipe["weight_decay"]
        self.warmup_steps = int(recipe["warmup_steps"])
        self.min_lr_ratio = recipe["min_lr_ratio"]
        self.grad_clip = recipe["grad_clip"]
        self._iteration = 0
        if self.configuration_manager.network_arch_class_name.endswith("Rep3DnnUNet"):
            check_patch_size(self.configuration_manager.patch_size)
        if self.device.type == "cpu" and os.environ.get("OMP_NUM_THREADS", "").isdigit():
            # nnUNetv2_train -device cpu sets every core; a shared machine asked for fewer
            torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))

    def configure_optimizers(self):
        from timm.optim import param_groups_weight_decay

        optimizer = torch.optim.AdamW(param_groups_weight_decay(self.network, self.weight_decay), lr=self.initial_lr)
        total = self.num_epochs * self.num_iterations_per_epoch
        scheduler = _PerIterationLR(optimizer, self.initial_lr, total, self.warmup_steps, self.min_lr_ratio,
                                    self.num_iterations_per_epoch)
        return optimizer, scheduler

    def on_train_epoch_start(self) -> None:
        self._iteration = self.current_epoch * self.num_iterations_per_epoch
        super().on_train_epoch_start()

    def train_step(self, batch: dict) -> dict:
        # nnU-Net's train_step with the recipe's clipping norm and a per-iteration learning rate
        self.lr_scheduler.set(self._iteration)
        self._iteration += 1
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
            loss = self.loss(output, target)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
            self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}


class nnUNetTrainerRep3DNoMirroring(nnUNetTrainerRep3D):  # noqa: N801
    """:class:`nnUNetTrainerRep3D` without mirroring, in training augmentation and in test-time augmentation: use it
    when labels are lateralised (left / right kidney), which a flip would swap."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):  # noqa: N802 - nnU-Net's name
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None


class nnUNetTrainerRep3DDebug(nnUNetTrainerRep3D):  # noqa: N801
    """One epoch of one training and one validation iteration, no final validation pass: checks that a plan,
    its data and the network work together in seconds. Not for results."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = DEFAULT_DEVICE) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 1
        self.num_val_iterations_per_epoch = 1
        self.warmup_steps = 0

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        self.print_to_log_file("nnUNetTrainerRep3DDebug: final validation skipped (debug trainer)")
