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
on flow sigmas (`use_flow_sigmas`) takes `dpm` only: the other DDPM samplers have no flow sigmas.

No name (None) is :func:`default_sampler` of the pipeline's scheduler config: `pndm` (the BK-SDM protocol) for
DDPM-style pipelines, `flow-euler` for flow-matching ones, `dpm` for DPM-Solver on flow sigmas (Sana). Callers
record the resolved name (:func:`resolve`), so a U-Net's settings read `pndm` as they always did.

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
#: The only DDPM-style scheduler class that samples on flow sigmas (Sana's `use_flow_sigmas` DPM-Solver).
FLOW_SIGMAS_SCHEDULER = "DPMSolverMultistepScheduler"


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
        if config.get("use_flow_sigmas") and self.class_name != FLOW_SIGMAS_SCHEDULER:
            raise ValueError(
                f"sampler {self.class_name} cannot sample a pipeline on flow sigmas ({config.get('_class_name')} "
                "with use_flow_sigmas, e.g. Sana); use dpm"
            )
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


def default_sampler(config) -> str:
    """The sampler a scheduler config gets when none is named: `flow-euler` for a flow-matching config (SD3, Flux),
    `dpm` for DPM-Solver on flow sigmas (Sana), else `pndm` (BK-SDM's protocol: SD, SDXL, PixArt)."""
    if config.get("_class_name") == FLOW_SCHEDULER:
        return "flow-euler"
    return "dpm" if config.get("use_flow_sigmas") else "pndm"


def resolve(name: str | None, config) -> str:
    """`name`, or :func:`default_sampler` of `config` when None (the name settings files record)."""
    return default_sampler(config) if name is None else name


def check_steps(name: str, steps: int, flag: str = "--steps") -> None:
    """Raise a ValueError when the sampler `name` cannot take `steps` denoising steps (PNDM needs two)."""
    fewest = SAMPLERS.get(name).min_steps
    if steps < fewest:
        raise ValueError(f"{flag} {steps}: the {name} sampler needs at least {fewest} steps")


def build_sampler(name: str | None, config, *, config_only: bool = False):
    """The sampler `name` (None: :func:`default_sampler`) built from a scheduler config (see the module docstring
    for `config_only`).

    Raises:
        ValueError: unknown name (with the closest one and the list), or one that cannot sample this config.
    """
    return SAMPLERS.get(resolve(name, config)).build(config, config_only=config_only)


def with_sampler(pipe, name: str | None, *, config_only: bool = False):
    """A pipeline sharing `pipe`'s modules, with the sampler `name` (None: :func:`default_sampler`) built from
    `pipe`'s scheduler config.

    `pipe` itself is left unchanged (its scheduler stays), so one loaded pipeline can serve several samplers.
    """
    sampler = build_sampler(name, pipe.scheduler.config, config_only=config_only)
    copy = type(pipe)(**{**pipe.components, "scheduler": sampler})
    copy.set_progress_bar_config(disable=True)
    return copy
