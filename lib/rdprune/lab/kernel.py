"""A kernel client for papermill that never sleeps through a message.

nbclient waits for a cell's reply with one ``poll`` on the kernel's shell socket, as long as the
cell timeout. With widgets in a cell (our explorer), that poll sometimes misses the wake-up of a
reply that has arrived (jupyter/nbclient#312) and returns only at the timeout: a 0.3-second
explorer cell can then take the whole cell limit, under load. The channels below
poll in slices of at most a second, and each new poll looks at the socket first, so a reply
that is already there is read within a second. The overall timeout is unchanged.
"""
from __future__ import annotations

from queue import Empty
from time import monotonic

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from traitlets import DottedObjectName, Type

SLICE = 1.0  # seconds per poll


class PatientChannel(AsyncZMQSocketChannel):
    """``get_msg(timeout)`` as polls of at most :data:`SLICE` seconds until ``timeout``."""

    async def get_msg(self, timeout: float | None = None):
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - monotonic())
            step = SLICE if left is None else min(SLICE, left)
            try:
                return await super().get_msg(timeout=step)
            except Empty:
                if deadline is not None and monotonic() >= deadline:
                    raise


class PatientClient(AsyncKernelClient):
    shell_channel_class = Type(PatientChannel)
    iopub_channel_class = Type(PatientChannel)


class PatientKernelManager(AsyncKernelManager):
    """Pass as ``kernel_manager_class`` to ``papermill.execute_notebook``."""

    # AsyncKernelManager fixes its client_factory, so the client class is named in both
    client_factory = Type(PatientClient, config=True)
    client_class = DottedObjectName("rdprune.lab.kernel.PatientClient")
