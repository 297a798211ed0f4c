"""Test-wide settings: nothing is written outside temporary folders, nothing reaches the network."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

_CACHE = tempfile.mkdtemp(prefix="trajcli-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

# Hypothesis keeps no example database, and its other files (it would write .hypothesis/ into the
# working directory) go to the throwaway folder.
set_hypothesis_home_dir(os.path.join(_CACHE, "hypothesis"))
settings.register_profile("trajcli", database=None)
settings.load_profile("trajcli")

# Library caches (matplotlib's font cache, the Hugging Face hub) go to a throwaway folder, and the hub
# stays offline; set before any test imports those libraries, inherited by subprocesses.
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_CACHE, "matplotlib"))
os.environ.setdefault("HF_HOME", os.path.join(_CACHE, "huggingface"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
