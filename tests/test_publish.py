"""Publishing an export: a version is checked while staged and only then renamed in, so a polling server never
loads an unchecked, failed or half-written version; what a killed export leaves is never served and is cleaned up
by the next export."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tfrec_zoo._tf import tf
from tfrec_zoo.serving.export import export_model, versions
from tfrec_zoo.serving.registry import ModelRegistry, discover_models

TIMEOUT = 60


class Tiny(tf.Module):
    """The least a ServingModule offers the exporter: signatures()."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def double(self, x):
        return {"y": 2.0 * x}

    def signatures(self) -> dict:
        return {"serving_default": self.double}


def served(base: Path) -> dict[str, list[int]]:
    registry = ModelRegistry(base, enable_warmup=False)
    registry.poll()
    return registry.models()


def test_a_version_is_visible_only_after_its_check_passes(tmp_path):
    seen_during_check = []

    def check(path: Path) -> None:
        assert (path / "saved_model.pb").is_file()
        assert ".tmp-" in str(path.relative_to(tmp_path))
        seen_during_check.append(served(tmp_path))

    version = export_model(None, None, tmp_path, "m", module=Tiny(), check=check)
    assert seen_during_check == [{}]                          # the staged version was not served
    assert version == tmp_path / "m" / "1" and served(tmp_path) == {"m": [1]}
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]     # no staging left behind
    assert 'name: "m"' in (tmp_path / "models.config").read_text()


def test_a_failed_check_publishes_nothing(tmp_path):
    export_model(None, None, tmp_path, "m", module=Tiny())

    def check(path: Path) -> None:
        raise RuntimeError("parity failed")

    with pytest.raises(RuntimeError, match="parity failed"):
        export_model(None, None, tmp_path, "m", module=Tiny(), check=check)
    assert versions(tmp_path / "m") == [1] and served(tmp_path) == {"m": [1]}
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_a_killed_export_is_never_served_and_the_next_export_cleans_up(tmp_path):
    """SIGKILL during the check: the staged version stays hidden; the next export removes its directory."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_publish import Tiny
        from tfrec_zoo.serving.export import export_model
        def check(path):
            print("checking", flush=True)
            time.sleep(600)
        export_model(None, None, {str(tmp_path)!r}, "m", module=Tiny(), check=check)
    """)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()                           # blocks until the check runs (or the process ends)
        assert line.strip() == "checking", (line, proc.poll())
        proc.send_signal(signal.SIGKILL)
        proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    stale = [p for p in (tmp_path / "m").iterdir()]
    assert len(stale) == 1 and stale[0].name.startswith(".tmp-1-") and (stale[0] / "model" / "saved_model.pb").exists()
    assert served(tmp_path) == {}                             # a staged SavedModel is not a version
    export_model(None, None, tmp_path, "m", module=Tiny())
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"] and served(tmp_path) == {"m": [1]}


def test_temporary_model_directories_are_not_models(tmp_path):
    export_model(None, None, tmp_path, "m", module=Tiny())
    os.rename(tmp_path / "m", tmp_path / "ml.tmp-4242")        # e.g. a build's or a copy's work in progress
    export_model(None, None, tmp_path, "m", module=Tiny())
    assert [c.name for c in discover_models(tmp_path)] == ["m"]
    with pytest.raises(ValueError, match="model name"):
        export_model(None, None, tmp_path, "x.tmp-1", module=Tiny())


def test_an_export_in_progress_is_not_cleaned_by_another(tmp_path):
    """A staging directory of a live exporter (this process) survives another export of the same model."""
    live = tmp_path / "m" / f".tmp-9-{os.getpid()}"
    live.mkdir(parents=True)
    export_model(None, None, tmp_path, "m", module=Tiny())
    assert live.is_dir()
