"""Host copies of small device tensors that do not make the host wait for the device.

Reading a GPU tensor's value on the host (``.cpu()``, ``.item()``, ``bool()``) waits for
every kernel queued before it: the host stops running ahead and the GPU then idles
while the next kernels are launched. What the search must know on the host but can
learn a little late (which ops are pruned) travels through :class:`HostCopy` instead:
an asynchronous copy into pinned memory, picked up once it has arrived.
"""
from __future__ import annotations

import torch


class HostCopy:
    """The values of the tensors posted last, on the host once they have arrived.

    On CUDA, :meth:`post` starts a non-blocking copy into pinned memory and records an
    event; :meth:`poll` hands the values over once the event has passed and returns None
    before (it never waits). Elsewhere the copy is made at once, so ``poll`` right after
    ``post`` has it. A newer post replaces one not yet picked up (each post is a whole
    state, not a change). A deep copy or pickle starts empty.
    """

    def __init__(self):
        self._pending: tuple | None = None  # (host tensor, event or None, [(key, shape)])

    def post(self, tensors: dict[str, torch.Tensor]) -> None:
        flat = torch.cat([t.detach().reshape(-1) for t in tensors.values()])  # a new tensor
        if flat.device.type == "meta":  # shapes without values (a dry run): nothing to copy
            return
        done = None
        if flat.device.type == "cuda":
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        else:
            host = flat.cpu()
        self._pending = (host, done, [(k, t.shape) for k, t in tensors.items()])

    def poll(self) -> dict[str, list] | None:
        """The last posted values as nested lists, if they have arrived and were not taken yet."""
        if self._pending is None:
            return None
        host, done, shapes = self._pending
        if done is not None and not done.query():
            return None
        self._pending = None
        parts = host.split([s.numel() for _, s in shapes])
        return {k: part.view(s).tolist() for (k, s), part in zip(shapes, parts)}

    def __deepcopy__(self, memo) -> HostCopy:
        return HostCopy()

    def __getstate__(self) -> dict:
        return {"_pending": None}
