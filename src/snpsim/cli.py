"""The ``snpsim`` command line."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from snpsim.demo import DemoConfig, run_demo
from snpsim.errors import ConfigError
from snpsim.policy import presets
from snpsim.units import format_bytes, parse_duration, parse_size

app = typer.Typer(
    help="snpsim: model how a KVM host manages the memory of confidential VMs (AMD SEV-SNP).",
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

_BYTE_METRICS = ("directmap_4k", "directmap_2m", "directmap_1g", "private_bytes")


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        console.print(ctx.get_help())
        raise typer.Exit(0)


@app.command()
def run(
    preset: Annotated[
        list[str] | None, typer.Option("--preset", "-p", help="Preset to run (repeatable; default: all).")
    ] = None,
    host_memory: Annotated[str, typer.Option(help="Host physical memory.")] = "2G",
    guest_memory: Annotated[str, typer.Option(help="Guest memory.")] = "256M",
    conversions: Annotated[int, typer.Option(help="Random private<->shared conversions after boot.")] = 10_000,
    duration: Annotated[str, typer.Option(help="Simulated time.")] = "1s",
    seed: Annotated[int, typer.Option(help="RNG seed; same seed, same result.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Run the built-in demo: one SNP guest on a busy host under each preset, and compare the host's fate."""
    try:
        names = preset or list(presets)
        for name in names:
            if name not in presets:
                raise ConfigError("--preset", f"unknown preset {name!r} (presets: {', '.join(presets)})")
        if conversions < 0:
            raise ConfigError("--conversions", "must be >= 0")
        cfg = DemoConfig(
            host_bytes=parse_size(host_memory, "--host-memory"),
            guest_bytes=parse_size(guest_memory, "--guest-memory"),
            conversions=conversions,
            duration_ns=parse_duration(duration, "--duration"),
            seed=seed,
        )
        if cfg.host_bytes < (64 << 20) or cfg.host_bytes % 4096:
            raise ConfigError("--host-memory", "must be a multiple of 4K and at least 64M")
        if not 0 < cfg.guest_bytes <= cfg.host_bytes // 2:
            raise ConfigError("--guest-memory", "must be > 0 and at most half of --host-memory")
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if quiet or as_json:
        results = run_demo(cfg, names)
    else:
        with console.status("") as status:
            results = run_demo(cfg, names, progress=lambda n: status.update(f"simulating preset [bold]{n}[/] ..."))
    if as_json:
        console.print_json(json.dumps(results))
        return
    table = Table(
        title=f"snpsim demo: {format_bytes(cfg.guest_bytes)} SNP guest on a {format_bytes(cfg.host_bytes)} host"
    )
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    for metric in next(iter(results.values())):
        cells = [format_bytes(r[metric]) if metric in _BYTE_METRICS else f"{r[metric]:,}" for r in results.values()]
        table.add_row(metric, *cells)
    console.print(table)


@app.command("presets")
def list_presets() -> None:
    """Show the presets and their knob values."""
    table = Table(title="snpsim presets")
    table.add_column("knob", style="bold")
    for name in presets:
        table.add_column(name)
    for knob in next(iter(presets.values())).as_dict():
        table.add_row(knob, *(str(p.as_dict()[knob]).lower() for p in presets.values()))
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
