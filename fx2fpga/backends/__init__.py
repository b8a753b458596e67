"""Code generators: ``hls`` (C++ for Vitis HLS) and ``rtl`` (SystemVerilog with a CIRCT controller)."""
