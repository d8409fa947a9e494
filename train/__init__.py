"""The recipe behind the bundled model (train/README.md)."""

from pathlib import Path

#: Where the recipe keeps what it generates (speech, meetings, checkpoints, runs): outside the
#: work tree, so a later session on the same machine finds it and git never sees it.
CACHE = Path.home() / ".cache" / "wavlm-stream"
