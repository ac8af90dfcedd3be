"""Shared test set-up. Qt must never try a real display in tests: without this,
Qt aborts the whole process on a machine with no screen."""

from __future__ import annotations

import os
import signal

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# A shell that starts a job in the background (`pytest &` in a script, some CI runners) sets
# SIGINT to "ignored", and Python then neither raises KeyboardInterrupt nor lets the children
# the tests start see Ctrl-C. The Ctrl-C tests need the terminal's behaviour: restore it (a
# Python handler also makes exec'd children start with the default disposition).
signal.signal(signal.SIGINT, signal.default_int_handler)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import music_signal, synth_tiny  # noqa: E402


@pytest.fixture(scope="session")
def music() -> np.ndarray:
    return music_signal(3.0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (restored after): on a small machine shared with an
    engine thread, a UI or other jobs, torch's thread pool (OpenMP spinning) makes the tiny
    model's steps and the CQT many times slower. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def performer():
    """A randomly initialised ``tiny`` Performer (seed 0), in eval mode."""
    import torch

    from letsplay.models.performer import Performer
    from letsplay.models.presets import preset

    torch.manual_seed(0)
    return Performer(preset("tiny")).eval()


@pytest.fixture(scope="module")
def tiny_ckpt(performer, tmp_path_factory):
    """The ``performer`` fixture saved as a checkpoint file."""
    p = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    performer.save(p)
    return p


@pytest.fixture(scope="session")
def cello_set(tmp_path_factory):
    """Two 3 s cello clips (format 2: instrument points and part maps)."""
    return synth_tiny(tmp_path_factory.mktemp("tiny-set") / "cello", "cello", 0.1, 3.0, 2.0)


@pytest.fixture(scope="session")
def trombone_set(tmp_path_factory):
    """Four 1.5 s trombone clips (45 frames each: enough for 4 lanes of 3-frame chunks)."""
    return synth_tiny(tmp_path_factory.mktemp("tiny-set") / "trombone", "trombone", 0.1, 1.5, 1.0)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """One export of the ``tiny`` Performer (seed 0: the same weights as ``performer``) with
    every graph, and its checkpoint: ``(folder, checkpoint)``. Read-only: copy it to change it."""
    import torch

    from letsplay.export.onnx import export_onnx, sha256_file
    from letsplay.models.performer import Performer
    from letsplay.models.presets import preset

    torch.manual_seed(0)
    p = Performer(preset("tiny")).eval()
    ckpt = tmp_path_factory.mktemp("tiny-ckpt") / "tiny.safetensors"
    p.save(ckpt)
    out = tmp_path_factory.mktemp("tiny-export")
    export_onnx(p, out, checkpoint_sha256=sha256_file(ckpt))
    return out, ckpt
