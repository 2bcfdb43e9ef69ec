"""fuse4seg: image-level fusion of multi-modal medical images trained by bi-level optimisation.

The Python API: every command of the ``fuse4seg`` command line is one call on the same declared options.

    import fuse4seg

    fuse4seg.write_phantom_release("release", cases=6, scale=0.25)          # a synthetic BraTS release
    fuse4seg.build_benchmark(fuse4seg.BuildOptions(out="pkg", brats="release", size=64))
    config = fuse4seg.build_config({"benchmark": "pkg", "out": "run", "steps": 20})   # or TrainConfig(...)
    fuse4seg.train_run(config)                                                   # fuse4seg train
    metrics = fuse4seg.evaluate_run("run")                                       # fuse4seg evaluate
    fuse4seg.export("pkg", "parquet")                                            # fuse4seg export

Extension points: :func:`register_model` (a network by name, for ``fusion_model`` / ``seg_model``; installed
packages use the entry-point group ``fuse4seg.models``) and :func:`register_fusion_loss` (a term of the fusion
loss, weighed by ``fusion_loss_weights``). The bi-level engine, independent of imaging, is
:mod:`fuse4seg.bilevel`.

Names are imported lazily (PEP 562): ``import fuse4seg`` imports neither torch nor any submodule; the first use
of a name imports the module that defines it. The training function is ``train_run`` (``fuse4seg.train`` is the
training package).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> "module:attribute" that defines it.
_EXPORTS: dict[str, str] = {
    # training
    "TrainConfig": "fuse4seg.train.config:TrainConfig",
    "build_config": "fuse4seg.train.resolve:build_config",
    "train_run": "fuse4seg.train.loop:train",
    # evaluation
    "evaluate_run": "fuse4seg.evaluation.evaluate:evaluate_run",
    "evaluate": "fuse4seg.evaluation.evaluate:evaluate_run",
    "EvaluateOptions": "fuse4seg.evaluation.options:EvaluateOptions",
    # data: releases, the benchmark package, its readers and exports
    "write_phantom_release": "fuse4seg.data.phantom.generator:write_phantom_release",
    "BuildOptions": "fuse4seg.data.build.options:BuildOptions",
    "build_benchmark": "fuse4seg.data.build.builder:build_benchmark",
    "BraTSFuse": "fuse4seg.data.package.dataset:BraTSFuse",
    "BraTSFuseVolumes": "fuse4seg.data.package.volumes:BraTSFuseVolumes",
    "verify": "fuse4seg.data.package.verify:verify",
    "export": "fuse4seg.data.package.export:export",
    # extension points
    "register_model": "fuse4seg.models.registry:register_model",
    "unregister_model": "fuse4seg.models.registry:unregister_model",
    "build_model": "fuse4seg.models.registry:build_model",
    "list_models": "fuse4seg.models.registry:list_models",
    "register_fusion_loss": "fuse4seg.losses.fusion:register_fusion_loss",
    "unregister_fusion_loss": "fuse4seg.losses.fusion:unregister_fusion_loss",
    "fusion_loss": "fuse4seg.losses.fusion:fusion_loss",
    # errors
    "ConfigError": "fuse4seg.errors:ConfigError",
    "DataError": "fuse4seg.errors:DataError",
    "Fuse4SegError": "fuse4seg.errors:Fuse4SegError",
}

__all__ = [
    "BraTSFuse",
    "BraTSFuseVolumes",
    "BuildOptions",
    "ConfigError",
    "DataError",
    "EvaluateOptions",
    "Fuse4SegError",
    "TrainConfig",
    "__version__",
    "build_benchmark",
    "build_config",
    "build_model",
    "evaluate",
    "evaluate_run",
    "export",
    "fusion_loss",
    "list_models",
    "register_fusion_loss",
    "register_model",
    "train_run",
    "unregister_fusion_loss",
    "unregister_model",
    "verify",
    "write_phantom_release",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from fuse4seg.data.build.builder import build_benchmark
    from fuse4seg.data.build.options import BuildOptions
    from fuse4seg.data.package.dataset import BraTSFuse
    from fuse4seg.data.package.export import export
    from fuse4seg.data.package.verify import verify
    from fuse4seg.data.package.volumes import BraTSFuseVolumes
    from fuse4seg.data.phantom.generator import write_phantom_release
    from fuse4seg.errors import ConfigError, DataError, Fuse4SegError
    from fuse4seg.evaluation.evaluate import evaluate_run
    from fuse4seg.evaluation.evaluate import evaluate_run as evaluate
    from fuse4seg.evaluation.options import EvaluateOptions
    from fuse4seg.losses.fusion import fusion_loss, register_fusion_loss, unregister_fusion_loss
    from fuse4seg.models.registry import build_model, list_models, register_model, unregister_model
    from fuse4seg.train.config import TrainConfig
    from fuse4seg.train.loop import train as train_run
    from fuse4seg.train.resolve import build_config


def __getattr__(name: str) -> Any:
    """Import the public ``name`` from its module on first use (PEP 562) and cache it on the package."""
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'fuse4seg' has no attribute {name!r}")
    module, attribute = target.split(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public API with the module's own names."""
    return sorted({*globals(), *_EXPORTS})
