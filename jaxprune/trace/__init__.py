"""Channel coupling discovered from a jaxpr, for any Flax Linen or NNX model (docs/design.md §6).

`trace_groups` traces a model's forward pass with `jax.make_jaxpr` and follows every parameter's axes through the
primitives, joining the axes that must share one channel index space in a union-find over the (value, axis)
dimensions of the program. Concatenations and splits make a dimension a sequence of pieces (so a consumer of a
concatenation holds several groups side by side, `AxisRef.offset`); channel-last flattens make it `repeat` blocks of
one piece. `TracedModel` is the small object through which `make_plan`, `prune` and the masking reference work on a
traced model; it re-runs the traced program at pruned widths or with channel masks. Nothing here scores, selects or
slices variables (`scoring`, `strategies` and `surgery` do).

One concept a module: `dims` (the union-find), `rules` (the table primitive -> rule), `tracer` (the abstract
interpreter), `extract` (groups from the dimension classes), `policy` (which groups are prunable), `runner` (the
re-run at new widths / with masks), `model` (`TracedModel`), `linen` and `nnx_adapter` (one adapter per framework),
`api` (`trace_model`, `trace_groups`), `describe` (tables) and `costs` (MACs per layer read from a jaxpr, for
`jaxprune.count_macs`).

What the trace decides and what it leaves to policy: the trace says which axes are coupled and which channel spaces
are tied to the model's input or output (never groups). Which traced groups may be pruned is policy: a traced group
is prunable unless the model's declaration (`channel_groups()` of a zoo model), the user's `policy`, or a primitive
without a rule on its channels says otherwise.
"""

from jaxprune.trace.api import trace_groups, trace_model
from jaxprune.trace.describe import describe_groups, format_groups
from jaxprune.trace.extract import UntracedChannelsWarning
from jaxprune.trace.model import TracedModel
from jaxprune.trace.nnx_adapter import nnx_variables
from jaxprune.trace.rules import SUPPORTED_PRIMITIVES

__all__ = [
    "SUPPORTED_PRIMITIVES",
    "TracedModel",
    "UntracedChannelsWarning",
    "describe_groups",
    "format_groups",
    "nnx_variables",
    "trace_groups",
    "trace_model",
]
