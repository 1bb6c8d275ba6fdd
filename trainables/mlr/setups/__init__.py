"""The setup registry: adding a setup is one module and one entry in `_REGISTRY`.

```python
setup = build("positive_coop", classnames, clip, n_ctx=16, csc=True)
setup(images_or_dense_features) -> logits [B, K, 2]   # [..., 0] presence, [..., 1] absence
```
"""

from __future__ import annotations

from torch import nn

from trainables.backbone.runtime import FrozenCLIP
from trainables.errors import UserInputError
from trainables.mlr.setups.base import MLRSetup
from trainables.mlr.setups.baseline import Baseline
from trainables.mlr.setups.dual_coop import DualCoOp
from trainables.mlr.setups.negative_coop import NegativeCoOp
from trainables.mlr.setups.positive_coop import PositiveCoOp

_REGISTRY: dict[str, type[MLRSetup]] = {
    "baseline": Baseline,
    "positive_coop": PositiveCoOp,
    "negative_coop": NegativeCoOp,
    "dual_coop": DualCoOp,
}


def names() -> list[str]:
    """Registered setup names."""
    return list(_REGISTRY)


def lr_groups(name: str) -> tuple[str, ...]:
    """The learning-rate groups of setup `name` (`prompt`, `embedding`, `projector`)."""
    return _setup_class(name).lr_groups


def build(name: str, classnames: list[str], clip: FrozenCLIP, **options) -> MLRSetup:
    """Build setup `name` for `classnames` on the frozen backbone `clip`; options are validated."""
    setup_class = _setup_class(name)
    return setup_class(list(classnames), clip, setup_class.Options.parse(name, options))


def count_trainable(module: nn.Module) -> int:
    """Number of trainable parameter entries."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _setup_class(name: str) -> type[MLRSetup]:
    if name not in _REGISTRY:
        raise UserInputError(f"unknown setup '{name}'; valid setups: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]
