"""The HLS C++ backend: ``emit`` checks a kernel and renders ``templates/hls``."""
