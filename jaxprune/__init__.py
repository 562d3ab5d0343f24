"""jaxprune: structured filter pruning for JAX/Flax after Li et al., "Pruning Filters for Efficient ConvNets".

`import jaxprune` loads jax, flax and numpy only; optax, matplotlib, scikit-learn and torch are imported by the
modules that need them (`jaxprune.train`, `jaxprune.viz`, `jaxprune.data`, the benchmarks) when those are used.
"""

from jaxprune import models
from jaxprune.groups import AxisRef, ChannelGroup, check_groups

__version__ = "0.1.0"

__all__ = ["AxisRef", "ChannelGroup", "__version__", "check_groups", "models"]
