"""Hides TensorFlow's C++ start-up lines (oneDNN, CUDA probing) without hiding anything else.

TensorFlow 2.21 prints them through absl's C++ logging before its own
TF_CPP_MIN_LOG_LEVEL applies (seven lines on a machine without a GPU, one of
them an E-level `cuInit` failure). They come while TensorFlow is imported and
while it first lists its devices, so `native_startup_hidden` points the
process's stderr (file descriptor 2) at a temporary file for just that time,
then drops the lines in absl's log format and passes on the rest. This module
imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# absl C++ log lines ("I0000 00:00:1796003547.487653   22707 port.cc:153] ...") and their companions.
_NATIVE_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] |"
                          r"^WARNING: All log messages before absl::InitializeLog\(\) is called|"
                          r"^To enable the following instructions: .* rebuild TensorFlow")


def log_level_from_argv(argv: list[str]) -> str | None:
    """The value of --tf_log_level on the command line (not in flag files), or None."""
    for i, arg in enumerate(argv):
        for prefix in ("--tf_log_level=", "-tf_log_level="):
            if arg.startswith(prefix):
                return arg[len(prefix):]
        if arg in ("--tf_log_level", "-tf_log_level") and i + 1 < len(argv):
            return argv[i + 1]
    return None


@contextlib.contextmanager
def native_startup_hidden(enabled: bool = True):
    """Within the block, lines TensorFlow's C++ code logs are dropped; other stderr output is kept.

    On an exception everything captured is passed on, log lines included.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            kept = text if failed else "".join(line for line in text.splitlines(keepends=True)
                                               if not _NATIVE_LINE.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
