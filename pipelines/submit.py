"""`eva submit`: a run (or a resume) as a Ray Job on a cluster.

What the job gets is decided here, before anything reaches the cluster: its entrypoint (`eva run
...` after resolving the config locally, so bad input fails now; or `eva resume RUN_DIR`), and its
runtime_env (the actors' environment plus the user's non-secret `--env` pairs). `submit_job` then
talks to the cluster's job API, waiting out a head whose job agent is still starting.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from actors.cluster import actor_env
from eva.checkpoint import RunDir
from eva.config import load_config

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# A freshly started head answers 500 "No available agent" until its dashboard agent is up.
AGENT_NOT_UP = "No available agent"
AGENT_WAIT_S = 90.0  # longest wait for the agent
AGENT_POLL_S = 3.0

# Names of environment variables that hold secrets: never put into a job's runtime_env (the dashboard
# and `ray job` show it), run.yaml or events.jsonl. Secrets reach actors from the nodes' environment.
SECRET_SUFFIXES = ("_TOKEN", "_KEY", "_SECRET", "_PASSWORD", "_CREDENTIALS")
# Values that are credentials whatever the variable is called: what they look like, as the providers
# format them (a name like HF=... or URL=... would slip past SECRET_SUFFIXES).
SECRET_VALUES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("a URL with a password", re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@")),
    ("an AWS access key id", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("an API token (sk-...)", re.compile(r"\bsk-[A-Za-z0-9_-]{16,}")),
    ("a Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}")),
    ("a GitHub token", re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})")),
    ("a Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a JSON web token", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+")),
)


class SubmitError(RuntimeError):
    """The job API refused the job or could not be reached; the message says what to check."""


def is_secret_name(name: str) -> bool:
    return name.upper().endswith(SECRET_SUFFIXES)


def secret_value_kind(value: str) -> str | None:
    """What kind of credential `value` looks like (SECRET_VALUES), or None."""
    return next((kind for kind, pattern in SECRET_VALUES if pattern.search(value)), None)


def job_runtime_env(extra_env: list[str], working_dir: Path | None) -> dict:
    """runtime_env of a submitted run: the actors' environment (`actor_env`; a job's runtime_env
    replaces the one ray.init would give them) plus non-secret `KEY=VALUE` pairs; secrets are
    refused (ValueError)."""
    env = actor_env()
    for item in extra_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--env {item!r}: expected KEY=VALUE")
        if is_secret_name(key):
            raise ValueError(
                f"--env {key}: secrets must not go into the job's runtime_env (visible in the dashboard and "
                f"job API); set {key} in the nodes' environment (a Kubernetes Secret, the launcher's env)"
            )
        if (kind := secret_value_kind(value)) is not None:  # the value is not echoed: it is the secret
            raise ValueError(
                f"--env {key}: the value looks like {kind}; secrets must not go into the job's runtime_env "
                f"(visible in the dashboard and job API): set {key} in the nodes' environment (a Kubernetes "
                f"Secret, the launcher's env)"
            )
        env[key] = value
    runtime_env: dict = {"env_vars": env}
    if working_dir is not None:
        runtime_env["working_dir"] = str(working_dir)
    return runtime_env


def run_args(config: Path | None, preset: str | None, overrides: list[str]) -> list[str]:
    """`eva run ...` for the job, after resolving the config here: bad input fails now, not on the cluster."""
    load_config(config, overrides, preset=preset)
    args = ["eva", "run", *([str(config)] if config else []), *(["--preset", preset] if preset else [])]
    return args + [a for o in overrides for a in ("--set", o)]


def resume_args(resume: str, iterations: int | None, other_options: Mapping[str, object]) -> list[str]:
    """`eva resume RUN_DIR [--iterations N]`: the run's own run.yaml is its config, so none of
    `other_options` (option name -> value given) may be set. A run directory this machine can see
    is checked here; one only the cluster mounts, by the job."""
    given = [name for name, value in other_options.items() if value]
    if given:
        raise ValueError(f"--resume continues a run with the config in its run.yaml; drop {', '.join(given)}")
    local = RunDir(resume)
    if local.root.exists() and not local.config_path.is_file():
        raise ValueError(f"--resume {resume}: not a run directory (no run.yaml)")
    if local.config_path.is_file():
        local.config()  # a damaged run.yaml fails here
    return ["eva", "resume", resume, *(["--iterations", str(iterations)] if iterations is not None else [])]


def job_address(given: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The job API: `given`, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else DEFAULT_ADDRESS."""
    environ = os.environ if environ is None else environ
    return given or environ.get("RAY_API_SERVER_ADDRESS") or environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def submit_job(
    address: str,
    entrypoint: str,
    runtime_env: dict,
    job_id: str | None,
    *,
    wait_s: float = AGENT_WAIT_S,
    poll_s: float = AGENT_POLL_S,
    on_wait: Callable[[str], None] = print,
) -> str:
    """Submit the job and return its id. While the head says AGENT_NOT_UP (transient) it retries
    every `poll_s` seconds for up to `wait_s`, telling `on_wait`; any other failure, or the agent
    still missing after that, raises SubmitError."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return JobSubmissionClient(address).submit_job(
                entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id
            )
        except AuthenticationError as e:
            raise SubmitError(
                f"the Ray job API at {address} refused the submission: {str(e).splitlines()[0]}\nthe cluster "
                f"uses token "
                "authentication: set RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN (or "
                "~/.ray/auth_token, or RAY_AUTH_TOKEN_PATH)"
            ) from None
        except (ConnectionError, RuntimeError, ValueError) as e:
            agent_missing = AGENT_NOT_UP in str(e)
            if agent_missing and time.monotonic() < deadline:
                on_wait(f"the cluster's job agent is not up yet; retrying in {poll_s:g} s")
                time.sleep(poll_s)
                continue
            hint = (
                "\nthe head's dashboard agent serves no HTTP: is its port taken by another Ray instance on that"
                " machine? (`ray start --dashboard-agent-listen-port`, default 52365; see dashboard_agent.log)"
                if agent_missing
                else ""
            )
            raise SubmitError(f"cannot submit to the Ray job API at {address}: {e}{hint}") from None


TAIL_LINES = 20  # of a failed job's log, printed when following it


def follow_job(address: str, job_id: str, out: Callable[[str], None], poll_s: float = 1.0) -> tuple[str, int]:
    """Stream the job's logs to `out` until it ends (as `ray job submit` does); returns its final
    status and the exit code `eva submit --follow` ends with: 0 when it succeeded, else the job
    driver's own non-zero exit code (eva's 2 for bad input), or 1. A failed job's last TAIL_LINES log
    lines and Ray's message go to `out` once more. KeyboardInterrupt propagates: the job keeps running."""
    import asyncio

    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            out(lines.rstrip("\n"))

    try:
        asyncio.run(tail())
    except (ConnectionError, RuntimeError, OSError) as e:  # Ray also raises when a finished job's stream closes
        if not client.get_job_status(job_id).is_terminal():
            out(f"(log stream ended: {e}; waiting for the job to finish)")
    while not (status := client.get_job_status(job_id)).is_terminal():
        time.sleep(poll_s)
    if status == JobStatus.SUCCEEDED:
        return status.value, 0
    info = client.get_job_info(job_id)
    tail_lines = client.get_job_logs(job_id).rstrip("\n").splitlines()[-TAIL_LINES:]
    out(f"--- job {job_id} {status.value}; its last {len(tail_lines)} log lines:")
    for line in tail_lines:
        out(line)
    if info.message:  # its first line: Ray appends the same last log lines to it
        out(f"--- {info.message.splitlines()[0]}")
    code = getattr(info, "driver_exit_code", None)
    return status.value, code if isinstance(code, int) and code > 0 else 1


def list_jobs(address: str) -> list[dict]:
    """The cluster's jobs, newest first: id, status, entrypoint, start time."""
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(address).list_jobs()
    rows = [
        {
            "id": j.submission_id or j.job_id or "",
            "status": j.status.value,
            "entrypoint": j.entrypoint,
            "start": j.start_time or 0,
        }
        for j in jobs
    ]
    return sorted(rows, key=lambda r: -r["start"])


def stop_job(address: str, job_id: str) -> bool:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address).stop_job(job_id)
