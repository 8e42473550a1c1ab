"""report.html: a run folder's metrics, pictures and command on one page, made from the folder's files
and the metrics alone (no model). Self-contained: pictures by relative path, no script, opens offline."""
import html
import json
import numbers
from pathlib import Path
from string import Template
from urllib.parse import quote

from kit.atomic_files import write_text
from kit.pictures import metric_rows

# Captions of the pictures a run draws, in the page's order; any other PNG in the folder follows.
CAPTIONS = {
    "samples.png": "Samples from the prior",
    "samples_gmm.png": "Samples from the ex-post GMM of the training codes",
    "samples_temperatures.png": "The same latent noise at several temperatures",
    "reconstructions.png": "Test images above their reconstructions",
    "interpolations.png": "Interpolations between the codes of test images of different classes",
    "latent_space.png": "The test split's posterior means, coloured by class",
    "latent_manifold.png": "The decoder over a grid of latent values",
    "kl_per_group.png": "KL of each latent group on the test split (nats/image)",
}
# Options of config.json the page lists, when the folder has one.
OPTIONS = ("arch", "likelihood", "latent_dim", "latent_resolutions", "latent_channels", "epochs", "batch_size",
           "lr", "lr_schedule", "beta", "kl_warmup", "seed", "limit", "validation_images", "preset")

PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; color: #222; max-width: 1280px; margin: 0 auto; padding: 24px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
.sub { color: #555; margin: 0 0 12px; }
table { border-collapse: collapse; } td, th { padding: 3px 12px 3px 0; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } tr.head td { font-weight: 600; padding-top: 8px; }
.metrics td:first-child { white-space: pre; }
caption { text-align: left; color: #555; padding-bottom: 6px; white-space: nowrap; }
.columns { display: flex; flex-wrap: wrap; gap: 12px 48px; align-items: flex-start; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 20px; }
figure { margin: 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 14px; margin-top: 4px; } figcaption code { color: #777; }
pre { background: #f6f6f6; padding: 8px 10px; overflow-x: auto; white-space: pre-wrap; }
.warn { color: #8a5300; }
</style></head>
<body>
<h1>$title</h1>
<p class="sub">$subtitle</p>
<h2>Results</h2>
<div class="columns">$metrics
$groups
$facts</div>
$curves
<h2>Pictures</h2>
<div class="grid">
$pictures
</div>
<h2>Run</h2>
$run
</body></html>
""")


def write_report(outdir, metrics, command):
    """report.html in outdir from `metrics` (metrics.json's dict), outdir's config.json when it has
    one, its PNGs and the command line that made them."""
    outdir = Path(outdir)
    config = read_json(outdir / "config.json")
    pngs = sorted(outdir.glob("*.png"), key=lambda p: (list(CAPTIONS).index(p.name) if p.name in CAPTIONS
                                                       else len(CAPTIONS), p.name))
    title = f"{metrics.get('data_title') or metrics.get('dataset', 'VAE')} — {outdir.resolve().name}"
    page = PAGE.substitute(
        title=esc(title), subtitle=esc(subtitle(metrics)), metrics=metrics_table(metrics),
        groups=groups_table(metrics.get("kl_per_group")), facts=facts_table(metrics),
        curves=figure("loss_curves.png", "Loss per epoch: total, reconstruction and KL; train and validation "
                      "(held-out training images)") if (outdir / "loss_curves.png").is_file() else "",
        pictures="\n".join(figure(p.name, CAPTIONS.get(p.name, p.stem)) for p in pngs
                           if p.name != "loss_curves.png"),
        run=run_section(metrics, config, command))
    write_text(outdir / "report.html", page)


def read_json(path):
    """The dict in a JSON file, or {} when there is none to read."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def esc(value):
    return html.escape(str(value))


def number(value):
    return f"{value:.4f}" if isinstance(value, float) else esc(value)


def is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def subtitle(metrics):
    """One line: the model, its epochs and the split the numbers are on."""
    model = ", ".join(str(part) for part in (metrics.get("model"), metrics.get("likelihood")) if part)
    epochs = f"{metrics['epochs']} epoch(s)" if metrics.get("epochs") else "epochs unknown"
    return (f"{model}; {epochs}; every number on the test split ({metrics.get('test_images')} images) "
            "unless its row says otherwise")


def metrics_table(metrics):
    """The headline numbers, as the run printed them, then any other Fréchet distance and the
    feature network that measured them."""
    rows = [(label, key, value, unit) for label, key, value, unit in metric_rows(metrics) if key != "kl_per_group"]
    shown = {key for _, key, _, _ in rows}
    rows += [(f"  {key}", key, value, "") for key, value in sorted(metrics.items())
             if key.startswith("fd_") and key not in shown and key != "fd_images" and is_number(value)]
    body = "".join(f'<tr class="head"><td colspan="3">{esc(label.strip().rstrip(":"))}</td></tr>' if key is None else
                   f"<tr><td>{esc(label)}</td><td class=num>{number(value)}</td><td>{esc(unit)}</td></tr>"
                   for label, key, value, unit in rows)
    net = metrics.get("feature_net")
    if isinstance(net, dict):
        said = ", ".join(f"{k}: {v}" for k, v in net.items() if isinstance(v, (str, numbers.Real)))
        body += f'<tr><td colspan="3">Fréchet features: {esc(said)}</td></tr>'
    return f'<table class="metrics"><caption>Headline metrics</caption>{body}</table>'


def groups_table(groups):
    """The hierarchical VAE's KL per latent group and its share of the total ('' for other runs)."""
    if not groups:
        return ""
    total = sum(g["kl"] for g in groups) or 1.0
    body = "".join(f"<tr><td>{g['group']}</td><td>{g['resolution']}×{g['resolution']}</td>"
                   f"<td class=num>{g['kl']:.4f}</td><td class=num>{100 * g['kl'] / total:.1f} %</td></tr>"
                   for g in groups)
    return ('<table><caption>KL per latent group, test split, coarse to fine</caption>'
            "<tr><th>group</th><th>resolution</th><th>KL (nats/image)</th><th>share</th></tr>"
            f"{body}</table>")


def facts_table(metrics):
    """Epochs, times and memory of the run, with units."""
    facts = [("epochs", metrics.get("epochs"), "{:d}", ""),
             ("training time", metrics.get("train_seconds"), "{:.1f}", "s"),
             ("evaluation time", metrics.get("eval_seconds"), "{:.1f}", "s"),
             ("peak memory", metrics.get("peak_rss_mb"), "{:.0f}", "MB (resident)")]
    body = "".join(f"<tr><td>{esc(name)}</td><td class=num>{esc(form.format(value))}</td><td>{esc(unit)}</td></tr>"
                   for name, value, form, unit in facts if is_number(value))
    return f"<table><caption>The run</caption>{body}</table>"


def figure(name, caption):
    return (f'<figure><img src="{esc(quote(name))}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)} <code>{esc(name)}</code></figcaption></figure>")


def run_section(metrics, config, command):
    """The command, the data and its warnings, the options and software versions."""
    warnings = metrics.get("data_warnings") or []
    data = f"<p>Data: {esc(metrics.get('data_title', ''))} from <code>{esc(metrics.get('data_source'))}</code>"
    official = "data_warnings" in metrics and not warnings
    data += ", the official files (their checksums match)</p>" if official else "</p>"
    if warnings:
        data += (f'<details class="warn"><summary>{len(warnings)} data file(s) differ from the official ones: '
                 f"a modified copy, so the numbers do not compare with the official data set's</summary>"
                 f"<ul>{''.join(f'<li>{esc(w)}</li>' for w in warnings)}</ul></details>")
    other_arch = ("latent_dim",) if config.get("arch") == "hierarchical" else ("latent_resolutions", "latent_channels")
    options = [(key, config[key]) for key in OPTIONS if key in config and key not in other_arch]
    versions = config.get("versions") if isinstance(config.get("versions"), dict) else {}
    table = "".join(f"<tr><td>{esc(k)}</td><td><code>{esc(v)}</code></td></tr>" for k, v in options)
    table += "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in versions.items())
    return (f"<p>Command:</p><pre>{esc(command)}</pre>{data}"
            + (f"<table><caption>Options (config.json) and versions</caption>{table}</table>" if table else ""))
