"""The ``carla-mr`` command.

Verbs are loaded lazily so ``carla-mr --help`` and light verbs never import torch, SUMO or
ZeroMQ. Each stage owns its verbs in its own module (``carla_mr/<stage>/cli.py``).
"""

from __future__ import annotations

import importlib

import click

from carla_mr import __version__

#: verb -> (module, attribute, help). A verb whose optional dependency is missing is listed, and
#: says which package to install when used.
VERBS: dict[str, tuple[str, str, str]] = {
    "run": ("carla_mr.runner_cli", "run_cmd", "Run a scenario: world, twin, market, genai, recorder."),
    "maps": ("carla_mr.world.maps_cli", "maps_group", "Build the project's maps, list landmarks, inject signs."),
    "twin": ("carla_mr.twin.cli", "twin_group", "Digital-twin trajectory predictors: train, eval."),
    "market": ("carla_mr.market.cli", "market_group", "The GPU-time market: experiments, auctioneer, bidders, ledger."),
    "genai": ("carla_mr.genai.cli", "genai_group", "TSDreamBooth: sign data, base model, DreamBooth, generation, scores."),
    "dataset": ("carla_mr.dataset.cli", "dataset_group", "Record labeled sensor datasets; evaluate perception in the loop."),
    "view": ("carla_mr.viewer", "view_cmd", "Bird's-eye viewer of a run or scenario (pygame; headless to PNG/MP4)."),
    "bench": ("carla_mr.bench_cli", "bench_cmd", "Run the benchmarks and print ratios against same-run baselines."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(VERBS)

    def get_command(self, ctx, name):
        if name not in VERBS:
            return None
        module, attr, help_text = VERBS[name]
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (exc.name == "carla_mr" or exc.name.startswith("carla_mr.")):
                raise  # a broken installation, not an optional dependency
            return _unavailable(name, help_text, f"missing dependency '{exc.name}': {exc}")
        return getattr(mod, attr)


def _unavailable(name: str, help_text: str, reason: str) -> click.Command:
    @click.command(name=name, help=f"{help_text} [unavailable: {reason}]",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def cmd():
        raise click.UsageError(f"'{name}' is unavailable: {reason}")

    return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="carla-mr")
def main():
    """carla-mr: generative-AI-augmented mixed-reality driving simulation for CARLA."""


if __name__ == "__main__":  # pragma: no cover
    main()
