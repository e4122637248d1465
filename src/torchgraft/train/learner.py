"""The Learner: a training loop over plain DataLoaders and torch optimizers, with fine-tuning recipes.

Readable top to bottom: ``fit`` (constant rates) and ``fit_one_cycle`` (``OneCycleLR`` with each layer
group's own maximum) both run :meth:`Learner._run`, which runs epochs of :meth:`Learner._train_epoch` and
:meth:`Learner._validate`, writes a checkpoint after each epoch and prints one line per epoch.
``fine_tune`` trains the head with the body frozen, then everything with discriminative rates.

The optimizer is rebuilt from :func:`torchgraft.param_groups` at the start of every ``fit`` from the model's
current parameters (moments of the parameters still there carry over), and checked before every step
(:func:`torchgraft.watch_optimizer`), so freezing, unfreezing and surgery between calls never leave a
parameter untrained — and surgery in the middle of a fit is caught before the next step.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from torchgraft.tasks.metrics import Metric, resolve_metrics
from torchgraft.train.cache import cache_problem, cached_loader
from torchgraft.train.distributed import is_main, reduce_sum, setup, shard_loader
from torchgraft.train.lr_finder import LRFind, lr_find
from torchgraft.train.runstate import get_rng_state, read_state, set_rng_state, write_state
from torchgraft.tune.freeze import BNPolicy, freeze, unfreeze
from torchgraft.tune.optim import LRSpec, param_groups, watch_optimizer

__all__ = ["HOOKS", "Learner", "TrainingDivergedError"]

HOOKS = ("epoch_begin", "epoch_end", "step_begin", "step_end")
Hook = Callable[["Learner"], None]


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


def _amp_dtype(amp: str | None) -> torch.dtype | None:
    if amp in (None, False, "no"):
        return None
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise ValueError(f"Learner: amp={amp!r} is not a mode. Choose None, 'bf16' or 'fp16'.")
    return dtypes[amp]


def _has_batchnorm2d(model: nn.Module) -> bool:
    """Whether ``model`` is a convolutional network with 2-D BatchNorm (channels-last pays off there)."""
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


class Learner:
    """Train ``model`` on ``train_dl``, evaluate on ``valid_dl``.

    Args:
        model: any module (a :func:`torchgraft.graft` result gets discriminative rates by layer group).
        train_dl: a DataLoader (or any iterable with ``len``) of ``(inputs, targets)`` batches.
        valid_dl: batches to evaluate after each epoch (optional).
        loss: ``loss(outputs, targets)`` (default: cross-entropy).
        metrics: names (``"accuracy"``, ``"error_rate"``, ``"top5"``) or callables ``(outputs, targets)``.
        optimizer: a ``torch.optim`` optimizer class, built from :func:`torchgraft.param_groups`.
        weight_decay: weight decay of decayed parameters (none on biases, norms, embeddings).
        device: where to train (default: CUDA if available, else CPU).
        amp: ``None``, ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA, with a gradient scaler).
        channels_last: put the model and 4-D inputs in channels-last memory format. ``"auto"`` (default):
            on for convolutional networks with 2-D BatchNorm (ResNet, EfficientNet, MobileNet, DenseNet...),
            where training steps measured 1.05-1.66x faster on CPU (bench/channels_last.py), off for the
            rest (ConvNeXt and ViT gained nothing: 0.93-1.01x over two runs).
        accumulate: number of batches whose gradients are summed before a step.
        clip_grad: clip the gradient norm to this value.
        checkpoint_dir: write ``last.pt`` after every epoch (and ``best.pt`` for the best first metric),
            atomically; ``resume=`` continues from one.
        progress: show tqdm bars (default: only when stderr is a terminal); ``False``: one line per epoch.
        quiet: print nothing.
        hooks: ``{"epoch_begin"|"epoch_end"|"step_begin"|"step_end": callable(learner) or a list of them}``.
        cache_features: while the body of a grafted model is fully frozen (``bn="frozen"``), compute its
            features once and train the head on them (:mod:`torchgraft.train.cache`); other fits run normally.

    Under ``torchrun`` with several processes the Learner trains with ``DistributedDataParallel`` (gloo on
    CPU, NCCL on CUDA): each rank reads its shard of the data, losses and metrics are reduced over all
    ranks, and only rank 0 prints and writes checkpoints (:mod:`torchgraft.train.distributed`).

    Example:
        >>> learner = Learner(graft(resnet18(weights="DEFAULT"), 10), train_dl, valid_dl)
        >>> learner.fine_tune(3)
    """

    def __init__(
        self,
        model: nn.Module,
        train_dl: Iterable[Any],
        valid_dl: Iterable[Any] | None = None,
        *,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        metrics: Sequence[str | Metric] | str | Metric | None = ("accuracy",),
        optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
        weight_decay: float = 0.01,
        device: str | torch.device | None = None,
        amp: str | None = None,
        channels_last: bool | Literal["auto"] = "auto",
        accumulate: int = 1,
        clip_grad: float | None = None,
        checkpoint_dir: str | Path | None = None,
        progress: bool | None = None,
        quiet: bool = False,
        hooks: dict[str, Hook | Sequence[Hook]] | None = None,
        cache_features: bool = False,
    ) -> None:
        if accumulate < 1:
            raise ValueError(f"Learner: accumulate must be >= 1, got {accumulate}.")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.amp_dtype = _amp_dtype(amp)
        if self.amp_dtype is torch.float16 and self.device.type != "cuda":
            raise ValueError("Learner: amp='fp16' needs CUDA; on CPU use amp='bf16'.")
        self.channels_last = _has_batchnorm2d(model) if channels_last == "auto" else bool(channels_last)
        memory = torch.channels_last if self.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory)
        self.distributed = setup(self.device)
        self.network: nn.Module = self.model  # what runs the forward: the model, or DDP around it
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
            train_dl = shard_loader(train_dl)  # type: ignore[arg-type]
            valid_dl = shard_loader(valid_dl, shuffle=False) if valid_dl is not None else None  # type: ignore[arg-type]
        self.train_dl, self.valid_dl = train_dl, valid_dl
        self.loss = loss or nn.functional.cross_entropy
        self.metrics = resolve_metrics(metrics)
        self.optimizer_class, self.weight_decay = optimizer, weight_decay
        self.accumulate, self.clip_grad = accumulate, clip_grad
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.quiet = quiet
        self.hooks: dict[str, list[Hook]] = {name: [] for name in HOOKS}
        for name, hook in (hooks or {}).items():
            for fn in [hook] if callable(hook) else hook:
                self.add_hook(name, fn)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16 else None
        self.history: list[dict[str, Any]] = []
        self.lr_history: list[list[float]] = []
        self.epoch = 0  # epochs completed in the current fit
        self.step = 0  # optimizer steps in the current fit
        self._phase = 0  # fit calls so far (fine_tune's phases)
        self._stage: str | None = None  # which part of a recipe is running ("frozen", "unfrozen")
        self._watch: Any = None
        self.cache_features = cache_features
        self._cache: tuple[Any, Any] | None = None  # (train, valid) feature loaders while the body is frozen

    # ------------------------------------------------------------------------------------------ set-up

    def close(self) -> None:
        """Release what ties the Learner to the process: the DistributedDataParallel wrapper (which must go
        before its process group, see :func:`torchgraft.train.distributed.cleanup`) and the optimizer watch hook.
        The model, history and optimizer stay usable; the Learner can train again only on one process.

        Example:
            >>> learner.fit(3, 1e-3)
            >>> learner.close()
            >>> torchgraft.distributed.cleanup()
        """
        if self._watch is not None:
            self._watch.remove()
            self._watch = None
        self.network = self.model
        gc.collect()  # the wrapper's reducer holds the process group until it is collected

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_hook(self, event: str, hook: Hook) -> None:
        """Call ``hook(learner)`` at ``event`` (one of :data:`HOOKS`)."""
        if event not in self.hooks:
            raise ValueError(f"Learner: unknown hook event {event!r}. Choose from {HOOKS}.")
        self.hooks[event].append(hook)

    def _call(self, event: str) -> None:
        for hook in self.hooks[event]:
            hook(self)

    def _prepare_optimizer(self, lr: LRSpec) -> torch.optim.Optimizer:
        """An optimizer with ``lr`` per layer group; moments of a previous optimizer carry over."""
        groups = param_groups(self.model, lr=lr, weight_decay=self.weight_decay)
        optimizer = self.optimizer_class(groups)
        if self.optimizer is not None:  # carry the moments of parameters still in the model over
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            for param, state in self.optimizer.state.items():
                if id(param) in held:
                    optimizer.state[param] = state
        if self._watch is not None:
            self._watch.remove()
        self._watch = watch_optimizer(optimizer, self.model)
        self.optimizer = optimizer
        return optimizer

    def _to_device(self, batch: Any) -> tuple[Any, Any]:
        inputs, targets = batch[0], batch[1]
        inputs = inputs.to(self.device, non_blocking=True)
        if self.channels_last and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, targets.to(self.device, non_blocking=True)

    def _forward(self) -> nn.Module:
        """What maps a batch to outputs: the head alone while features are cached, else the model."""
        return self.model.head if self._cache else self.network

    def _set_cache(self) -> None:
        """Cache body features for this fit if asked and the body cannot change; else run normally."""
        self._cache = None
        if not self.cache_features or cache_problem(self.model) is not None or self.distributed:
            return
        move = self._to_device
        train = cached_loader(self.model, self.train_dl, device=self.device, move=move, train=True)
        valid = (
            cached_loader(self.model, self.valid_dl, device=self.device, move=move, train=False)
            if self.valid_dl is not None
            else None
        )
        self._cache = (train, valid)
        if not self.quiet:
            print(f"feature cache: body features of {len(train.dataset)} samples computed once", file=sys.stderr)

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ----------------------------------------------------------------------------------------- the loop

    def _train_epoch(self, epoch: int) -> float:
        model, optimizer, accumulate = self._forward(), self.optimizer, self.accumulate
        assert optimizer is not None
        model.train()
        loader = self._cache[0] if self._cache else self.train_dl
        total, count = torch.zeros((), device=self.device), 0
        n_batches = len(loader)  # type: ignore[arg-type]
        bar = self._bar(loader, f"epoch {epoch + 1}")
        for i, batch in enumerate(bar):
            self._call("step_begin")
            inputs, targets = self._to_device(batch)
            step_now = (i + 1) % accumulate == 0 or i + 1 == n_batches
            local = self.distributed and not step_now and model is self.network
            with self._local(local), self._autocast():
                loss = self.loss(model(inputs), targets)
            if self._diverged(loss):
                raise TrainingDivergedError(
                    f"loss is {loss.item()} at epoch {epoch + 1}, batch {i + 1}; training stopped. "
                    f"{self._last_good()}Lower the learning rate, or clip gradients (clip_grad=1.0)."
                )
            if i % accumulate == 0:
                # here, not right after the step: freeing the gradients just before backward allocates them
                # again (measured ~4% faster on CPU than zeroing after the step)
                optimizer.zero_grad(set_to_none=True)
            scaled = loss / accumulate if accumulate > 1 else loss
            with self._local(local):
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            if step_now:
                self._optimizer_step()
            total += loss.detach() * len(targets)
            count += len(targets)
            self._call("step_end")
        optimizer.zero_grad(set_to_none=True)  # free the last gradients
        count_ = reduce_sum(torch.tensor(float(count), device=self.device))
        return (reduce_sum(total) / count_.clamp(min=1)).item()

    def _diverged(self, loss: torch.Tensor) -> bool:
        """Whether the loss is NaN/inf — on any rank, so that all ranks stop together instead of waiting."""
        bad = ~torch.isfinite(loss.detach())
        if self.distributed:
            bad = reduce_sum(bad.float()) > 0
        return bool(bad)

    def _local(self, local: bool) -> Any:
        """DDP's ``no_sync`` for the micro-batches before a step (one all-reduce per step), else nothing."""
        return self.network.no_sync() if local else nullcontext()  # type: ignore[operator]

    def _optimizer_step(self) -> None:
        optimizer = self.optimizer
        assert optimizer is not None
        if self.clip_grad is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        self.lr_history.append([group["lr"] for group in optimizer.param_groups])

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        """Mean loss and metrics over ``valid_dl``, weighted by batch size."""
        if self.valid_dl is None:
            return {}
        model = self._forward()
        model.eval()
        sums = {name: torch.zeros((), device=self.device) for name in ("valid_loss", *self.metrics)}
        count = 0
        for batch in self._bar(self._cache[1] if self._cache else self.valid_dl, "valid"):
            inputs, targets = self._to_device(batch)
            with self._autocast():
                outputs = model(inputs)
            outputs = outputs.float()
            n = len(targets)
            sums["valid_loss"] += self.loss(outputs, targets) * n
            for name, metric in self.metrics.items():
                sums[name] += metric(outputs, targets) * n
            count += n
        total = reduce_sum(torch.tensor(float(count), device=self.device)).clamp(min=1)
        return {name: (reduce_sum(value) / total).item() for name, value in sums.items()}

    def _bar(self, iterable: Iterable[Any], desc: str) -> Iterable[Any]:
        if not self.progress or self.quiet or not is_main():
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, leave=False)

    # ------------------------------------------------------------------------------------ checkpoints

    def _state(self, kind: str, epochs: int) -> dict[str, Any]:
        assert self.optimizer is not None
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "phase": self._phase,
            "stage": self._stage,
            "fit": {"kind": kind, "epochs": epochs},
            "history": self.history,
            "lr_history": self.lr_history,
            "rng": get_rng_state(),
        }

    def _save(self, name: str, kind: str, epochs: int) -> None:
        if self.checkpoint_dir is not None and is_main():
            write_state(self.checkpoint_dir / name, self._state(kind, epochs))

    def _last_good(self) -> str:
        path = self.checkpoint_dir / "last.pt" if self.checkpoint_dir is not None else None
        return f"The last good checkpoint is {path}. " if path is not None and path.is_file() else ""

    def _restore(self, path: str | Path, kind: str, epochs: int) -> None:
        state = read_state(path)
        if state["fit"] != {"kind": kind, "epochs": epochs}:
            raise ValueError(
                f"resume: {path} was written by {state['fit']['kind']}({state['fit']['epochs']} epochs), not "
                f"{kind}({epochs} epochs); resume with the same call."
            )
        assert self.optimizer is not None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self.lr_history = list(state["history"]), [list(r) for r in state["lr_history"]]
        set_rng_state(state["rng"])

    # ----------------------------------------------------------------------------------------- fitting

    def _run(
        self,
        kind: str,
        epochs: int,
        lr: LRSpec,
        schedule: Callable[[torch.optim.Optimizer, int], Any],
        resume: str | Path | None,
    ) -> list[dict[str, Any]]:
        if epochs < 1:
            raise ValueError(f"{kind}: epochs must be >= 1, got {epochs}.")
        optimizer = self._prepare_optimizer(lr)
        self._set_cache()
        steps = math.ceil(len(self.train_dl) / self.accumulate) * epochs  # type: ignore[arg-type]
        self.scheduler = schedule(optimizer, steps)
        self.epoch, self.step = 0, 0
        if resume is not None:
            self._restore(resume, kind, epochs)
        else:
            self._save("last.pt", kind, epochs)  # resumable even if stopped during the first epoch
        best = max(
            (r.get(self._monitor(), -math.inf) for r in self.history if r.get("phase") == self._phase),
            default=-math.inf,
        )
        try:
            while self.epoch < epochs:
                best = self._one_epoch(kind, epochs, best)
        except KeyboardInterrupt:
            if not self.quiet:
                where = f"; resume with resume={self.checkpoint_dir / 'last.pt'}" if self.checkpoint_dir else ""
                print(f"interrupted after {self.epoch} of {epochs} epochs{where}", file=sys.stderr)
            raise
        self._phase += 1
        self._cache = None
        return self.history

    def _monitor(self) -> str:
        return next(iter(self.metrics), "valid_loss")

    def _one_epoch(self, kind: str, epochs: int, best: float) -> float:
        self._call("epoch_begin")
        start = time.perf_counter()
        sampler = getattr(self.train_dl, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self.epoch)  # a new shuffle each epoch, the same on every rank
        train_loss = self._train_epoch(self.epoch)
        record = {"phase": self._phase, "epoch": self.epoch + 1, "train_loss": train_loss, **self._validate()}
        record["seconds"] = time.perf_counter() - start
        self.history.append(record)
        self.epoch += 1
        self._print(record)
        self._save("last.pt", kind, epochs)
        score = record.get(self._monitor())
        if score is not None:
            score = -score if self._monitor() in ("valid_loss", "error_rate") else score
            if score > best:
                best = score
                self._save("best.pt", kind, epochs)
        self._call("epoch_end")
        return best

    def _print(self, record: dict[str, Any]) -> None:
        if self.quiet or not is_main():
            return
        columns = [k for k in record if k not in ("phase",)]
        if len(self.history) == 1 or self.history[-2].keys() != record.keys():
            print("  ".join(f"{c:>10}" for c in columns))
        cells = [f"{record[c]:>10.4f}" if isinstance(record[c], float) else f"{record[c]:>10}" for c in columns]
        print("  ".join(cells), flush=True)

    def fit(self, epochs: int, lr: LRSpec = 1e-3, *, resume: str | Path | None = None) -> list[dict[str, Any]]:
        """Train for ``epochs`` at constant learning rate(s) ``lr`` (a float, ``slice(lo, hi)`` over the layer
        groups, or one per group). Returns the history (one dict per epoch)."""
        return self._run("fit", epochs, lr, lambda optimizer, steps: None, resume)

    def fit_one_cycle(
        self,
        epochs: int,
        lr_max: LRSpec = 1e-3,
        *,
        pct_start: float = 0.25,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        resume: str | Path | None = None,
    ) -> list[dict[str, Any]]:
        """Train for ``epochs`` on a one-cycle schedule (``torch.optim.lr_scheduler.OneCycleLR``): each
        parameter group warms up to its own maximum rate, then anneals; momentum (Adam's beta1) cycles
        the other way, for optimizers that have one."""

        def schedule(optimizer: torch.optim.Optimizer, steps: int) -> Any:
            return torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[group["lr"] for group in optimizer.param_groups],
                total_steps=steps,
                pct_start=pct_start,
                div_factor=div_factor,
                final_div_factor=final_div_factor,
                cycle_momentum="momentum" in optimizer.defaults or "betas" in optimizer.defaults,
            )

        return self._run("fit_one_cycle", epochs, lr_max, schedule, resume)

    def plot(self, directory: str | Path) -> list[Path]:
        """Write ``loss.png`` (loss and metric curves) and ``lr.png`` (each optimizer group's rate per step)
        into ``directory``; needs matplotlib."""
        from torchgraft.train.plots import plot_history, plot_lrs

        directory = Path(directory)
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        names = [
            f"group {i}: max {g.get('max_lr', g['lr']):.2g}" + (", no decay" if g.get("weight_decay") == 0 else "")
            for i, g in enumerate(groups)
        ]
        return [
            plot_history(self.history, directory / "loss.png"),
            plot_lrs(self.lr_history, directory / "lr.png", names=names),
        ]

    def lr_find(self, *, start: float = 1e-7, end: float = 10.0, steps: int = 100) -> LRFind:
        """Sweep the learning rate and suggest one (see :func:`torchgraft.train.lr_finder.lr_find`); the model,
        the optimizer and every random generator are left exactly as they were."""
        return lr_find(self, start=start, end=end, steps=steps)

    def fine_tune(
        self,
        epochs: int,
        base_lr: float = 3e-3,
        *,
        freeze_epochs: int = 1,
        lr_mult: float = 1.0,
        bn: BNPolicy = "frozen",
        pct_start: float = 0.25,
        resume: str | Path | None = None,
    ) -> list[dict[str, Any]]:
        """Transfer-learning recipe: ``freeze_epochs`` of one-cycle training of the head alone (body frozen
        with BatchNorm policy ``bn``), then ``epochs`` of the whole network with discriminative rates from
        ``base_lr / lr_mult`` (first group) to ``base_lr`` (head). ``resume=`` continues a run of the same
        call from its ``last.pt``, in whichever of the two stages it stopped.

        The defaults were chosen by measurement (bench/finetune_targets.py, docs/benchmarks.md): on three
        small targets far from ImageNet (Fashion-MNIST, sklearn digits, lfw faces) a uniform rate
        (``lr_mult=1``) of 3e-3 beat every discriminative spread tried (2x, 3x, 10x) and rates of 1e-3 and
        2e-3 (5e-3 was close: better on two targets, worse on the third); pass ``lr_mult > 1`` for data
        close to the pretraining data, where early layers should move less.
        """
        stage = read_state(resume).get("stage") if resume is not None else None
        try:
            if freeze_epochs > 0 and stage != "unfrozen":
                self._stage = "frozen"
                freeze(self.model, bn=bn)
                self.fit_one_cycle(freeze_epochs, base_lr, pct_start=pct_start, resume=resume)
                resume = None
            self._stage = "unfrozen"
            unfreeze(self.model)
            return self.fit_one_cycle(epochs, slice(base_lr / lr_mult, base_lr), pct_start=pct_start, resume=resume)
        finally:
            self._stage = None
