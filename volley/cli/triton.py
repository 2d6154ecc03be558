"""``volley triton start|status|stop`` — a local Triton Inference Server for trying volley.

The main CLI mounts this as ``app.add_typer(triton_app, name="triton")``.
Errors are one line on stderr with exit code 2; never a traceback.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from coordinator.triton import (
    DEFAULT_STATE_DIR,
    ENV_TRITON_HOME,
    TritonConfig,
    TritonSetupError,
    TritonState,
    TritonStatus,
    start_daemon,
    status,
    stop_daemon,
)
from volley.cli.common import fail

__all__ = ["triton_app"]

triton_app = typer.Typer(
    help=(
        "Run a local Triton Inference Server (CPU by default) serving a model repository "
        "(default: triton_models/), as a background process tracked in --state-dir."
    ),
    no_args_is_help=True,
    add_completion=False,
)

StateDirOpt = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        help="Where the server's state.json, log and rendered model repository live.",
    ),
]
_MODELS = "Models"
_CONFIG = "Model config overrides"
_SERVER = "Server"
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead.")]


def _status_json(st: TritonStatus) -> dict[str, Any]:
    out: dict[str, Any] = asdict(st)
    if st.state is not None:
        out["grpc_url"] = st.state.grpc_url
        out["http_url"] = st.state.http_url
        out["metrics_url"] = st.state.metrics_url
    return out


def _print_server(state: TritonState, st: TritonStatus | None) -> None:
    typer.echo(f"  pid      {state.pid}")
    typer.echo(f"  grpc     {state.grpc_url}")
    typer.echo(f"  http     http://{state.http_url}")
    typer.echo(f"  metrics  {state.metrics_url}")
    details = [state.device]
    if state.instances is not None:
        details.append(f"instances={state.instances}")
    if state.dynamic_batching is not None:
        details.append(f"dynamic_batching={'on' if state.dynamic_batching else 'off'}")
    typer.echo(f"  config   {', '.join(details)}  (models from {state.model_repository})")
    typer.echo(f"  log      {state.log_path}")
    if st is not None and st.models:
        typer.echo("  models")
        width = max(len(m.name) for m in st.models)
        for m in st.models:
            version = f"v{m.version}" if m.version else ""
            reason = f"  {m.reason}" if m.reason else ""
            typer.echo(f"    {m.name:<{width}}  {version:<4} {m.state}{reason}")
    elif state.models:
        typer.echo(f"  models   {', '.join(state.models)}")


def _check_model_configs(repository: Path) -> None:
    """Each model's config.pbtxt is readable UTF-8 text (it is parsed and rewritten for
    the server); fail() naming the file otherwise."""
    from volley.cli.planning import read_text_file
    from volley.plan import PlanError

    try:
        configs = sorted(repository.glob("*/config.pbtxt"))
        for path in configs:
            read_text_file(path, "model config")
    except PlanError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--model-repository {repository}: {exc.strerror or exc}")


@triton_app.command("start")
def start_cmd(
    model_repository: Annotated[
        Path,
        typer.Option(
            "--model-repository",
            "-m",
            rich_help_panel=_MODELS,
            help="Model repository to serve (copied and rendered, never modified).",
        ),
    ] = Path("triton_models"),
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            rich_help_panel=_MODELS,
            help="Serve only this model (repeatable; default: all).",
        ),
    ] = None,
    triton_home: Annotated[
        Path | None,
        typer.Option(
            "--triton-home",
            rich_help_panel=_MODELS,
            help=f"pytriton's tritonserver directory (default: ${ENV_TRITON_HOME}, else the "
            "one in .venv-triton's pytriton package).",
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            rich_help_panel=_CONFIG,
            help="cpu or gpu: rewrites every instance_group to KIND_CPU / KIND_GPU.",
        ),
    ] = "cpu",
    instances: Annotated[
        int | None,
        typer.Option(
            "--instances",
            rich_help_panel=_CONFIG,
            help="Model instances per model (default: as each config says).",
        ),
    ] = None,
    dynamic_batching: Annotated[
        bool | None,
        typer.Option(
            "--dynamic-batching/--no-dynamic-batching",
            rich_help_panel=_CONFIG,
            help="Force dynamic batching on (models with max_batch_size > 0) or off "
            "(default: as each config says).",
        ),
    ] = None,
    http_port: Annotated[
        int,
        typer.Option(
            "--http-port", rich_help_panel=_SERVER, help="HTTP port (0 = pick a free one)."
        ),
    ] = 8000,
    grpc_port: Annotated[
        int,
        typer.Option(
            "--grpc-port", rich_help_panel=_SERVER, help="gRPC port (0 = pick a free one)."
        ),
    ] = 8001,
    metrics_port: Annotated[
        int,
        typer.Option(
            "--metrics-port",
            rich_help_panel=_SERVER,
            help="Prometheus metrics port (0 = pick a free one).",
        ),
    ] = 8002,
    bind: Annotated[
        str,
        typer.Option(
            "--bind",
            rich_help_panel=_SERVER,
            help="Address the server listens on (default loopback only).",
        ),
    ] = "127.0.0.1",
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", rich_help_panel=_SERVER, help="Seconds to wait for the server to be ready."
        ),
    ] = 60.0,
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    json_out: JsonOpt = False,
) -> None:
    """Start tritonserver in the background and wait until it is ready."""
    device = device.lower()
    if device not in ("cpu", "gpu"):
        fail(f"--device must be cpu or gpu, not {device!r}")
    if instances is not None and instances < 1:
        fail(f"--instances must be at least 1, not {instances}")
    for name, port in (("http", http_port), ("grpc", grpc_port), ("metrics", metrics_port)):
        if not 0 <= port <= 65535:
            fail(f"--{name}-port must be in 0..65535, not {port}")
    if timeout <= 0:
        fail(f"--timeout must be positive, not {timeout}")
    if not model_repository.is_dir():
        fail(f"--model-repository {model_repository} is not a directory")
    _check_model_configs(model_repository)
    cfg = TritonConfig(
        model_repository=model_repository,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        device="gpu" if device == "gpu" else "cpu",
        instances=instances,
        dynamic_batching=dynamic_batching,
        models=list(model) if model else None,
        state_dir=state_dir,
        triton_home=triton_home,
        bind_address=bind,
    )
    try:
        state = start_daemon(cfg, timeout_s=timeout)
        st = status(state_dir)
    except TritonSetupError as exc:
        fail(str(exc))
    except OSError as exc:  # copying the repository, writing the state: say which file
        fail(f"tritonserver not started: {exc.filename or ''}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        fail("interrupted; tritonserver was not started", code=130)
    if json_out:
        typer.echo(json.dumps(_status_json(st), indent=2))
        return
    took = f" in {state.startup_s:.1f}s" if state.startup_s is not None else ""
    typer.echo(f"tritonserver ready{took}")
    _print_server(state, st)
    typer.echo(f"stop it with: volley triton stop --state-dir {state_dir}")


@triton_app.command("status")
def status_cmd(state_dir: StateDirOpt = DEFAULT_STATE_DIR, json_out: JsonOpt = False) -> None:
    """Show whether the server is running and ready, its ports and each model's state.

    Exit code 0 when running and ready, 1 otherwise."""
    try:
        st = status(state_dir)
    except TritonSetupError as exc:
        fail(str(exc))
    if json_out:
        typer.echo(json.dumps(_status_json(st), indent=2))
    elif not st.running:
        typer.echo(f"tritonserver: {st.message}")
    else:
        head = "ready" if st.ready else "NOT READY"
        extra = f" ({st.message})" if st.message else ""
        typer.echo(f"tritonserver: running, {head}{extra}")
        assert st.state is not None
        _print_server(st.state, st)
    if not (st.running and st.ready):
        raise typer.Exit(1)


@triton_app.command("stop")
def stop_cmd(
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait after SIGTERM before SIGKILL.")
    ] = 10.0,
) -> None:
    """Stop the server started by `volley triton start` (SIGTERM, then SIGKILL)."""
    try:
        stopped = stop_daemon(state_dir, timeout_s=timeout)
    except TritonSetupError as exc:
        fail(str(exc))
    typer.echo("tritonserver stopped" if stopped else "tritonserver: not running")


def main() -> None:  # pragma: no cover - for `python -m volley.cli.triton`
    triton_app(prog_name="volley triton")


if __name__ == "__main__":  # pragma: no cover
    main()
