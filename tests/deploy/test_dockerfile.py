"""Static checks of the Dockerfile and .dockerignore (no Docker engine here: the image is never
built by these tests)."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_support import DEFAULT, REPO, Mode, Rendered, parse_cli, pod_spec, workload_role

from orbilnot.cli import DEFAULT_PORTS

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Instruction:
    keyword: str
    arguments: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (no heredocs used)."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    instructions = []
    stage = -1
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, arguments.strip(), stage))
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def stage_of(instructions: list[Instruction], stage: int) -> list[Instruction]:
    return [i for i in instructions if i.stage == stage]


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    return stage_of(instructions, max(i.stage for i in instructions))


def exec_form(instruction: Instruction) -> list[str]:
    try:
        value = json.loads(instruction.arguments)
    except json.JSONDecodeError:
        pytest.fail(f"{instruction.keyword} must use the exec (JSON) form: {instruction.arguments}")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def base_images(instructions: list[Instruction]) -> list[str]:
    """FROM images with the global ARG defaults substituted."""
    args = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and instruction.stage == -1 and "=" in instruction.arguments:
            name, _, default = instruction.arguments.partition("=")
            args[name] = default.strip("\"'")
    images = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            image = instruction.arguments.split()[0]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
            images.append(image)
    return images


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", instruction.arguments):
                env[name] = value
    return env


# ------------------------------------------------------------------------------------- image


def test_multi_stage_on_slim_python_311(instructions: list[Instruction]) -> None:
    images = base_images(instructions)
    assert len(images) >= 2, "a build stage and a runtime stage"
    for image in images:
        assert re.fullmatch(r"(docker\.io/(library/)?)?python:3\.11(\.\d+)?-slim(-\w+)?", image), image
    # The virtualenv is copied from the build stage: both must have the same interpreter.
    assert len(set(images)) == 1, images


def test_entrypoint_is_the_orbilnot_console_script(instructions: list[Instruction]) -> None:
    entrypoints = [i for i in final_stage(instructions) if i.keyword == "ENTRYPOINT"]
    assert entrypoints, "the runtime stage needs an ENTRYPOINT"
    entrypoint = exec_form(entrypoints[-1])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["orbilnot"], entrypoint
    assert "orbilnot" in scripts, "the ENTRYPOINT must be a console script the package installs"


def test_default_command_is_accepted_by_the_cli(instructions: list[Instruction]) -> None:
    cmds = [i for i in final_stage(instructions) if i.keyword == "CMD"]
    assert cmds, "the runtime stage needs a default CMD"
    args = parse_cli(exec_form(cmds[-1]))
    if args.command == "serve":
        assert args.host == "0.0.0.0", "inside a container the service must listen on all interfaces"


def test_exposes_the_default_ports(instructions: list[Instruction]) -> None:
    exposed = {
        int(port.split("/")[0])
        for i in final_stage(instructions)
        if i.keyword == "EXPOSE"
        for port in i.arguments.split()
    }
    assert set(DEFAULT_PORTS.values()) <= exposed, exposed


def test_dependencies_come_from_the_lock_and_the_package_without_deps(instructions: list[Instruction]) -> None:
    build = stage_of(instructions, 0)
    keywords = [(i.keyword, i.arguments) for i in build]
    copy_lock = next(n for n, (k, a) in enumerate(keywords) if k == "COPY" and "requirements.lock" in a)
    install_lock = next(
        n for n, (k, a) in enumerate(keywords) if k == "RUN" and "requirements.lock" in a and "pip install -r" in a
    )
    copy_src = next(n for n, (k, a) in enumerate(keywords) if k == "COPY" and a.split()[0] == "src")
    install_pkg = next(
        n for n, (k, a) in enumerate(keywords) if k == "RUN" and re.search(r"pip install --no-deps \.", a)
    )
    # Lock first (a cached layer while only the code changes), then the package.
    assert copy_lock < install_lock < copy_src < install_pkg
    assert not any(i.keyword == "RUN" and "pip install" in i.arguments for i in final_stage(instructions)), (
        "nothing is installed in the runtime stage"
    )


def test_runs_as_a_numeric_non_root_user(instructions: list[Instruction]) -> None:
    users = [i for i in final_stage(instructions) if i.keyword == "USER"]
    assert users, "the runtime stage must switch to an unprivileged user"
    uid, _, gid = users[-1].arguments.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so Kubernetes' runAsNonRoot can verify it"
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_chart_runs_the_image_as_its_user(instructions: list[Instruction], render: Callable[[Mode], Rendered]) -> None:
    uid, _, gid = [i for i in final_stage(instructions) if i.keyword == "USER"][-1].arguments.partition(":")
    home = env_of(final_stage(instructions)).get("HOME")
    for workload in render(DEFAULT).workloads():
        if workload_role(workload) in ("postgresql", "kafka"):
            continue
        security = pod_spec(workload)["securityContext"]
        name = workload["metadata"]["name"]
        assert str(security["runAsUser"]) == uid, name
        assert not gid or str(security["runAsGroup"]) == gid, name
        # With a read-only root filesystem, HOME must be a writable mount.
        for container in pod_spec(workload)["containers"]:
            if container.get("securityContext", {}).get("readOnlyRootFilesystem"):
                mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert home in mounts, f"{name}: HOME={home} is not writable"


# ------------------------------------------------------------------------------- build context


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, after Docker's rules: paths relative to the
    context, `*` and `?` within one path element, `**` across elements, last match wins."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex += pattern[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        patterns.append((negated, re.compile(regex + "$")))
    return patterns


def in_build_context(relative: str) -> bool:
    parts = Path(relative).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]  # the path and its parents
    excluded = False
    for negated, regex in dockerignore_patterns():
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return not excluded


def copied_sources(instructions: list[Instruction]) -> list[str]:
    sources = []
    for instruction in instructions:
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        words = instruction.arguments.split()
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        sources += words[:-1]
    return sources


def test_copied_files_are_in_the_build_context(instructions: list[Instruction]) -> None:
    sources = copied_sources(instructions)
    assert "requirements.lock" in sources and "src" in sources
    for source in sources:
        assert in_build_context(source), f".dockerignore excludes {source}, which the Dockerfile copies"
    # Directories are copied with their contents.
    assert in_build_context("src/orbilnot/cli.py")
    assert in_build_context("src/orbilnot/migrations/versions/0001_billing.py")


def test_copied_files_exist(instructions: list[Instruction]) -> None:
    missing = [s for s in copied_sources(instructions) if not (REPO / s).exists()]
    assert not missing, f"the image cannot be built: missing {missing}"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        ".orbilnot/bin/helm",
        "tests/conftest.py",
        "helm/values.yaml",
        "src/orbilnot/__pycache__/cli.cpython-311.pyc",
        "src/orbilnot.egg-info/PKG-INFO",
    ],
)
def test_local_state_stays_out_of_the_build_context(path: str) -> None:
    assert not in_build_context(path)


def test_dockerignore_matcher_is_not_vacuous() -> None:
    assert in_build_context("pyproject.toml")
    assert in_build_context("README.md")
