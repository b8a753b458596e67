"""A simulation process that speaks the word protocol on stdin/stdout (csim and rtl backends).

Request: int32 command code, int32 word count, the words. Answer: int32 word count, the
words, then ``trailer_bytes`` more (the rtl server sends its 64-bit cycle count). The
process keeps the kernel's on-chip state between calls, as the board does.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from . import interface


class SimProcess:
    """A simulation binary running as a child, spoken to on stdin/stdout; ``who`` names it in errors."""

    def __init__(self, argv: list[str], who: str, cwd: Path | None = None):
        self.who = who
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr)

    def _died(self, what: str) -> RuntimeError:
        try:
            code = self._proc.wait(timeout=10)  # it stopped talking: let it finish writing its error
        except subprocess.TimeoutExpired:
            code = None
        self._stderr.seek(0)
        err = self._stderr.read().decode(errors="replace").strip()[-2000:]
        return RuntimeError(f"{self.who}: the simulation process {what} (exit code {code}){': ' + err if err else ''}")

    def _read(self, n_bytes: int, what: str) -> bytes:
        data = self._proc.stdout.read(n_bytes)
        if len(data) < n_bytes:
            raise self._died(what)
        return data

    def close(self) -> None:
        """End the process (its on-chip state goes with it)."""
        if self._proc is None:
            return
        try:
            self._proc.stdin.close()
            self._proc.wait(timeout=10)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()
        self._stderr.close()
        self._proc = None

    def __del__(self):
        if getattr(self, "_proc", None) is not None:
            self.close()


class WordServer(SimProcess):
    """One running simulation binary speaking the word protocol."""

    def __init__(self, binary: Path, who: str, cwd: Path | None = None, trailer_bytes: int = 0):
        super().__init__([str(binary)], who, cwd)
        self.trailer_bytes = trailer_bytes
        self.trailer = b""

    def call(self, command: str, in_words: np.ndarray) -> np.ndarray:
        """Send one command and its input words; returns the output words (int32)."""
        if self._proc is None:
            raise RuntimeError(f"{self.who}: the backend is closed")
        words = np.ascontiguousarray(in_words, dtype=np.int32).reshape(-1)
        head = np.array([interface.COMMANDS[command], words.size], dtype=np.int32)
        try:
            self._proc.stdin.write(head.tobytes() + words.tobytes())
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise self._died(f"stopped before {command}") from None
        n_out = int(np.frombuffer(self._read(4, f"stopped during {command}"), dtype=np.int32)[0])
        out = np.frombuffer(self._read(4 * n_out, f"stopped while answering {command}"), dtype=np.int32).copy()
        if self.trailer_bytes:
            self.trailer = self._read(self.trailer_bytes, f"stopped while answering {command}")
        return out
