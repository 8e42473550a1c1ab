"""report.html from a run folder's files and metrics alone: escaping, every picture, the numbers a
later metrics.json may add. (Runs' pages in a browser: tests/test_scripts.py.)"""
import json

from kit.report import write_report

METRICS = {"test_neg_elbo": 250.125, "test_kl": 20.5, "test_reconstruction": 229.625, "test_images": 40,
           "fd_images": 40, "fd_prior_samples": 31.25, "fd_some_new_distance": 7.125, "likelihood": "gaussian",
           "feature_net": {"name": "kit-net <v2>", "kind": "shipped", "layers": [1, 2]},
           "kl_per_group": [{"group": 0, "resolution": 1, "kl": 5.0}, {"group": 1, "resolution": 4, "kl": 15.5}],
           "data_title": "CIFAR-10 (JPEG copy)", "data_source": "/data/cifar", "epochs": 3, "train_seconds": 12.34,
           "data_warnings": ["/data/cifar/a differs", "/data/cifar/b differs"], "model": "hierarchical, 2 groups"}


def test_the_page_lists_the_numbers_groups_pictures_and_command(tmp_path):
    for name in ("samples.png", "loss_curves.png", "a picture.png"):
        (tmp_path / name).write_bytes(b"\x89PNG")
    (tmp_path / "config.json").write_text(json.dumps({"arch": "hierarchical", "versions": {"keras": "3.0"}}))
    write_report(tmp_path, METRICS, "python vae_cifar10.py --outdir 'a <b>'")
    page = (tmp_path / "report.html").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    assert "<title>CIFAR-10 (JPEG copy) — " in page and "test split (40 images)" in page
    assert "250.1250</td><td>nats/image" in page and "31.2500" in page
    assert "fd_some_new_distance</td><td class=num>7.1250" in page  # a Fréchet distance the table does not name
    assert "name: kit-net &lt;v2&gt;, kind: shipped" in page and "layers" not in page
    assert "<td>1</td><td>4×4</td><td class=num>15.5000</td><td class=num>75.6 %</td>" in page
    assert page.index('src="loss_curves.png"') < page.index('src="samples.png"') < page.index('src="a%20picture.png"')
    assert "--outdir &#x27;a &lt;b&gt;&#x27;" in page and "<b>" not in page
    assert "2 data file(s) differ from the official ones" in page and "/data/cifar/b differs" in page
    assert "<td>arch</td><td><code>hierarchical</code>" in page and "<td>keras</td><td>3.0</td>" in page
    assert "<script" not in page and "http" not in page  # opens offline, runs nothing
