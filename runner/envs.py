"""Model environments: is the running interpreter enough, and if not, the model's own, built once.

A model's environment is built from its ``requirements.txt`` (exact pins) and ``python_env.yaml``
(Python version) with uv (``uv venv`` + ``uv pip install --compile-bytecode``), or with the standard
library's venv and pip when uv is absent or ``--env-manager virtualenv`` is asked for. It lives in
``envs/<key>/`` under the cache folder (``$CELLZOO_ENVS_DIR`` overrides), where ``key`` is the hash of
the requirements and the Python version, so models with the same requirements share one environment
and a second run reuses it. A marker file written last says the environment is complete.

uv does not read pip's configuration: the wheel locations pip is configured with (``find-links``,
such as the CPU build of torch on these machines) are handed to uv as ``UV_FIND_LINKS``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runner.cache import cache_dir
from runner.errors import ModelError, UsageError

logger = logging.getLogger(__name__)

ENV_MANAGERS = ("auto", "local", "uv", "virtualenv")
ENVS_ENV = "CELLZOO_ENVS_DIR"
COMPLETE = "cellzoo-env.json"  # written last: the environment is complete; what it was built from
PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)\s*$")
BUILD_TIMEOUT = 3600
# distributions that install the same importable package as a model's pin names: xgboost-cpu is xgboost's
# CPU-only build (cellzoo[xgboost] on Linux and Windows), without NCCL
SAME_PACKAGE = {"xgboost": ("xgboost", "xgboost-cpu")}


@dataclass(frozen=True)
class EnvSpec:
    """What a model needs: its pinned requirements and its Python version (major.minor)."""

    requirements: tuple[str, ...]
    python: str

    @property
    def key(self) -> str:
        text = "\n".join(sorted(r.strip() for r in self.requirements)) + f"\npython=={self.python}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_env_spec(model_dir: Path) -> EnvSpec:
    """The requirements and Python version an MLflow model directory declares."""
    import yaml

    requirements_file = model_dir / "requirements.txt"
    if not requirements_file.is_file():
        raise ModelError(f"model {model_dir} has no requirements.txt; it cannot be given its own environment")
    lines = [line.strip() for line in requirements_file.read_text().splitlines()]
    requirements = tuple(line for line in lines if line and not line.startswith("#"))
    python = ".".join(map(str, sys.version_info[:2]))
    env_file = model_dir / "python_env.yaml"
    if env_file.is_file():
        declared = str((yaml.safe_load(env_file.read_text()) or {}).get("python", python))
        python = ".".join(declared.split(".")[:2])
    return EnvSpec(requirements, python)


def local_mismatches(spec: EnvSpec) -> list[str]:
    """How the running interpreter differs from the model's pins ('' list: it satisfies them)."""
    here = ".".join(map(str, sys.version_info[:2]))
    problems = [] if spec.python == here else [f"python {here} (model: {spec.python})"]
    for requirement in spec.requirements:
        pin = PIN.match(requirement)
        if not pin:
            problems.append(f"{requirement} (not an exact pin)")
            continue
        name, wanted = pin.groups()
        installed = installed_version(name)
        if installed is None:
            problems.append(f"{name} not installed (model: {wanted})")
            continue
        if installed.split("+")[0] != wanted.split("+")[0]:
            problems.append(f"{name} {installed} (model: {wanted})")
    return problems


def installed_version(name: str) -> str | None:
    """The version of distribution ``name`` in this interpreter, or of a build of the same package
    (``SAME_PACKAGE``); None when none is installed."""
    for candidate in SAME_PACKAGE.get(name.lower(), (name,)):
        try:
            return importlib.metadata.version(candidate)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def choose_manager(requested: str, spec: EnvSpec) -> str:
    """``local``, ``uv`` or ``virtualenv`` for ``requested`` (``auto``: local when the pins are met)."""
    if requested not in ENV_MANAGERS:
        raise UsageError(f"--env-manager {requested!r} is not one of {', '.join(ENV_MANAGERS)}")
    if requested not in ("auto", "local"):
        return requested
    mismatches = local_mismatches(spec)
    if requested == "local":
        if mismatches:
            logger.warning(
                "--env-manager local: this interpreter does not meet the model's pins (%s); results may differ "
                "from the model's own environment",
                "; ".join(mismatches[:5]),
            )
        return "local"
    if not mismatches:
        return "local"
    logger.info("the running interpreter does not match the model's pins: %s", "; ".join(mismatches[:5]))
    return "uv" if uv_executable() else "virtualenv"


def envs_dir() -> Path:
    return Path(os.environ.get(ENVS_ENV) or cache_dir() / "envs").expanduser()


def uv_executable() -> str | None:
    """uv beside the running interpreter (installed with cellzoo), else on PATH."""
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.is_file() else shutil.which("uv")


def env_python(env: Path) -> Path:
    return env / "bin" / "python"


def ensure_env(spec: EnvSpec, manager: str) -> tuple[Path, dict]:
    """The Python of the model's environment, built now if it does not exist, and its record.

    The record (``cellzoo-env.json``) holds the requirements, Python version, manager, build seconds
    and whether this call built it (``reused``).
    """
    from filelock import FileLock

    env = envs_dir() / spec.key
    env.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(env.parent / f"{spec.key}.lock")):
        if (env / COMPLETE).is_file():
            record = json.loads((env / COMPLETE).read_text())
            logger.info("environment %s reused (built with %s in %s s)", spec.key, record["manager"], record["seconds"])
            return env_python(env), {**record, "reused": True}
        if env.exists():  # an interrupted build: never trust it
            shutil.rmtree(env)
        logger.info(
            "building environment %s with %s (%d requirements, python %s)...",
            spec.key,
            manager,
            len(spec.requirements),
            spec.python,
        )
        start = time.perf_counter()
        try:
            _build(env, spec, manager)
        except BaseException:
            shutil.rmtree(env, ignore_errors=True)
            raise
        record = {
            "key": spec.key,
            "manager": manager,
            "python": spec.python,
            "requirements": list(spec.requirements),
            "seconds": round(time.perf_counter() - start, 1),
            "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (env / COMPLETE).write_text(json.dumps(record, indent=1))
        logger.info("environment %s built in %s s", spec.key, record["seconds"])
    return env_python(env), {**record, "reused": False}


def _build(env: Path, spec: EnvSpec, manager: str) -> None:
    requirements = env.parent / f"{spec.key}.requirements.txt"
    requirements.write_text("\n".join(spec.requirements) + "\n")
    try:
        if manager == "uv":
            uv = uv_executable()
            if uv is None:
                raise UsageError(
                    "--env-manager uv: uv is not installed (pip install uv), or use --env-manager virtualenv"
                )
            _run([uv, "venv", "--quiet", "--python", spec.python, str(env)], {})
            _run(
                [
                    uv,
                    "pip",
                    "install",
                    "--quiet",
                    "--compile-bytecode",
                    "--python",
                    str(env_python(env)),
                    "-r",
                    str(requirements),
                ],
                _uv_settings(),
            )
        else:
            _run([_base_python(spec.python), "-m", "venv", str(env)], {})
            _run([str(env_python(env)), "-m", "pip", "install", "--quiet", "-r", str(requirements)], {})
    finally:
        requirements.unlink(missing_ok=True)


def _base_python(version: str) -> str:
    """An interpreter of ``version`` (major.minor) for the standard library's venv."""
    if version == ".".join(map(str, sys.version_info[:2])):
        return sys.executable
    found = shutil.which(f"python{version}")
    if found is None:
        raise ModelError(f"the model needs Python {version}, which is not on PATH; install it or use --env-manager uv")
    return found


def _uv_settings() -> dict[str, str]:
    """pip's find-links (and extra index) for uv, which ignores pip's configuration."""
    settings = {}
    links = os.environ.get("PIP_FIND_LINKS") or _pip_config("global.find-links")
    if links and "UV_FIND_LINKS" not in os.environ:
        settings["UV_FIND_LINKS"] = ",".join(links.split())
    return settings


def _pip_config(name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", name], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def _run(command: list[str], extra_env: dict[str, str]) -> None:
    logger.debug("running %s", " ".join(command))
    try:
        done = subprocess.run(
            command,
            env={**os.environ, **extra_env},
            capture_output=True,
            text=True,
            check=False,
            timeout=BUILD_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ModelError(f"could not build the model's environment ({command[0]}): {err}") from err
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise ModelError(f"building the model's environment failed ({' '.join(command[:3])} ...):\n{tail}")


def list_envs() -> list[dict]:
    """The complete environments in the envs folder, with their records and sizes."""
    rows = []
    root = envs_dir()
    for env in sorted(root.iterdir()) if root.is_dir() else []:
        if (env / COMPLETE).is_file():
            record = json.loads((env / COMPLETE).read_text())
            size = sum(p.stat().st_size for p in env.rglob("*") if p.is_file() and not p.is_symlink())
            rows.append({**record, "path": str(env), "size_mb": round(size / 1e6)})
    return rows


def clean_envs(key: str | None = None) -> list[str]:
    """Remove every environment (or the one with ``key``); returns the keys removed."""
    root = envs_dir()
    removed = []
    for env in sorted(root.iterdir()) if root.is_dir() else []:
        if env.is_dir() and (key is None or env.name == key):
            shutil.rmtree(env)
            removed.append(env.name)
    if key is not None and not removed:
        raise UsageError(f"no environment {key!r} in {root}; `cellzoo envs list` shows them")
    return removed
