"""The network an explanation looks into: a private copy of the model, kept per model.

Explanations never touch the module that :class:`~inference.LoadedModel` predicts with: hooks
(medcam's and ours), frozen parameters and stripped output activations all live on a deep copy,
made once per model and cached (weakly, keyed by the model's module) with everything built on
it (medcam-injected wrappers, SHAP explainers, randomised copies for the sanity check).

The copy outputs *logits*: torchxrayvision's ``apply_sigmoid`` and ``op_threshs`` (sigmoid and
operating-point normalisation, both monotonic per output) are switched off on it, so gradients
do not vanish where a probability saturates. Grad-CAM maps are unchanged by a monotonic output
transform up to numerical precision; SHAP values attribute the logit.
"""

from __future__ import annotations

import copy
import logging
import threading
import weakref
from typing import Any

import torch

from explain.errors import ExplainError

logger = logging.getLogger(__name__)

#: Layers tried, in order, when no layer is named: the last feature map of the architecture.
PREFERRED_LAYERS = (
    "features.norm5",  # torchxrayvision / torchvision DenseNet: after the last dense block
    "model.layer4",  # torchxrayvision ResNet (wraps a torchvision ResNet)
    "layer4",  # torchvision ResNet
)


class _Logits(torch.nn.Module):
    """``net`` with at least two outputs (medcam's Grad-CAM++ mis-handles a single one)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if out.ndim != 2:
            raise ExplainError(f"model output has shape {tuple(out.shape)}; expected (N, labels)")
        if out.shape[1] == 1:
            out = torch.cat([out, torch.zeros_like(out)], dim=1)
        return out


def _grad_entry(module: torch.nn.Module, args: Any, output: Any) -> Any:
    """Forward hook: let the graph start at this layer when nothing below needs a gradient.

    Parameters of the copy are frozen, so for Grad-CAM only the part of the network above the
    explained layer is differentiated: the backward pass is a fraction of a full one.
    """
    if isinstance(output, torch.Tensor) and not output.requires_grad and torch.is_grad_enabled():
        return output.detach().requires_grad_(True).clone()
    return None


def default_layer(module: torch.nn.Module) -> str:
    """The layer Grad-CAM reads for ``module``: a known last feature map, else the last conv."""
    names = dict(module.named_modules())
    for name in PREFERRED_LAYERS:
        if name in names:
            return name
    convs = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ExplainError(f"{type(module).__name__} has no Conv2d layer for Grad-CAM; "
                           "name one with layer=")
    return convs[-1]


class Target:
    """A frozen, logit-output copy of a network, with the explainers built on it.

    ``lock`` serialises explanations on this copy (medcam keeps per-call state on it).
    """

    def __init__(self, net: torch.nn.Module, device: str | torch.device = "cpu",
                 output: str = "logits") -> None:
        self.scripted = isinstance(net, torch.jit.ScriptModule)
        self.stripped: list[str] = []
        # Optional torchxrayvision attributes: other networks have neither.
        if getattr(net, "op_threshs", None) is not None:
            net.op_threshs = None
            self.stripped.append("op_norm")
        if getattr(net, "apply_sigmoid", False):
            net.apply_sigmoid = False
            self.stripped.append("sigmoid")
        net.eval()
        for p in net.parameters():  # (ScriptModule has no requires_grad_)
            if p.is_leaf:
                p.requires_grad_(False)
        self.net = net
        self.module = _Logits(net).eval()
        self.device = torch.device(device)
        #: What the explained output is: the logit, unless the network gives probabilities
        #: that could not be switched off.
        self.output = "logit" if self.stripped or output == "logits" else "probability"
        self.lock = threading.RLock()
        self.cache: dict[Any, Any] = {}
        self._entries: dict[str, Any] = {}
        self.randomised: dict[Any, Target] = {}

    def layer_module(self, layer: str) -> torch.nn.Module:
        """The submodule ``layer`` of the network; ValueError naming it when absent."""
        modules = dict(self.net.named_modules())
        if layer not in modules or not layer:
            near = [n for n in modules if n and n.split(".")[-1] == layer.split(".")[-1]][:5]
            raise ValueError(f"layer {layer!r} is not in {type(self.net).__name__}"
                             + (f" (did you mean {near}?)" if near else ""))
        return modules[layer]

    def ensure_entry(self, layer: str) -> None:
        """Make the graph start at ``layer`` (once per layer); see :func:`_grad_entry`."""
        if layer not in self._entries:
            self._entries[layer] = self.layer_module(layer).register_forward_hook(_grad_entry)

    def tensor(self, batch: Any) -> torch.Tensor:
        """A fresh float32 tensor on the copy's device (never an inference-mode tensor)."""
        return torch.as_tensor(batch, dtype=torch.float32).clone().to(self.device)

    def copy_net(self) -> torch.nn.Module:
        """A deep copy of the network without this copy's own forward hooks.

        Not remove/copy/re-register (our hook would then run after medcam's, which needs the
        output it makes), nor a pristine copy kept aside (a second network per model).
        """
        # Handles deep-copied with the net remove from the copy: no spare net, live hooks untouched.
        with self.lock:
            net, handles = copy.deepcopy((self.net, list(self._entries.values())))
        for handle in handles:
            handle.remove()
        return net


_TARGETS: weakref.WeakKeyDictionary[torch.nn.Module, Target] = weakref.WeakKeyDictionary()
_TARGETS_LOCK = threading.Lock()


def target_for(module: torch.nn.Module, output: str = "logits",
               device: str | torch.device = "cpu") -> Target:
    """The cached :class:`Target` of ``module`` (made on first use, kept while it lives).

    The copy is taken once: weights changed in ``module`` afterwards are not seen by it.
    """
    with _TARGETS_LOCK:
        target = _TARGETS.get(module)
        if target is None:
            target = Target(copy.deepcopy(module), device, output)
            _TARGETS[module] = target
            logger.debug("explanation copy of %s made (stripped %s)", type(module).__name__,
                         target.stripped or "nothing")
        return target


def randomise_top_layers(net: torch.nn.Module, n_layers: int, seed: int) -> list[str]:
    """Re-draw the weights of the last ``n_layers`` modules that have parameters, in place.

    Each parameter is replaced by zero-mean Gaussian noise with the parameter's own standard
    deviation (the scale survives, what was learned does not), as in the model-randomisation
    test of Adebayo et al. 2018 ("Sanity Checks for Saliency Maps"), which re-draws weights
    from their initialisation. Returns the modules' names, top first.
    """
    leaves = [(n, m) for n, m in net.named_modules()
              if n and any(True for _ in m.parameters(recurse=False))]
    chosen = leaves[-n_layers:] if n_layers > 0 else []
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in chosen:
            for p in m.parameters(recurse=False):
                flat = p.detach().float()
                std = float(flat.std()) if flat.numel() > 1 else 0.0
                std = std if std > 0 else max(float(flat.abs().mean()), 1e-2)
                noise = torch.randn(p.shape, generator=generator) * std
                p.copy_(noise.to(p.device, p.dtype))
    return [n for n, _ in reversed(chosen)]


def randomised_target(target: Target, n_layers: int, seed: int) -> tuple[Target, list[str]]:
    """A cached copy of ``target`` with its top ``n_layers`` layers randomised."""
    key = (n_layers, seed)
    with target.lock:
        if key not in target.randomised:
            net = target.copy_net()
            names = randomise_top_layers(net, n_layers, seed)
            clone = Target(net, target.device)
            clone.output = target.output
            clone.cache["randomised_layers"] = names
            target.randomised[key] = clone
        clone = target.randomised[key]
        return clone, clone.cache["randomised_layers"]
