"""Probes: torch hooks that turn a model's tensors into records, on the device, sampled.

Importing this package registers the built-in probes. See `inspector.probes.base` for the
contract a probe implements.
"""
from inspector.probes.base import Probe, ProbeContext
from inspector.probes.host import HostValue, to_host
from inspector.probes.registry import PROBE_SETS, PROBES, register_probe, resolve_probes
from inspector.probes.sampling import Sampling

from inspector.probes import builtin  # noqa: F401  (registers the built-in probes)

__all__ = ["HostValue", "PROBES", "PROBE_SETS", "Probe", "ProbeContext", "Sampling", "register_probe",
           "resolve_probes", "to_host"]
