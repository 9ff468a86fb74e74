"""The runtime layer every capability stands on: loading, sampling, schedules, CLIP, readers, writers, registries.

Nothing here imports a capability (scoring, search, report, distill, evaluation, width, analysis), the demo or the
CLI. Modules import torch / diffusers only inside the functions that need them where a CLI parser uses them
(:mod:`.registry`, :mod:`.dtypes`, :mod:`.budget` stay import-cheap).
"""
