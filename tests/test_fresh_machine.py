"""A machine where nothing was set up before: an empty home, no cache, no earlier run.

Every test here runs the real ``wordybird`` program in a subprocess whose ``HOME`` is a new
empty folder and whose environment names no cache (``XDG_CACHE_HOME`` and
``WORDYBIRD_CACHE`` removed, or pointed at folders that do not exist yet), as a new user's
first run would be.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_bad_inputs import assert_one_error_line, read_only_runner
from test_training_cli import TINY, write_corpus
from wordybird.training.cache import CACHE_VARIABLE

WORDYBIRD = str(Path(sys.executable).with_name("wordybird"))
README = Path(__file__).parents[1] / "README.md"


def fresh_env(home: Path, **variables: str) -> dict[str, str]:
    """The environment of a user whose home is ``home`` (created empty) and who has never
    run wordybird; ``variables`` are set on top."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", CACHE_VARIABLE)}
    return {**env, "HOME": str(home), **variables}


def wordybird(*args: str | Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [WORDYBIRD, *map(str, args)], capture_output=True, text=True, timeout=600, env=env, cwd=cwd
    )


def readme_first_command() -> list[str]:
    """The ``wordybird …`` part of the README's first command (after the install)."""
    first = re.search(r"```bash\n(.*?)\n```", README.read_text(), re.S)
    assert first is not None, "the README starts with no command"
    command = first.group(1).split("&&")[-1].split()
    assert command[0] == "wordybird", first.group(1)
    return command[1:]


def test_the_readmes_first_command_on_an_empty_home(tmp_path: Path) -> None:
    """The README's first command (`wordybird train`, on the embedded default corpus, two
    steps here) works with nothing in the home folder; then every reader takes the run
    folder it printed."""
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    env = fresh_env(home)
    command = readme_first_command()
    assert command == ["train"], command  # the defaults: WB1 into runs/wb1
    done = wordybird(*command, "--steps", "2", "--batch-size", "4", env=env, cwd=work)
    assert done.returncode == 0, done.stderr
    assert "Training complete: steps 1-2" in done.stdout
    cache = home / ".cache" / "wordybird"
    assert len(list((cache / "corpus").glob("stdlib-docs-*.txt"))) == 1
    assert len(list((cache / "tokens").glob("*.npy"))) == 1
    assert sorted(p.name for p in (cache / "gpt2-tokenizer").iterdir()) == [
        "merges.txt",
        "vocab.json",
    ]

    run = work / "runs" / "wb1"
    inspected = wordybird("inspect", "runs/wb1", "--json", env=env, cwd=work)
    assert inspected.returncode == 0, inspected.stderr
    report = json.loads(inspected.stdout)
    assert Path(report["path"]) == Path("runs/wb1/recording.zarr")
    assert report["steps"]["count"] == 3
    checked = wordybird("check", "runs/wb1", env=env, cwd=work)
    assert checked.returncode == 0 and "ok, 3 committed step(s)" in checked.stdout, checked
    exported = wordybird("export", "runs/wb1", "wb1.safetensors", "-q", env=env, cwd=work)
    assert exported.returncode == 0, exported.stderr
    analyzed = wordybird("analyze", "runs/wb1", env=env, cwd=work)
    assert analyzed.returncode == 0, analyzed.stderr
    assert (run / "analysis" / "analysis.json").is_file()  # beside the recording, as before


def test_two_first_runs_at_once_share_an_empty_cache(tmp_path: Path) -> None:
    """Two processes that both find the cache missing both build it and succeed."""
    corpus = write_corpus(tmp_path / "toy.txt")
    cache = tmp_path / "not" / "yet" / "cache"
    env = fresh_env(tmp_path / "home", **{CACHE_VARIABLE: str(cache)})
    runs = [
        subprocess.Popen(
            [WORDYBIRD, "masks", "--corpus", str(corpus), "--out", f"m{i}.safetensors"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    assert (tmp_path / "m0.safetensors").read_bytes() == (tmp_path / "m1.safetensors").read_bytes()
    assert len(list((cache / "tokens").glob("*.npy"))) == 1
    assert not list((cache / "tokens").glob(".*.tmp"))  # no temporary left behind


def test_xdg_cache_home_that_does_not_exist_yet(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "toy.txt")
    xdg = tmp_path / "xdg" / "cache"
    env = fresh_env(tmp_path / "home", XDG_CACHE_HOME=str(xdg))
    done = wordybird("masks", "--corpus", corpus, "--out", "m.safetensors", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(list((xdg / "wordybird" / "tokens").glob("*.npy"))) == 1
    assert not (tmp_path / "home" / ".cache").exists()


def test_a_cache_that_cannot_be_written_is_one_clear_error(tmp_path: Path) -> None:
    """A file where the cache folder should be: one error naming the folder and the way
    out, and the run writes nothing."""
    corpus = write_corpus(tmp_path / "toy.txt")
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("not a folder\n")
    env = fresh_env(tmp_path / "home", **{CACHE_VARIABLE: str(blocker)})
    args = ("train", "--corpus", corpus, "--steps", "1", "--batch-size", "2", *TINY)
    done = wordybird(*args, "--out", "run", env=env, cwd=tmp_path)
    assert_one_error_line(done, f"cannot write wordybird's cache in {blocker}")
    assert f"set {CACHE_VARIABLE} to a folder you can write" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_read_only_cache_is_one_clear_error(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "toy.txt")
    cache = tmp_path / "ro-cache"
    cache.mkdir()
    prefix = read_only_runner(cache)
    env = fresh_env(tmp_path / "home", **{CACHE_VARIABLE: str(cache)})
    try:
        done = subprocess.run(
            [*prefix, WORDYBIRD, "masks", "--corpus", str(corpus), "--out", "m.safetensors"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
    finally:
        cache.chmod(0o755)
    assert_one_error_line(done, f"cannot write wordybird's cache in {cache}")
    assert "Read-only file system" in done.stderr or "Permission denied" in done.stderr
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("command", ["analyze", "inspect", "check", "export"])
def test_an_empty_folder_names_what_to_give(tmp_path: Path, command: str) -> None:
    (tmp_path / "empty").mkdir()
    args = [command, "empty", *(["x.safetensors"] if command == "export" else [])]
    done = wordybird(*args, env=fresh_env(tmp_path / "home"), cwd=tmp_path)
    assert_one_error_line(
        done, "empty is not a wordybird recording (no zarr.json), nor a run folder holding one"
    )


#: Run Python with torch missing, as in a base install (``pip install wordybird``).
WITHOUT_TORCH = "import sys; sys.modules['torch'] = None; "


def without_torch(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH + code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_without_torch_reading_works_and_recording_names_its_extra(tmp_path: Path) -> None:
    """With torch missing, a recording opens, inspects, checks and exports; recording is
    one error naming the extra, in Python and on the command line."""
    from test_export import make_recording

    make_recording(tmp_path / "rec.zarr")
    reads = without_torch(
        "import wordybird\n"
        "from wordybird.inspection import inspect_recording\n"
        "from wordybird.recorder.check import check_recording\n"
        "rec = wordybird.open('rec.zarr')\n"
        "rec['embeddings'].numpy(-1)\n"
        "inspect_recording('rec.zarr')\n"
        "assert not check_recording('rec.zarr')['damaged']\n"
        "wordybird.export('rec.zarr', 'x.safetensors')\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n",
        tmp_path,
    )
    assert reads.returncode == 0, reads.stderr
    for name in ("StreamingRecorder", "watch", "RecorderCallback"):
        refused = without_torch(
            "import wordybird\n"
            "try:\n"
            f"    wordybird.{name}\n"
            "except ModuleNotFoundError as exc:\n"
            "    assert isinstance(exc, wordybird.WordybirdError), type(exc)\n"
            "    print(exc)\n",
            tmp_path,
        )
        assert refused.returncode == 0, refused.stderr
        extra = "train" if name == "RecorderCallback" else "record"
        assert refused.stdout.strip() == (
            f"wordybird.{name} needs torch, which is not installed: "
            f"pip install 'wordybird[{extra}]'"
        )
    cli = without_torch("from wordybird.cli import main; main(['train', '--out', 'run'])", tmp_path)
    assert_one_error_line(
        cli, "wordybird train needs torch, which is not installed: pip install 'wordybird[train]'"
    )
