"""The body of a grafted model: a pretrained network that stops where its features are.

A :class:`Body` wraps the (modified) source network and runs it, with whatever positional and keyword
arguments the network takes (``input_ids=``, ``attention_mask=``), in one of three ways:

* whole, after its classifier was replaced by ``nn.Identity`` — the network's own pooling, class-token
  selection and pre-logits layers still run, and the body returns what the classifier used to read;
* up to a named module (``exit_at``): a forward hook on that module ends the forward with its output, so
  any network can be cut anywhere, whatever its ``forward`` does (no tracing, no ``nn.Sequential``
  rebuild); modules that would run later are pruned;
* through a named method such as timm's ``forward_features``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from torchgraft.grafting.channels import adapt_input_channels
from torchgraft.grafting.dryrun import main_tensor

if TYPE_CHECKING:
    from torchgraft.grafting.info import GraftInfo

__all__ = ["Body", "PrunedModule", "rebuild_body", "replace_module"]


class _ExitForward(Exception):
    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output


class PrunedModule(nn.Module):
    """Stands where a module was removed because the body never runs it; raises if it is reached."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"graft: module '{self.name}' was removed from the body because it did not run before the cut "
            f"in the dry run, but the forward reached it now (input-dependent control flow?). "
            f"Graft again with an explicit cut=."
        )

    def extra_repr(self) -> str:
        return repr(self.name)


class _PassThrough(nn.Module):
    """Stands for a pruned module in a traceable body: returns its first input (the result is never used)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return args[0] if args else next(iter(kwargs.values()), None)


def replace_module(root: nn.Module, name: str, new: nn.Module | None) -> nn.Module | None:
    """Put ``new`` at dotted path ``name`` under ``root``; returns what was there."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


class Body(nn.Module):
    """A pretrained network run up to its features.

    Args:
        model: the network (its parameters keep their names under ``body.model.``).
        exit_at: dotted name of the module whose output ends the forward, or ``None`` to run it whole.
        method: name of the method to call instead of ``forward`` (e.g. ``"forward_features"``).
        select_main: return the main tensor of a structured output (``logits`` or the first tensor of a
            Hugging Face output, the first element of GoogLeNet's tuple) instead of the whole structure.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        exit_at: str | None = None,
        method: str = "forward",
        select_main: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.exit_at = exit_at
        self.method = method
        self.select_main = select_main
        self._armed = False
        self._recording = False  # see make_traceable
        self._captured: Any = None
        if exit_at is not None:
            model.get_submodule(exit_at).register_forward_hook(self._exit_hook)

    def _exit_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._armed and self._recording:
            if self._captured is None:
                self._captured = output
        elif self._armed:
            raise _ExitForward(output)

    def make_traceable(self) -> None:
        """Let exporters trace a cut body (``torch.export`` cannot trace the exception that ends the forward).

        The exit module's output is recorded instead and the rest of the forward runs on, with every pruned
        module passing its input through; that rest is dead code, which exporters drop. Irreversible: call it
        on a copy made for export (``torchgraft export`` checks the exported file's outputs against the model).
        """
        if self.exit_at is None:
            return
        for name, module in list(self.model.named_modules()):
            if isinstance(module, PrunedModule):
                replace_module(self.model, name, _PassThrough())
        self._recording = True

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        run = getattr(self.model, self.method)
        if self.exit_at is None:
            output = run(*args, **kwargs)
            return main_tensor(output) if self.select_main else output
        self._armed = True
        if self._recording:
            try:
                run(*args, **kwargs)
            finally:
                self._armed = False
            output, self._captured = self._captured, None
            return main_tensor(output) if self.select_main else output
        try:
            run(*args, **kwargs)
        except _ExitForward as stop:
            return main_tensor(stop.output) if self.select_main else stop.output
        finally:
            self._armed = False
        raise RuntimeError(f"Body: module '{self.exit_at}' did not run, so the body has no output.")

    def extra_repr(self) -> str:
        parts = [f"exit_at={self.exit_at!r}"] if self.exit_at else []
        if self.method != "forward":
            parts.append(f"method={self.method!r}")
        return ", ".join(parts)


def rebuild_body(model: nn.Module, info: GraftInfo) -> Body:
    """The body that ``info`` records, made from ``model`` (a fresh source network of the same architecture)
    in place and without a dry run: the input convolution adapted, the classifier replaced (or timm's
    ``reset_classifier(0)``), the auxiliary heads dropped, the cut, the modules after it pruned."""
    if info.in_chans is not None and info.in_chans.rule != "unchanged":
        adapt_input_channels(model, info.in_chans.to_channels, module=info.in_chans.module)
    if info.method in ("timm", "timm-features"):
        model.reset_classifier(0)  # type: ignore[operator]
    elif info.method == "classifier":
        for name in info.classifier:
            replace_module(model, name, nn.Identity())
    for name in info.dropped:
        replace_module(model, name, None)
    body = Body(model, exit_at=info.cut_at, method=info.body_method, select_main=info.select_main)
    for name in info.pruned:
        replace_module(model, name, PrunedModule(name))
    return body
