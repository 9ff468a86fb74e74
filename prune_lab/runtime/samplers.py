"""The one sampler table: every `--scheduler` choice, and how each is built from a pipeline's scheduler config.

An entry is a small :class:`SamplerSpec` (a diffusers scheduler class name + config overrides), so :func:`names`
lists the choices without importing torch or diffusers (CLI parsers use it for `choices`); diffusers is imported
only when a sampler is built.

| name    | scheduler                      | overrides             | notes                                       |
|---------|--------------------------------|-----------------------|---------------------------------------------|
| `pndm`  | `PNDMScheduler`                | `skip_prk_steps=True` | PLMS steps only: BK-SDM's protocol sampler  |
| `ddim`  | `DDIMScheduler`                | none                  | deterministic (eta 0)                       |
| `euler` | `EulerDiscreteScheduler`       | none                  | no churn: adds no noise after the first step |
| `dpm`   | `DPMSolverMultistepScheduler`  | none                  | DPM-Solver++ (the class default algorithm)  |
| `flow-euler` | `FlowMatchEulerDiscreteScheduler` | none           | flow matching (SD3, Flux): their own sampler |

A `FlowMatchEulerDiscreteScheduler` config (SD3, Flux) takes `flow-euler` only, and `flow-euler` takes only such a
config: the flow pipelines pass sigmas (and Flux its shift μ) that the DDPM samplers cannot take. Sana's DPM-Solver
on flow sigmas takes `dpm`.

Every sampler is built with `from_config(pipeline scheduler config, **overrides)`, so the noise schedule (betas,
steps, prediction type) is the pipeline's own. A config that already names another `algorithm_type` for `dpm`
keeps it.

Callers and what they get (kept from before the table was shared, so no score or image changed):

* `prunelab generate` / :func:`prune_lab.evaluation.generate.load_pipeline`: the entry with its overrides.
* the `clip` scoring criterion: `config_only=True`, i.e. the class built from the pipeline's config *without* the
  overrides, as its own table always did. The only difference is `pndm` on a pipeline whose config does not set
  `skip_prk_steps` (the `demo` pipeline's DPM config, for example): the criterion keeps PNDM's Runge-Kutta warm-up
  steps there. SD checkpoints set `skip_prk_steps: true` themselves, so both callers agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .registry import Registry

#: The scheduler class of flow-matching pipelines (SD3, Flux).
FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"


@dataclass(frozen=True)
class SamplerSpec:
    """How to build one sampler.

    Attributes:
        class_name: a diffusers scheduler class (`diffusers.<class_name>`).
        overrides: config values set on top of the pipeline's scheduler config.
        description: one line for listings.
        min_steps: the fewest denoising steps it can take (PNDM's PLMS steps need two).
    """

    class_name: str
    overrides: dict = field(default_factory=dict)
    description: str = ""
    min_steps: int = 1

    @property
    def flow(self) -> bool:
        """Whether it samples flow-matching pipelines (SD3, Flux) rather than DDPM ones."""
        return self.class_name == FLOW_SCHEDULER

    def scheduler_class(self) -> type:
        """The diffusers scheduler class (imports diffusers)."""
        import diffusers

        return getattr(diffusers, self.class_name)

    def build(self, config, *, config_only: bool = False):
        """The scheduler built from `config` (a scheduler config), with this entry's overrides unless `config_only`.

        Raises:
            ValueError: a flow-matching sampler for a DDPM config, or the other way round.
        """
        flow_config = config.get("_class_name") == FLOW_SCHEDULER
        if flow_config != self.flow:
            kind = "a flow-matching" if flow_config else f"a {config.get('_class_name', 'DDPM-style')}"
            fix = "flow-euler" if flow_config else "pndm, ddim, euler or dpm"
            raise ValueError(f"sampler {self.class_name} cannot sample {kind} pipeline; use {fix}")
        return self.scheduler_class().from_config(config, **({} if config_only else self.overrides))


SAMPLERS: Registry[SamplerSpec] = Registry("sampler", hint="the --scheduler choices")
SAMPLERS.register(
    "pndm",
    SamplerSpec("PNDMScheduler", {"skip_prk_steps": True}, "PNDM (Liu et al., 2022), PLMS steps only", min_steps=2),
)
SAMPLERS.register("ddim", SamplerSpec("DDIMScheduler", description="DDIM (Song et al., 2021), eta 0"))
SAMPLERS.register("euler", SamplerSpec("EulerDiscreteScheduler", description="Euler (Karras et al., 2022), no churn"))
SAMPLERS.register(
    "dpm", SamplerSpec("DPMSolverMultistepScheduler", description="DPM-Solver++ multistep (Lu et al., 2022)")
)

SAMPLERS.register(
    "flow-euler", SamplerSpec(FLOW_SCHEDULER, description="flow-matching Euler (Esser et al., 2024): SD3, Flux")
)


def names() -> list[str]:
    """The registered sampler names, in registration order (no torch / diffusers import)."""
    return SAMPLERS.names()


def build_sampler(name: str, config, *, config_only: bool = False):
    """The sampler `name` built from a scheduler config (see the module docstring for `config_only`).

    Raises:
        ValueError: unknown name (with the closest one and the list).
    """
    return SAMPLERS.get(name).build(config, config_only=config_only)


def with_sampler(pipe, name: str, *, config_only: bool = False):
    """A pipeline sharing `pipe`'s modules, with the sampler `name` built from `pipe`'s scheduler config.

    `pipe` itself is left unchanged (its scheduler stays), so one loaded pipeline can serve several samplers.
    """
    sampler = build_sampler(name, pipe.scheduler.config, config_only=config_only)
    copy = type(pipe)(**{**pipe.components, "scheduler": sampler})
    copy.set_progress_bar_config(disable=True)
    return copy
