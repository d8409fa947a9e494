"""A ``SpeechServer`` in a child process, for the fuzz and soak scripts.

The child runs the server exactly as ``wavlm-stream serve`` does (same ``SpeechServer``,
loopback, a port of its own) and answers one-line commands on stdin:

* ``stats``: a JSON line with the open sessions, the worker's jobs, whether the worker
  thread is alive, the server's counters and the process's RSS;
* ``quit``: stop the server and exit.

Running the server in its own process lets the scripts tell a crash (the process is gone)
from a refused client, measure the server's RSS without the clients' memory in it, and
keep its log (tracebacks of unhandled exceptions) in a file to count.

The model is the tiny random-weight CTC model below (default: it makes the scripts run in
minutes) or the bundled model (``model/default``) or any checkpoint directory;
:func:`build_pipeline` builds the same pipeline in the parent process, so a script can
compare what a client got over the server with the same audio run alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: Character vocabulary of the tiny model (Wav2Vec2CTCTokenizer layout).
TINY_VOCAB = ("<pad>", "<s>", "</s>", "<unk>", "|", "'") + tuple(chr(c) for c in range(ord("a"), ord("z") + 1))


@dataclass(frozen=True)
class PipelineSpec:
    """Which model and stream settings; identical in the server child and the parent."""
    model: str = "tiny"            # "tiny" (random weights, written to a temp dir), "bundled", or a directory
    beam: bool | None = None       # None: beam search for trained models, greedy for the random one
    speakers: bool | None = None   # None: on when the model has a speaker head
    chunk_ms: float = 640.0
    left_ms: float = 2000.0
    right_ms: float = 320.0
    seed: int = 0


def tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A small random-weight WavLM CTC checkpoint (hidden 64, 2 layers, 7 conv layers of 32
    channels: the real 320-sample frame stride), written with our own ``save_model``.
    Every parameter is perturbed so that none sits at a trivial init value."""
    import torch

    from model import WavLMConfig, build_model, save_model

    if (directory / "model.safetensors").exists():
        return directory
    config = WavLMConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                         conv_dim=(32,) * 7, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_buckets=32,
                         max_bucket_distance=64, vocab_size=len(TINY_VOCAB), pad_token_id=0,
                         architectures=("WavLMForCTC",))
    torch.manual_seed(seed)
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return save_model(model, directory, TINY_VOCAB)


def resolve_model(spec: PipelineSpec, workdir: Path) -> Path:
    from stream.pipeline import DEFAULT_MODEL

    if spec.model == "tiny":
        return tiny_checkpoint(workdir / f"tiny-{spec.seed}", spec.seed)
    if spec.model == "bundled":
        if not (DEFAULT_MODEL / "config.json").exists():
            raise SystemExit(f"the bundled model is not there yet ({DEFAULT_MODEL}); use --model tiny")
        return DEFAULT_MODEL
    return Path(spec.model)


def build_pipeline(spec: PipelineSpec, workdir: Path):
    from stream.pipeline import Pipeline

    trained = spec.model != "tiny"
    beam = trained if spec.beam is None else spec.beam
    speakers = trained if spec.speakers is None else spec.speakers
    return Pipeline.from_pretrained(resolve_model(spec, workdir), beam=beam, speakers=speakers,
                                    chunk_ms=spec.chunk_ms, left_ms=spec.left_ms, right_ms=spec.right_ms)


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process in MiB (Linux /proc)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


# -- the child ------------------------------------------------------------------------


def _child(options: dict) -> None:
    import logging

    import torch

    from stream.server import ServerConfig, ServerLimits, SpeechServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(options["threads"])
    spec = PipelineSpec(**options["spec"])
    pipeline = build_pipeline(spec, Path(options["workdir"]))
    config = ServerConfig(port=0, limits=ServerLimits(**options["limits"]))

    async def main():
        server = SpeechServer(pipeline, config)
        async with server:
            print(json.dumps({"port": server.port, "pid": os.getpid()}), flush=True)
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            while line := await reader.readline():
                command = line.decode().strip()
                if command == "quit":
                    break
                if command == "trim":
                    # Give free heap memory back to the OS (glibc): what RSS is left is in use.
                    import ctypes
                    import gc
                    gc.collect()
                    ctypes.CDLL("libc.so.6").malloc_trim(0)
                    print(json.dumps({"rss_mb": round(rss_mb(), 1)}), flush=True)
                elif command == "objects":
                    # Live objects by type after a full collection (to find what accumulates).
                    import gc
                    from collections import Counter
                    gc.collect()
                    counts = Counter(type(o).__qualname__ for o in gc.get_objects())
                    print(json.dumps(dict(counts.most_common(40))), flush=True)
                elif command == "sessions":
                    print(json.dumps([_describe(server, x) for x in list(server.sessions.values())]), flush=True)
                elif command == "stats":
                    print(json.dumps({
                        "sessions": len(server.sessions), "jobs": server.worker.job_count,
                        "worker_alive": server.worker._thread.is_alive(), "counters": dict(server.stats),
                        "rss_mb": round(rss_mb(), 1), "threads": threading.active_count(),
                    }), flush=True)

    asyncio.run(main())


def _describe(server, session) -> dict:
    """What an open session is doing (for diagnosing sessions that do not go away)."""
    worker = server.worker
    with worker._cv:
        job = worker._jobs.get(session.id)
        job_state = None if job is None else {
            "inbox": [type(item).__name__ for item in list(job.inbox)[:5]], "inbox_len": len(job.inbox),
            "flushing": job.flushing, "done": job.done, "closed": job.closed, "has_stream": job.stream is not None}
    fields = ("id", "path", "dialect", "opened", "audio_s", "backlog_s", "dead", "close_after_send")
    out = {k: getattr(session, k, None) for k in fields}
    out.update(start=repr(getattr(session, "start", None)), finished=session.finished.is_set(),
               backlog_ok=session.backlog_ok.is_set(), outbox=len(session.outbox),
               ws_state=str(getattr(session.ws, "state", None)), job=job_state)
    return out


# -- the parent's handle ----------------------------------------------------------------


@dataclass
class ServerProcess:
    """``with ServerProcess(spec, limits) as server:`` then ``server.port``, ``server.stats()``."""
    spec: PipelineSpec = field(default_factory=PipelineSpec)
    limits: dict = field(default_factory=dict)     # ServerLimits fields
    threads: int = 1
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="wavlm-bench-")))
    log_path: Path | None = None

    def __enter__(self) -> "ServerProcess":
        if self.log_path is None:
            self.log_path = self.workdir / "server.log"
        self._log = open(self.log_path, "w")
        options = {"spec": asdict(self.spec), "limits": self.limits, "threads": self.threads,
                   "workdir": str(self.workdir)}
        self.proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(options)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the server process failed to start; see {self.log_path}:\n"
                               + self.log_path.read_text()[-3000:])
        hello = json.loads(line)
        self.port, self.pid = hello["port"], hello["pid"]
        self._lock = threading.Lock()
        return self

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stats(self) -> dict | None:
        """The child's stats, or None when it is gone."""
        with self._lock:
            if not self.alive():
                return None
            try:
                self.proc.stdin.write("stats\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except (BrokenPipeError, OSError):
                return None
            return json.loads(line) if line else None

    def trimmed_rss_mb(self) -> float | None:
        """RSS after gc and glibc's malloc_trim(0): memory still held, not just kept by the allocator."""
        answer = self._ask("trim")
        return None if answer is None else answer["rss_mb"]

    def objects(self) -> dict | None:
        """The 40 most common live object types in the server (after gc), or None."""
        return self._ask("objects")

    def sessions(self) -> list | None:
        """A description of every open session (see _describe), or None when the child is gone."""
        return self._ask("sessions")

    def _ask(self, command: str):
        with self._lock:
            if not self.alive():
                return None
            try:
                self.proc.stdin.write(command + "\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except (BrokenPipeError, OSError):
                return None
            return json.loads(line) if line else None

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def wait_settled(self, timeout: float = 30.0) -> dict | None:
        """Poll until no session or job is left (or timeout); the last stats."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            if s is None or (s["sessions"] == 0 and s["jobs"] == 0) or time.monotonic() > deadline:
                return s
            time.sleep(0.1)

    def log_counts(self) -> dict:
        """Unhandled exceptions the server logged (tracebacks), and what they were."""
        text = self.log_path.read_text(errors="replace") if self.log_path else ""
        kinds: dict[str, int] = {}
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("Traceback"):
                j = i + 1
                while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                    j += 1
                last = lines[j] if j < len(lines) else "?"
                kinds[last[:160]] = kinds.get(last[:160], 0) + 1
        return {"tracebacks": text.count("Traceback (most recent call last)"),
                "handler_failed": text.count("connection handler failed"), "kinds": kinds}

    def __exit__(self, *exc) -> None:
        if self.alive():
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", required=True, help="JSON options (internal)")
    _child(json.loads(parser.parse_args().child))
