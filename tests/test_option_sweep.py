"""Every integer and float option of both scripts at 0, 1, -1, a huge value (and NaN and infinity
for floats): each is refused before training with exit 2 and one line naming the option, or runs
to the end; never a traceback.

Refusals need no TensorFlow, so parse_config decides them in-process; the values it accepts run end
to end, all in one process (tests/sweep_runs.py), on tiny data with a tiny model: a long scenario
(`make test-scenarios`)."""
import json
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, TEST_VALIDATION, TINY_MODEL, run_fashion_runs_in_one_process
from kit.config import parse_config
from kit.errors import UsageError
from vae_cifar10 import CIFAR10
from vae_fashion_mnist import FASHION_MNIST

HUGE = str(10 ** 30)
INT_OPTIONS = ["--epochs", "--batch-size", "--latent-dim", "--kl-warmup", "--mixture-components",
               "--blocks-per-resolution", "--seed", "--limit", "--iw-samples", "--iwae-images",
               "--fd-images", "--gmm-components", "--steps-per-execution", "--validation-images",
               "--latent-channels", "--warmup-steps"]
LIST_OPTIONS = ["--encoder-filters", "--encoder-dense", "--decoder-filters", "--decoder-dense",
                "--hvae-widths", "--hvae-blocks", "--latent-resolutions"]
FLOAT_OPTIONS = ["--beta", "--lr", "--temperature", "--grad-clip", "--skip-threshold", "--checkpoint-minutes",
                 "--adam-beta2", "--weight-decay", "--ema"]
CASES = ([(option, value) for option in INT_OPTIONS + LIST_OPTIONS for value in ("0", "1", "-1", HUGE)]
         + [(option, value) for option in FLOAT_OPTIONS for value in ("0", "1", "-1", "1e308", "nan", "inf")])
SPECS = {"fashion_mnist": FASHION_MNIST, "cifar10": CIFAR10}
# Everything small, so an accepted value runs end to end in seconds; the value under test comes last.
BASE = [*TINY_MODEL, *TEST_VALIDATION, "--epochs", "1", "--limit", "64", "--iw-samples", "2", "--iwae-images", "16",
        "--fd-images", "0"]
# The hierarchical VAE's own options are swept on a tiny hierarchical VAE: the plain base ignores them.
HIERARCHICAL_OPTIONS = {"--hvae-widths", "--hvae-blocks", "--latent-channels", "--latent-resolutions",
                        "--grad-clip", "--skip-threshold"}
HIERARCHICAL_BASE = ["--arch", "hierarchical", "--hvae-widths", "8", "--hvae-blocks", "1",
                     "--latent-channels", "2", "--latent-resolutions", "1"]
# Training may honestly end on a non-finite loss (exit 3, one line) for these values. Adam with
# beta_2 = 0 divides a remembered mean by this step's gradient alone: with --batch-size 1 it ended
# in NaN at step 3 (2026-12-03); alone, at the base's batch size, it finishes.
MAY_DIVERGE = {("--lr", "1"), ("--adam-beta2", "0")}
# Values that turn an evaluation step off.
TURNS_OFF = {("--iw-samples", "0")}


def case_id(case):
    return f"{case[0][2:]}={'huge' if case[1] == HUGE else case[1]}"


def argv_for(case, data_dir, outdir):
    """The command line of one case; of several (option, value) pairs, one run with all of them."""
    pairs = [case] if isinstance(case[0], str) else list(case)
    base = [*BASE, *HIERARCHICAL_BASE] if pairs[0][0] in HIERARCHICAL_OPTIONS else BASE
    return ["--data-dir", str(data_dir), "--outdir", str(outdir), *base, *(x for pair in pairs for x in pair)]


def parsed(spec, argv):
    """None if parse_config accepts argv, else its UsageError's message."""
    try:
        parse_config(spec, argv)
    except UsageError as err:
        return str(err)
    return None


def accepted_by(spec):
    """The cases parse_config accepts (run end to end below); the rest must be refusals."""
    # A --data-dir that exists, of this process alone: the --outdir check makes (and removes) the
    # folders it would need, and two pytest workers collecting at once must not check the same ones.
    with tempfile.TemporaryDirectory(prefix="vae-sweep-") as name:
        folder = Path(name)
        return [case for case in CASES if parsed(spec, argv_for(case, folder, folder / "vae-sweep" / "out")) is None]


ACCEPTED = {name: accepted_by(spec) for name, spec in SPECS.items()}
REFUSED = [(name, case) for name in SPECS for case in CASES if case not in ACCEPTED[name]]


@pytest.mark.parametrize("dataset, case", REFUSED, ids=[f"{name}-{case_id(case)}" for name, case in REFUSED])
def test_a_refused_value_is_one_line_naming_the_option(tmp_path, dataset, case):
    message = parsed(SPECS[dataset], argv_for(case, tmp_path, tmp_path / "out"))
    assert message is not None and "\n" not in message and case[0] in message, message
    assert not (tmp_path / "out").exists()


def grouped_runs(cases):
    """The accepted values grouped into few runs, each setting each option once: one tiny run costs
    seconds, mostly TensorFlow's tracing, so the 42 values run in 6 runs instead of one each. A value
    that may diverge runs alone (its exit 3 would hide the others); one that turns a step off
    (--iw-samples 0) goes after the values that exercise the step, so they never share a run."""
    runs = []
    for case in sorted(cases, key=lambda case: case in TURNS_OFF):
        run = None if case in MAY_DIVERGE else next(
            (run for run in runs if case[0] not in dict(run) and not set(run) & MAY_DIVERGE), None)
        if run is None:
            runs.append(run := [])
        run.append(case)
    return [tuple(run) for run in runs]


@pytest.fixture(scope="module")
def end_to_end(tmp_path_factory, fashion_dir):
    """{case: (result, its run folder)} for every case the Fashion-MNIST script accepts: the plain
    model's options grouped on the tiny plain model, the hierarchical VAE's on a tiny one."""
    folder = tmp_path_factory.mktemp("sweep")
    accepted = ACCEPTED["fashion_mnist"]
    runs = (grouped_runs([case for case in accepted if case[0] not in HIERARCHICAL_OPTIONS])
            + grouped_runs([case for case in accepted if case[0] in HIERARCHICAL_OPTIONS]))
    folders = {run: folder / f"run{i}" for i, run in enumerate(runs)}
    argv_lists = [argv_for(run, fashion_dir, folders[run]) for run in runs]
    results = dict(zip(runs, run_fashion_runs_in_one_process(argv_lists, folder)))
    return {case: (results[run], folders[run]) for run in runs for case in run}


@pytest.mark.scenario
@pytest.mark.slow
@pytest.mark.parametrize("case", ACCEPTED["fashion_mnist"], ids=case_id)
def test_an_accepted_value_runs_to_the_end(end_to_end, case):
    result, run_folder = end_to_end[case]
    assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
    lines = [line for line in result["stderr"].splitlines() if line.strip() and not line.startswith("warning: ")]
    if result["code"] == 0:
        metrics = json.loads((run_folder / "metrics.json").read_text())
        assert metrics["epochs"] == 1 and (run_folder / "samples.png").is_file()
        assert lines == [], lines
    elif result["code"] == 3:  # a non-finite loss: named, training stopped, nothing broken saved
        assert case in MAY_DIVERGE, result["stderr"][-3000:]
        assert lines[0].startswith("stopped: loss became") and "at epoch 1, step" in lines[0], lines
    else:  # refused once the data was loaded, still before training
        assert result["code"] == 2, result["stderr"][-3000:]
        assert len(lines) == 1 and case[0] in lines[0], lines
        assert "Epoch 1/" not in result["stdout"]


def test_the_sweep_counts_its_cases():
    """docs/RELIABILITY.md, Tested bad input, counts these cases: keep the two in step."""
    assert len(CASES) * len(SPECS) == len(REFUSED) + sum(map(len, ACCEPTED.values())) == 292
    assert len(ACCEPTED["fashion_mnist"]) == 42
    reliability = (ROOT / "docs" / "RELIABILITY.md").read_text(encoding="utf-8")
    assert "292 option values" in reliability and "the 42\n  that the Fashion-MNIST script accepts" in reliability
