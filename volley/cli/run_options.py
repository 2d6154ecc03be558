"""The options of `volley run`, one alias each, grouped by panel as `volley run --help`
shows them (run.py's signature uses them as `o.Name`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from volley.cli.common import (
    PANEL_AGENTS,
    PANEL_INPUTS,
    PANEL_LOAD,
    PANEL_MONITOR,
    PANEL_OUTPUT,
    PANEL_SECURITY,
    PANEL_TARGET,
    option,
)

RUN_OUTPUT = f"{PANEL_OUTPUT} and SLOs"

PlanFile = Annotated[Path | None, typer.Argument(help="Plan YAML (options below override it).")]

# ---- Target and protocol
Target = Annotated[str | None, option(PANEL_TARGET, "Inference server HOST:PORT (gRPC).")]
Model = Annotated[str | None, option(PANEL_TARGET, "Model name on the server.")]
ModelVersion = Annotated[str | None, option(PANEL_TARGET, "Model version (default: latest).")]
Protocol = Annotated[
    str | None,
    option(
        PANEL_TARGET,
        "grpc (default), http (KServe v2 REST) or json (a plain JSON prediction service: "
        "POST a JSON body, 2xx is success; see the JSON service options).",
    ),
]
PANEL_JSON = "JSON service (--protocol json)"
JsonPath = Annotated[str | None, option(PANEL_JSON, "URL path to POST to, e.g. /predict.")]
JsonTemplate = Annotated[
    str | None,
    option(
        PANEL_JSON,
        'Body template, JSON text or @FILE: a string "$NAME" is replaced by input NAME\'s '
        'value (declare it with --input NAME=random --shape NAME=4), e.g. \'{"features": '
        '"$x"}\'.',
    ),
]
JsonBodies = Annotated[
    str | None,
    option(PANEL_JSON, "JSON Lines file of whole request bodies (one per line), read here."),
]
ExpectStatus = Annotated[
    int | None, option(PANEL_JSON, "The HTTP status of a good answer (default: any 2xx).")
]
ExpectField = Annotated[
    str | None,
    option(PANEL_JSON, "A dotted path that a good answer's JSON holds, e.g. predictions.0."),
]
Transport = Annotated[
    str | None,
    option(
        PANEL_TARGET,
        "gRPC: unary (one ModelInfer per request, volley's HTTP/2 client), stream "
        "(ModelStreamInfer) or grpcio (grpc.aio with tritonclient's service stubs).",
    ),
]
Connections = Annotated[
    int | None,
    option(
        PANEL_TARGET,
        "Connections to the target in all, split over the agents and workers like the "
        "schedule, opened before the start and held for the run; requests spread over "
        "them (an HTTP/1.1 pool is capped at its share). An agent with fewer connections "
        "than workers runs one worker per connection (an explicit --workers must fit).",
    ),
]
ConnectionsPerWorker = Annotated[
    int | None,
    option(PANEL_TARGET, "Connections per agent worker instead (the plan file's `connections`)."),
]
Compression = Annotated[
    str | None, option(PANEL_TARGET, "Request compression: none, gzip or deflate.")
]
HttpBody = Annotated[
    str | None,
    option(
        PANEL_TARGET,
        "HTTP request bodies: binary (Triton's binary tensor extension), json (plain "
        "KServe v2 JSON, for servers without it, e.g. MLServer) or auto (default: from the "
        "server metadata's extensions).",
    ),
]
Timeout = Annotated[str | None, option(PANEL_TARGET, "Per-request timeout, e.g. 10s.")]
HeaderFile = Annotated[
    list[str] | None,
    option(PANEL_TARGET, "File of 'Name: value' request headers, read here (agents get values)."),
]
HeaderEnv = Annotated[
    list[str] | None,
    option(PANEL_TARGET, "NAME=ENVVAR: header NAME from environment variable ENVVAR."),
]

# ---- Load
Rate = Annotated[float | None, option(PANEL_LOAD, "Open loop: requests per second (total).")]
Concurrency = Annotated[int | None, option(PANEL_LOAD, "Closed loop: requests in flight (total).")]
Arrival = Annotated[str | None, option(PANEL_LOAD, "constant | poisson | trace.")]
Duration = Annotated[
    str | None,
    option(
        PANEL_LOAD,
        "Load duration, e.g. 30s, 2m; or 'auto': run until the SLOs are decided (or their "
        "intervals are narrow enough) and throughput is stable, at most --max-duration.",
    ),
]
Warmup = Annotated[
    str | None,
    option(
        PANEL_LOAD,
        "Sent but excluded from results (e.g. 5s); 'auto': detect it from the 1 s windows "
        "(MSER-5, at most half the run) and leave the unsettled start out of the figures.",
    ),
]
Stages = Annotated[
    str | None,
    option(PANEL_LOAD, "Ramps, e.g. '10s:100,20s:400' (rate, or concurrency with --concurrency)."),
]
Trace = Annotated[
    Path | None,
    option(PANEL_LOAD, "Replay arrivals from a file (one timestamp or gap per line)."),
]
TraceFormat = Annotated[str, option(PANEL_LOAD, "timestamps | gaps.")]
TraceUnit = Annotated[str, option(PANEL_LOAD, "s | ms | us | ns.")]
TraceSpeed = Annotated[float, option(PANEL_LOAD, "Replay speed factor.")]
MaxInFlight = Annotated[
    int | None,
    option(
        PANEL_LOAD, "Open loop: per-agent in-flight cap (late past it, dropped past the backlog)."
    ),
]
Seed = Annotated[
    int | None, option(PANEL_LOAD, "Seed of the schedule and inputs (default: random, recorded).")
]

# ---- Inputs
Input = Annotated[
    list[str] | None,
    option(
        PANEL_INPUTS,
        "NAME=VALUE constant, NAME=random|zeros, or NAME=@DIR (files) / "
        "NAME=@FILE.json (perf_analyzer data) (repeatable).",
        "--input",
    ),
]
Shape = Annotated[
    list[str] | None,
    option(
        PANEL_INPUTS,
        "NAME=DIMS, e.g. IMAGE=224x224x3, or varying: IMAGE=200..800x200..800x3 (repeatable).",
    ),
]
Vary = Annotated[
    list[str] | None,
    option(
        PANEL_INPUTS,
        "NAME.KEY=VALUE, KEY: shapes (224x224x3:3,480x640x3:1), pixels (50k..2M), "
        "aspect (0.5..2), dims, length, layout (repeatable; see README).",
    ),
]
BatchSize = Annotated[
    str | None, option(PANEL_INPUTS, "Batch size per request: 8, 1..8 or 1:5|4:3|8:2.")
]
InputData = Annotated[
    str | None, option(PANEL_INPUTS, "perf_analyzer-style JSON input data for its inputs.")
]
Prompts = Annotated[
    str | None,
    option(
        PANEL_INPUTS,
        'Prompts for a BYTES input: a JSONL file (one object a line, its "text" or '
        '"prompt") or a text file (one prompt a line).',
    ),
]
PromptInput = Annotated[
    str | None,
    option(PANEL_INPUTS, "The input --prompts fills (default: the model's only BYTES input)."),
]
MaxTokens = Annotated[
    str | None,
    option(
        PANEL_INPUTS,
        "Streamed models: the max_tokens request parameter, an integer or a distribution "
        "drawn per payload, e.g. 128 or 'uniform(16, 64)'.",
    ),
]

# ---- Sequences and composed models
PANEL_SEQUENCES = "Sequences and composed models"
SeqLength = Annotated[
    str | None,
    option(
        PANEL_SEQUENCES,
        "Stateful sequences: steps per sequence, e.g. 10, 5..20 or 4|8|16. With --rate, "
        "sequences start at that rate; with --concurrency, each user runs one after another.",
    ),
]
SeqThink = Annotated[
    str | None, option(PANEL_SEQUENCES, "Think time between steps in ms: 0, 5..20, 10|50.")
]
SeqIdRange = Annotated[
    str | None,
    option(
        PANEL_SEQUENCES,
        "Correlation IDs LO:HI to use (split between agents and workers; the first is "
        "preflight's). Refused when too small for the live sequences.",
    ),
]
SeqIdType = Annotated[
    str | None, option(PANEL_SEQUENCES, "Correlation IDs: uint64 (default) or string.")
]
SeqLive = Annotated[
    int | None,
    option(PANEL_SEQUENCES, "Open loop: live sequences at most, all agents (default 1024)."),
]
SeqCheck = Annotated[
    str | None,
    option(
        PANEL_SEQUENCES,
        "INPUT:OUTPUT: check every response's OUTPUT is the running sum of INPUT "
        "(an accumulator's state), else SEQ_MISMATCH.",
    ),
]
SeqDrain = Annotated[
    str | None,
    option(PANEL_SEQUENCES, "After the load: time live sequences get to finish (default 5s)."),
]
ComposingModels = Annotated[
    str | None,
    option(
        PANEL_SEQUENCES,
        "A,B: models whose server statistics belong to this one (a BLS model's callees; "
        "an ensemble's steps are found from its config).",
    ),
]

# ---- Agents
Agent = Annotated[
    list[str] | None,
    option(PANEL_AGENTS, "Agent HOST:PORT or dns:///NAME:PORT (repeatable).", "--agent"),
]
LocalAgents = Annotated[
    int, option(PANEL_AGENTS, "Without --agent: spawn this many agents on this machine.")
]
Workers = Annotated[int, option(PANEL_AGENTS, "Worker processes per agent (0: agent default).")]
Pin = Annotated[
    bool,
    option(
        PANEL_AGENTS,
        "Local agents: each worker on a core of its own, the coordinator and the agents' "
        "main processes on the others, where the host has the cores (summary.json: affinity).",
    ),
]
StartLead = Annotated[
    float,
    option(
        PANEL_AGENTS,
        "At least this many seconds from the start command to the start (0: the lead "
        "measured once every agent is prepared: round trips, clocks, fan-out).",
    ),
]

# ---- Output and SLOs
Slo = Annotated[
    list[str] | None,
    option(
        RUN_OUTPUT,
        "Pass/fail rule (repeatable): e.g. 'p99<50ms', 'errors<0.1%', "
        "'throughput>=0.98*offered', or the connect time 'connect_p99<50ms' (connect_p50, "
        "connect_max).",
    ),
]
Name = Annotated[str | None, option(RUN_OUTPUT, "Run name (in the run directory's name).")]
Out = Annotated[Path, option(RUN_OUTPUT, "Parent folder of run directories.")]
Raw = Annotated[bool, option(RUN_OUTPUT, "Write every request to requests.parquet.")]
Quiet = Annotated[bool, option(RUN_OUTPUT, "Print only the run directory.")]
# ---- Statistics
PANEL_STATS = "Statistics"
Confidence = Annotated[
    float | None,
    option(PANEL_STATS, "Confidence level of every interval and SLO verdict (default 0.95)."),
]
MaxDuration = Annotated[
    str, option(PANEL_STATS, "With --duration auto: the longest the run may go (warm-up included).")
]
TargetWidth = Annotated[
    float,
    option(
        PANEL_STATS,
        "With --duration auto: an undecided SLO percentile is enough once its interval is "
        "this narrow, relative to the figure (0.1: 10%).",
    ),
]
Repeat = Annotated[
    int,
    option(PANEL_STATS, "Run the plan N times; report the spread between runs (repeats.json)."),
]
RepeatSeed = Annotated[
    str, option(PANEL_STATS, "With --repeat: 'fresh' (seed + i for run i) or 'same' seed.")
]
# ---- Monitoring
MetricsPort = Annotated[
    str | None,
    option(PANEL_MONITOR, "Serve live figures for Prometheus on PORT or HOST:PORT (/metrics)."),
]
ServerMetrics = Annotated[
    str | None,
    option(
        PANEL_MONITOR, "Triton's metrics URL or HOST:PORT to scrape, or 'off' (default: found)."
    ),
]
ServerStats = Annotated[
    bool, option(PANEL_MONITOR, "Sample the server's statistics and metrics (server.json).")
]

# ---- Security
Tls = Annotated[bool, option(PANEL_SECURITY, "TLS to the target.", "--tls")]
TlsCa = Annotated[str | None, option(PANEL_SECURITY, "CA bundle (PEM) for the target.")]
TlsCert = Annotated[str | None, option(PANEL_SECURITY, "Client certificate (PEM).")]
TlsKey = Annotated[str | None, option(PANEL_SECURITY, "Client key (PEM).")]
TlsServerName = Annotated[
    str | None, option(PANEL_SECURITY, "Server name to verify instead of the target host.")
]
TokenFile = Annotated[
    str | None, option(PANEL_SECURITY, "File holding the agents' token (or env VOLLEY_TOKEN).")
]
AgentTlsCa = Annotated[
    str | None,
    option(PANEL_SECURITY, "Control plane: talk TLS to agents, verifying them with this CA."),
]
AgentTlsCert = Annotated[
    str | None, option(PANEL_SECURITY, "Control plane: client certificate (mTLS to agents).")
]
AgentTlsKey = Annotated[
    str | None, option(PANEL_SECURITY, "Control plane: client key (mTLS to agents).")
]
