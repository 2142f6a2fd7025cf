"""lifeline's Python client as a package (`pip install ./python`, or the modulefile's PYTHONPATH).

`import lifeline` gives the public API of the single-file module lifeline_client (lifeline.Client,
lifeline.ResumeInfo, lifeline.verify_checkpoint, ...); `import lifeline.torch` that of
lifeline_torch (lifeline.torch.resume, lifeline.torch.checkpoint, ...). The two single files stay
the source, and are installed alongside (users without pip copy them next to their script): these
are the same objects, so lifeline.Client is lifeline_client.Client. Standard library only; torch is
needed by lifeline.torch alone (the `torch` extra).
"""
import types as _types

import lifeline_client as _client


def _reexport(module: _types.ModuleType, namespace: dict) -> list:
    """Copies `module`'s public names (its __all__, else the names it defines itself without a
    leading underscore: no imported module, typing alias or function) into `namespace`; returns them."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = sorted(
            name for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, _types.ModuleType)
            and getattr(value, "__module__", module.__name__) == module.__name__)
    for name in names:
        namespace[name] = getattr(module, name)
    return list(names)


__all__ = _reexport(_client, globals()) + ["__version__"]
__version__ = _client.__version__
