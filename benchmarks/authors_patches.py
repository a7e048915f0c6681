"""What the benchmarks that run the ABD authors' code (authors_zskt.py, authors_cmi_ood.py) share: the
least a CPU needs to run it. Nothing of theirs is copied here."""
from __future__ import annotations

import contextlib
import os

import torch


@contextlib.contextmanager
def cpu_only():
    """Their SR step asks for 'cuda' (``zeros_like(..., device='cuda')``, ``.cuda()``); without CUDA it
    gets the CPU."""
    zeros_like, cuda = torch.zeros_like, torch.Tensor.cuda

    def zl(*a, **k):
        if k.get("device") == "cuda" and not torch.cuda.is_available():
            k["device"] = "cpu"
        return zeros_like(*a, **k)
    torch.zeros_like = zl
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.zeros_like, torch.Tensor.cuda = zeros_like, cuda


@contextlib.contextmanager
def quiet():
    """Their progress bars and prints go to the null device (tqdm needs a real file)."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield
