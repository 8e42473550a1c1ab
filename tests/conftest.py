"""Shared fixtures: tiny data sets written in the official file formats, and a script runner."""
import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Two test files run at once on two cores (make test: pytest -n 2), each training tiny models: one
# intra-op thread per process instead of two that fight over the cores (about 15 % faster).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# TensorFlow's plain CPU kernels instead of oneDNN's: the tests' tiny models spend their time
# starting kernels, not computing, and oneDNN's start costs more (a tiny hierarchical run: 38.7-42.1 s
# against 43.2-47.8 s, 2026-12-01). Users' runs keep oneDNN, 9 % faster at full size (docs/BENCHMARKS.md).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Feature networks the tests train go to a throw-away cache, never the user's (docs/SAMPLES.md).
os.environ["VAE_KIT_CACHE"] = tempfile.mkdtemp(prefix="vae-kit-test-cache-")

# The files with the longest end-to-end runs, longest first (per-file totals of `--durations=0`,
# 2026-12-01), for both `make test` and `make test-scenarios`. They hand whole files to their two
# workers in collection order (--dist loadfile --no-loadscope-reorder): these first, so that the
# workers finish together instead of one waiting on a long file handed out last.
LONGEST_FIRST = ("test_hierarchical_scripts.py", "test_distribute.py", "test_robustness.py", "test_option_sweep.py",
                 "test_hierarchical_vae.py", "test_reliability.py", "test_scripts.py", "test_real_data.py",
                 "test_guards.py", "test_likelihoods.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as collected


# A small model for end-to-end runs, so each takes seconds.
TINY_MODEL = ["--encoder-filters", "8,16", "--encoder-dense", "32", "--decoder-filters", "16,8",
              "--decoder-dense", "", "--latent-dim", "2", "--batch-size", "32"]
# The tiny data sets hold 256 training images, so the runs hold out 32, not the default 5,000.
TEST_VALIDATION = ["--validation-images", "32"]


def write_idx_gz(path, array, magic=None):
    """An idx file (big-endian header: magic, dims) compressed with gzip, as Fashion-MNIST ships."""
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else (0x803 if array.ndim == 3 else 0x801)
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def write_fashion_mnist(directory, n_train=256, n_test=128, seed=0):
    """Four official-format files; images are class-dependent blobs so a model can learn them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + label * 2:10 + label * 2, 4:24] = 255
        images = np.clip(images.astype(int) + rng.integers(0, 30, size=images.shape), 0, 255)
        write_idx_gz(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx_gz(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


def write_cifar_batch(path, data, labels, protocol=2):
    """A batch as the official python-version pickles: dict of bytes keys, (N, 3072) uint8 rows."""
    batch = {b"batch_label": b"test batch", b"labels": list(map(int, labels)),
             b"data": np.asarray(data, dtype=np.uint8), b"filenames": [b"x.png"] * len(labels)}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


def write_cifar10(directory, n_per_batch=40, n_test=64, seed=0):
    directory = Path(directory) / "cifar-10-batches-py"
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(1, 6):
        write_cifar_batch(directory / f"data_batch_{i}", rng.integers(0, 256, (n_per_batch, 3072)),
                          rng.integers(0, 10, n_per_batch))
    write_cifar_batch(directory / "test_batch", rng.integers(0, 256, (n_test, 3072)),
                      rng.integers(0, 10, n_test))
    return directory.parent


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar"))


def run_script(script, *args, timeout=240, env=None):
    """Run a dataset script from the repo root; returns the CompletedProcess (text output). The
    script's TensorFlow log level is its own default, as a user's (kit/quiet_start.py)."""
    full_env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    full_env = {**full_env, "PYTHONUNBUFFERED": "1", **(env or {})}
    if "--validation-images" not in map(str, args):
        args = (*TEST_VALIDATION, *args)
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def run_fashion_runs_in_one_process(argv_lists, folder, timeout=900):
    """The Fashion-MNIST script run once per argument list, one after another in one fresh process
    (tests/sweep_runs.py: TensorFlow starts once); a list of {"argv", "code", "stdout", "stderr"}."""
    argv_file = Path(folder) / "argv.json"
    argv_file.write_text(json.dumps([[str(a) for a in argv] for argv in argv_lists]))
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "sweep_runs.py"), str(argv_file)],
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def run_in_process(script, *args, env=None, timeout=None):
    """run_script's result for a run made in this process: no interpreter or TensorFlow to start
    (about 5 s of each run). For runs that need no fresh process: not --distribute (logical devices
    precede TensorFlow's start), not --mixed-precision (a global policy), not a signal, not a check
    for Python warnings (Python shows each one once per process). `env` is set for the run only;
    `timeout` is not enforced. The outdir's lock is released at the end, as at a process's exit."""
    import contextlib
    import importlib
    import io
    import signal
    import types
    from unittest import mock
    from kit import guards
    from kit.errors import exit_code_of
    argv = [*(TEST_VALIDATION if "--validation-images" not in map(str, args) else []), *map(str, args)]
    main = importlib.import_module(Path(script).stem).main
    stdout, stderr, releases = io.StringIO(), io.StringIO(), []
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # a stopped fit keeps its own
    real_atexit = guards.atexit
    guards.atexit = types.SimpleNamespace(register=releases.append)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
                mock.patch.dict(os.environ, env or {}), mock.patch.object(sys, "argv", [str(ROOT / script), *argv]):
            code = exit_code_of(main, argv)
    finally:
        guards.atexit = real_atexit
        for release in reversed(releases):
            release()
        for s, handler in handlers.items():
            signal.signal(s, handler)
        if "keras" in sys.modules:  # the next run starts from Keras' fresh state, as a new process
            sys.modules["keras"].backend.clear_session()
    return subprocess.CompletedProcess([script, *argv], code, stdout.getvalue(), stderr.getvalue())


def png_size(path):
    """(width, height) from a PNG's IHDR chunk; fails if the file is not a PNG."""
    raw = Path(path).read_bytes()[:24]
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", raw[16:24])


def peak_memory_growth_mb(setup, measured, timeout=240):
    """How far `measured` (Python source) raises the peak RSS of a fresh process after `setup`, in MB.

    A fresh process, because the peak RSS is a process's lifetime high: in a pytest worker an
    earlier test's peak would hide the growth (tracemalloc cannot see TensorFlow's allocator).
    The peak is /proc/self/status's VmHWM, the peak of the process's own memory: on Linux a child's
    ru_maxrss starts at its parent's RSS at the fork (a 3 GB pytest worker gave its child 3 GB
    before it ran a line), which hid every growth smaller than that (issue 17). ru_maxrss where
    there is no /proc."""
    code = "\n".join(["import resource, sys", f"sys.path.insert(0, {str(ROOT)!r})",
                      "def peak_mb():",
                      "    try:",
                      "        with open('/proc/self/status') as status:",
                      "            return next(int(l.split()[1]) for l in status if l.startswith('VmHWM:')) / 1024",
                      "    except (OSError, StopIteration):",
                      "        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024",
                      setup, "before = peak_mb()", measured, "print(peak_mb() - before)"])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=timeout, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    grown_mb = float(result.stdout.split()[-1])
    print(f"peak growth of {measured!r}: {grown_mb:.1f} MB")  # shown with pytest -s
    return grown_mb


# Written into a copy of a page for the browser test only (report.html itself holds no script):
# once every image has loaded or failed, each <img>'s src and naturalWidth, as JSON in <pre id=images>.
IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "images";
  out.textContent = JSON.stringify([...document.images].map(i => [i.getAttribute("src"), i.naturalWidth]));
  document.body.appendChild(out);
});
</script>"""


def chromium_or_skip():
    """The headless browser (Debian's chromium package; .ci/run installs it), or skip saying so."""
    import shutil
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not found:
        pytest.skip("no headless Chromium (apt-get install chromium) to render report.html in")
    return found


def render_page(page, screenshot, timeout=120):
    """(the <img> src and naturalWidth pairs of `page` as headless Chromium loaded them, the text of
    its DOM); writes a screenshot of the page, 1280 pixels wide, to `screenshot`."""
    import re
    browser, page = chromium_or_skip(), Path(page)
    check = page.with_name(".browser_check.html")  # beside the page: its pictures' relative paths hold
    check.write_text(page.read_text().replace("</body>", IMAGE_CHECK + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 f"--user-data-dir={profile}", "--virtual-time-budget=10000"]
        try:
            dom = subprocess.run([*flags, "--dump-dom", check.as_uri()], capture_output=True, text=True,
                                 timeout=timeout)
            shot = subprocess.run([*flags, "--window-size=1280,2200", f"--screenshot={screenshot}",
                                   page.as_uri()], capture_output=True, text=True, timeout=timeout)
        finally:
            check.unlink()
    assert dom.returncode == 0 and shot.returncode == 0, (dom.stderr + shot.stderr)[-2000:]
    found = re.search(r'<pre id="images">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:]
    import html
    return json.loads(html.unescape(found.group(1))), dom.stdout
