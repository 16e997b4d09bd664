"""The `export` step: the recipe's output becomes an ONNX (or TensorRT) export instead of a PyTorch artifact.

Terminal: recipe validation refuses any step after it. When the runner reaches it, the model as the earlier steps
left it is exported to the run's --out directory (kind "onnx" / "tensorrt" in its manifest, with the recipe, its
hash, the source and every step's report); no PyTorch artifact is written. `bench --model OUT` (and the recipe's
benchmark section) then runs the ONNX export through ONNX Runtime with the same harness.
"""

from __future__ import annotations

from .registry import Step, register
from .schema import ExportConfig


@register("export")
class Export(Step):
    """Writes the run's output as an export; see the module docstring."""

    Config = ExportConfig  # terminal: see ExportConfig

    def preflight(self) -> None:
        if self.config.format == "tensorrt":
            from ..export.tensorrt import require_tensorrt

            require_tensorrt()

    def run(self, model, ctx) -> dict:
        raise ctx.error("export: a terminal step is written by the runner (write), not run in place")

    def write(self, model, ctx, out: str, *, overwrite: bool, manifest_extra: dict, log=None) -> dict:
        """Export `model` to `out`; returns this step's report (also stored in the export's manifest). The step's
        config is an ExportOptions, so it is the export's options as it stands."""
        from ..export import export_model

        c = self.config
        report = {"type": self.name, "version": self.version, "config": c.model_dump(), "format": c.format,
                  "output": out}
        export_model(model, out, c, overwrite=overwrite, manifest_extra=manifest_extra,
                     step_report=report, log=log)
        return report
