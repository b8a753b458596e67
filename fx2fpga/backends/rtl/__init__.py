"""The RTL backend: ``emit`` (units, banked RAMs, top), ``controller`` (the CIRCT FSM, built by ``circt_child`` in a
child process) and ``axi`` (the AXI-Lite/AXI master wrapper)."""
