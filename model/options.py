"""Inference options, in one place and without torch: what the command lines parse, the run
configuration records and :class:`~.predictor.Predictor` runs with.

>>> options = InferenceOptions(device="cpu", precision=Precision.AUTO, mini_context_size="auto")
>>> Predictor(model, **options.predictor_kwargs())
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Optional, Union


class Precision(str, Enum):
    """The arithmetic an inference runs in. ``AUTO``: bfloat16 where the hardware runs it
    natively and the model's bfloat16 output agrees with float32, else float32 (see
    :mod:`.engine.precision`); ``FLOAT16``: CUDA only."""

    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"

    def __str__(self) -> str:
        return self.value

    def __hash__(self) -> int:  # as its name: "bfloat16" and BFLOAT16 are one dict key
        return str.__hash__(self.value)

    @classmethod
    def names(cls):
        """The spellings the command lines accept (the values)."""
        return tuple(member.value for member in cls)


#: a mini-context size: pairs per APSP chunk, ``"auto"`` (fit the memory budget) or None (all)
MiniContextSize = Optional[Union[int, str]]


@dataclass(frozen=True)
class InferenceOptions:
    """device: ``auto|cpu|cuda[:N]``; precision; mini_context_size (see
    :class:`~.predictor.Predictor`); memory_gb: the inference's memory budget in GB (None: a
    safe fraction of free RAM or GPU memory)."""

    device: str = "auto"
    precision: Precision = Precision.AUTO
    mini_context_size: MiniContextSize = "auto"
    memory_gb: Optional[float] = None

    def __post_init__(self):
        try:
            object.__setattr__(self, "precision", Precision(self.precision))
        except ValueError:
            raise ValueError(f"precision must be one of {', '.join(Precision.names())}; got "
                             f"{self.precision!r}") from None
        size = self.mini_context_size
        if size not in (None, "auto") and (isinstance(size, bool) or int(size) < 1):
            raise ValueError(f"mini_context_size must be >= 1 or 'auto', got {size!r}")

    def predictor_kwargs(self) -> dict:
        """Keyword arguments of :class:`~.predictor.Predictor`."""
        return asdict(self)

    def to_dict(self) -> dict:
        """JSON-ready (precision as its name)."""
        return dict(asdict(self), precision=self.precision.value)
