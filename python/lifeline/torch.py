"""`lifeline.torch`: the public API of the single-file module lifeline_torch (resume, checkpoint,
save, load, snapshot, prepare, ...), the same objects under the package's name. Needs torch."""
import lifeline_torch as _torch

from lifeline import _reexport

__all__ = _reexport(_torch, globals())
