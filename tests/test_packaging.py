"""pyproject.toml: a regular (not editable) install carries everything the commands read at run
time: the bundled model and the browser demo that `serve` hands out."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "stream", "decoders", "web")


def test_the_wheel_holds_the_bundled_model_and_every_file_of_the_browser_demo(tmp_path):
    # Build from a copy of what the build reads, so the checkout gets no build/ or egg-info.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--quiet", "-w", str(tmp_path / "dist"), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("wavlm_stream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    from stream.server import CONTENT_TYPES, WEB_ROOT, resolve_static

    # Where the installed server looks for the demo: web/ beside stream/, as in the checkout.
    assert WEB_ROOT == ROOT / "web"
    demo = [p for p in WEB_ROOT.iterdir() if resolve_static(WEB_ROOT, "/" + p.name) is not None]
    assert {"index.html", "app.js"} <= {p.name for p in demo}
    assert all(p.suffix in CONTENT_TYPES for p in demo)
    assert {f"web/{p.name}" for p in demo} <= names
    for name in ("config.json", "vocab.json", "preprocessor_config.json", "model.safetensors"):
        assert f"model/default/{name}" in names
    assert "stream/server.py" in names and "decoders/beam.py" in names
