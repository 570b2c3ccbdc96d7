"""The backend conformance suite on every backend this machine has.

``sandbox`` must block every escape; ``unsafe-process`` must let every one through,
which is how the suite shows it is not vacuous.
"""

from __future__ import annotations

from threezone.testing.conformance import BackendConformance


class TestSandbox(BackendConformance):
    backend_name = "sandbox"
    isolated = True


class TestUnsafeProcess(BackendConformance):
    backend_name = "unsafe-process"
    isolated = False


class TestQemu(BackendConformance):
    backend_name = "qemu"
    isolated = True
