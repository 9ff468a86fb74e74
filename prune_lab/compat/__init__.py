"""Compatibility: whether a student works everywhere a U-Net goes (pipelines, ControlNet, LoRA, IP-Adapter, casting,
compilation, offloading), checked on tiny inputs, and the ControlNet builder for students `from_unet` refuses.

:func:`run_checks` runs the registered :data:`CHECKS` on an export opened with :func:`open_export` and returns the
table `prunelab check` prints; :func:`controlnet_from_student` builds a stock `ControlNetModel` for any student.
"""

from ..runtime.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".checks": ("CHECKS", "Check", "Outcome", "register_check", "run_check", "run_checks"),
        ".controlnet": ("controlnet_config", "controlnet_from_student"),
        ".export": ("Export", "open_export"),
    },
)
