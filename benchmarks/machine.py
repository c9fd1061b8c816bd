"""What a benchmark ran on (kept in the package: ``icn-rt bench`` reports it too)."""

from icn_rt.machine import machine_info

__all__ = ["machine_info"]
