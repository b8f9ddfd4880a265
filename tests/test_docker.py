"""Dockerfile, docker_build.sh, docker_run.sh. Docker cannot run here: the Dockerfile is
read as text and the scripts run against a stand-in `docker` that records its arguments."""
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def instructions(path):
    """(INSTRUCTION, arguments) per Dockerfile line, with continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_every_copy_source_exists_and_is_not_dockerignored():
    ignored = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and l[0] != "#"]
    copies = [rest for word, rest in instructions(ROOT / "Dockerfile") if word == "COPY"]
    assert copies
    for rest in copies:
        args = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        args = [a for a in args if not a.startswith("--")]
        for source in args[:-1]:
            assert list(ROOT.glob(source.rstrip("/"))), f"COPY {source}: not in the repository"
            top = Path(source).parts[0]
            assert top not in ignored, f"COPY {source}: excluded by .dockerignore"
    assert {"data", "log", ".venv"} <= set(ignored)  # datasets and runs never go to the build context


def test_the_image_holds_every_file_the_tests_and_benchmarks_read():
    """The suite runs inside the image too (bench/gpu_check.sh): every top-level path a test or benchmark
    names as `ROOT / "..."` is copied in, or is one of the folders docker_run.sh mounts."""
    copied = set()
    for word, rest in instructions(ROOT / "Dockerfile"):
        if word == "COPY":
            copied |= {Path(source).parts[0] for source in shlex.split(rest)[:-1]}
    named = set()
    for path in [*(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py")]:
        named |= {Path(m).parts[0] for m in re.findall(r'ROOT / "(\w[\w./-]*)"', path.read_text())}
    named |= {Path(s).parts[0] for s in ("docker_build.sh", "docker_run.sh", "bench/gpu_check.sh")}
    assert {"code", "docs", "README.md", "pyproject.toml"} <= named  # the scan finds what it should
    assert not named - copied - {"data", "log"}, sorted(named - copied - {"data", "log"})


def test_image_installs_exactly_the_pinned_requirements():
    steps = instructions(ROOT / "Dockerfile")
    assert steps[0][0] == "FROM" and re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", steps[0][1])  # a pinned tag
    installs = [rest for word, rest in steps if word == "RUN" and "pip install" in rest]
    assert installs == ["pip install -r requirements.txt"]
    copy_index = steps.index(("COPY", "requirements.txt ."))
    assert copy_index < steps.index(("RUN", installs[0]))
    lines = [l.split("#")[0].strip() for l in (ROOT / "requirements.txt").read_text().splitlines()]
    requirements = [l for l in lines if l]
    assert requirements and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.+]*", r) for r in requirements), \
        [r for r in requirements if "==" not in r]
    assert any(r.startswith("torch==") for r in requirements)


@pytest.mark.parametrize("script", ["docker_build.sh", "docker_run.sh", "bench/gpu_check.sh"])
def test_scripts_parse_and_are_executable(script):
    path = ROOT / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert os.access(path, os.X_OK)


@pytest.fixture
def fake_docker(tmp_path):
    """A `docker` on PATH that writes its working directory and arguments (one per line) to a file."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record.txt"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f'#!/usr/bin/env bash\npwd > "{record}"\nprintf "%s\\n" "$@" >> "{record}"\n')
    (bin_dir / "docker").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("IMAGE", None)
    env.pop("ROOT", None)

    def run(script, *args, **extra_env):
        done = subprocess.run(["bash", str(ROOT / script), *args], env=dict(env, **extra_env), cwd=tmp_path,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        cwd, *argv = record.read_text().splitlines()
        return cwd, argv

    return run


def test_build_runs_from_the_repository_root(fake_docker):
    cwd, argv = fake_docker("docker_build.sh")
    assert cwd == str(ROOT) and argv == ["build", "-t", "uniformface", "."]
    assert fake_docker("docker_build.sh", "mytag")[1] == ["build", "-t", "mytag", "."]


def test_run_mounts_data_and_log_with_all_gpus_and_host_ipc(fake_docker):
    command = ["python", "code/train.py", "--set", "dataset.train=a folder/with spaces"]
    _, argv = fake_docker("docker_run.sh", *command)
    assert argv[0] == "run"
    image = argv.index("uniformface")
    assert argv[image + 1:] == command  # the command passes through verbatim, spaces and all
    options = argv[1:image]
    assert options[options.index("--gpus") + 1] == "all" and "--ipc=host" in options
    mounts = [options[i + 1] for i, o in enumerate(options) if o == "-v"]
    assert sorted(mounts) == [f"{ROOT}/data:/workspace/data", f"{ROOT}/log:/workspace/log"]
    assert options[options.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert "-it" not in options  # no terminal here


def test_run_defaults_to_a_shell_and_honours_image_and_root(fake_docker):
    _, argv = fake_docker("docker_run.sh", IMAGE="other:1", ROOT="1")
    assert argv[-2:] == ["other:1", "bash"] and "--user" not in argv


def test_dockerfile_workdir_matches_the_mounts():
    steps = dict((w, r) for w, r in instructions(ROOT / "Dockerfile") if w in ("WORKDIR",))
    assert steps["WORKDIR"] == "/workspace"
