"""fx2fpga: compile PyTorch models, and their training step, to fixed-point FPGA kernels."""

__version__ = "0.1.0"
