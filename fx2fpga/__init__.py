"""fx2fpga: compile PyTorch models, and their SGD training step, to fixed-point FPGA kernels.

    fpga = fx2fpga.FPGAModule(fx2fpga.compile(model, (x,), train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1)))
    history = fx2fpga.fit(fpga, loader, epochs=3); trained = fpga.to_torch()

    design = fx2fpga.compile(model, (x,), target="pynq-z1",
                             train=fx2fpga.SGD(F.cross_entropy, y, lr=0.1), out_dir="out/mlp")
    k = design.load("emu")          # or "csim": g++ on the generated HLS C++
    loss = k.train_step(x, y); logits = k.infer(x)
"""

from fx2fpga_runtime import load  # noqa: E402
from fx2fpga_runtime.fixed import Fixed  # noqa: E402

from .api import Design, compile, explore  # noqa: E402
from .errors import QuantizationWarning  # noqa: E402
from .fit import SaturationWarning, fit  # noqa: E402
from .frontend import GD, SGD, Adam, AdamW, trace  # noqa: E402
from .module import FPGAModule  # noqa: E402
from .passes.quantize import Precision  # noqa: E402
from .pipeline import PIPELINE  # noqa: E402
from .targets import Target, list_targets, load_target  # noqa: E402
from .version import __version__  # noqa: E402


def targets() -> list[str]:
    """Names of the boards fx2fpga can compile for."""
    return [t.name for t in list_targets()]


__all__ = ["Adam", "AdamW", "Design", "FPGAModule", "Fixed", "GD", "PIPELINE", "Precision", "QuantizationWarning",
           "SGD", "SaturationWarning", "Target", "compile", "explore", "fit", "list_targets", "load", "load_target",
           "targets", "trace", "__version__"]
