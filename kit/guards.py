"""Checks that stop a run early with one clear line: a busy output folder, a model too big for
the machine, a nearly full disk, a damaged checkpoint.

Light on purpose (standard library only): the options are checked before TensorFlow loads.
"""
import atexit
import errno
import fcntl
import json
import os
import shutil
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from kit.atomic_files import file_sha256, remove_leftover_temporaries
from kit.errors import DamagedRunError, LockedError, UsageError
from kit.model_options import decoder_output_channels, resolution_chain

LOCK_NAME = ".lock"
BYTES_PER_VALUE = 4        # float32 weights, moments, gradients and activations
# Per weight: the weight, Adam's two moments (Kingma & Ba, 2015) and its gradient; one more with
# --ema, the moving average of the weights.
COPIES_PER_WEIGHT = 4
# Per activation value: the forward value kept for the backward pass, its gradient, and room
# for the temporaries of the fused ops (ReLU masks, loss terms).
COPIES_PER_ACTIVATION = 3
KERNEL_SIZE = 3            # common.build_encoder / build_decoder's default
# Free disk space wanted, in model files: two checkpoints while one replaces the other, and
# model.keras with its temporary copy while it is written atomically.
MODEL_FILES_ON_DISK = 4
FREE_SPACE_MARGIN_BYTES = 50 * 2 ** 20  # pictures, CSVs, JSON and TensorBoard logs
GB = 1e9
# The feature networks the kit ships for the Fréchet distance (kit/sample_quality.py).
SHIPPED_FEATURE_NETS = Path(__file__).resolve().parent / "feature_nets"



# --- one run per output folder ------------------------------------------------------------------

def lock_holder(path):
    """The pid written in a lock file, or 'unknown' when it cannot be read."""
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return "unknown"


@contextmanager
def outdir_lock(outdir):
    """Hold an exclusive flock on outdir/.lock for the block, with this process's pid in it.

    Non-blocking: a second run on the same folder gets LockedError at once. The kernel drops a
    flock when its process dies (even by SIGKILL), so a left-over .lock file never blocks.
    The file is created (with outdir) before anything else is written; it is never deleted,
    since unlinking a locked file would let two processes lock two different files.
    """
    outdir = Path(outdir)
    path = outdir / LOCK_NAME
    try:  # checked before (folder_problem), but the file system may have changed since
        outdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise UsageError(f"--outdir {outdir} cannot be written: cannot make {err.filename or path}: "
                         f"{err.strerror or err}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"another run (pid {lock_holder(path)}) is using {outdir}") from None
        except OSError as err:  # a file system without flock (some network mounts)
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                raise
            print(f"warning: cannot lock {path} ({err.strerror}); make sure no other run uses "
                  f"{outdir}", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # no stale pid left behind; the lock goes with the close below
    finally:
        os.close(fd)


def is_chief():
    """True unless this process is a non-chief worker of a multi-worker cluster (TF_CONFIG)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    if task.get("type") in (None, "chief"):
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 \
        and "chief" not in tf_config.get("cluster", {})


def claim_outdir(outdir):
    """Take outdir's lock for the rest of this process (the chief's, in a cluster).

    Holding it, remove the temporary files a killed run may have left (see atomic_files).

    A run that left nothing in the folder but the lock (a refused one) removes the lock file
    again, and the folder too if this call created it: a refused run leaves no trace.
    """
    if not is_chief():
        return
    outdir = Path(outdir)
    created = not outdir.exists()
    lock = outdir_lock(outdir)
    lock.__enter__()
    remove_leftover_temporaries(outdir)

    def release():
        lock.__exit__(None, None, None)
        if [p.name for p in outdir.iterdir()] == [LOCK_NAME]:
            (outdir / LOCK_NAME).unlink()
            if created:
                outdir.rmdir()

    atexit.register(release)


# --- folders that must be made or written -------------------------------------------------------

# Room for the longest name the kit writes inside a folder (checkpoint/.ckpt-epochNNNN.tmpPID.keras).
LONGEST_NAME_INSIDE = 64


def _lexists(path):
    """Whether `path` exists (a link counts, even a broken one); False for a name too long to ask."""
    try:
        os.lstat(path)
        return True
    except OSError:
        return False


def folder_problem(folder):
    """None if `folder` is a writable folder or can be made one, else why not (one clause).

    Checks the nearest existing ancestor, the length of every name still to be made (NAME_MAX) and
    of the whole path (PATH_MAX) and write permission, then makes a folder in that ancestor (a
    read-only or virtual file system such as /proc refuses only then) and removes it.
    """
    path = Path(folder).absolute()
    existing = next(p for p in (path, *path.parents) if _lexists(p))
    if not existing.is_dir():
        return f"{existing} is not a folder"
    name_max = os.pathconf(existing, "PC_NAME_MAX")
    for part in path.relative_to(existing).parts:
        if len(os.fsencode(part)) > name_max:
            return (f"the name {part[:20]}... is {len(os.fsencode(part))} bytes long, more than the "
                    f"{name_max} its file system allows")
    path_max = os.pathconf(existing, "PC_PATH_MAX")
    if len(os.fsencode(str(path))) + LONGEST_NAME_INSIDE > path_max:
        return (f"the path is {len(os.fsencode(str(path)))} bytes long; files inside it would pass "
                f"the {path_max} bytes its file system allows")
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"permission denied on {existing}"
    return creation_problem(path, existing)


def creation_problem(path, existing):
    """None if the folders from `existing` (an ancestor of `path`) down to `path` can be made, else
    the OS's reason, naming the outermost of them. Finds out by making and removing a folder of this
    process's own in `existing`, so runs that check the same folder at once never see each other's."""
    missing = [p for p in (path, *path.parents) if p != existing and existing in p.parents]
    if not missing:
        return None
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".vae-kit-probe-", dir=existing))
    except OSError as err:
        return f"cannot make {missing[-1]}: {err.strerror or err}"
    return None


def feature_cache_root():
    """Where feature networks are cached: $VAE_KIT_CACHE/feature-nets, else ~/.cache/vae-kit/feature-nets."""
    root = os.environ.get("VAE_KIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vae-kit")
    return Path(root) / "feature-nets"


def feature_cache_problem(dataset, refresh):
    """None if the data set's feature-network cache can be used: read when a network is cached and
    not to be refreshed, else written. Otherwise why not, naming the folder and VAE_KIT_CACHE."""
    folder = feature_cache_root() / dataset
    if not refresh and _lexists(folder / "info.json") and folder.is_dir():
        return None  # only read; whether it fits the data is checked once the data is loaded
    problem = folder_problem(folder)
    if problem:
        return (f"the feature network of the Fréchet distance cannot be cached in {folder}: {problem} "
                f"(set VAE_KIT_CACHE to a writable folder, or pass --fd-images 0)")
    return None


def shipped_feature_net_paths(dataset):
    """(weights, card) of the feature network the kit ships for a data set: kit/feature_nets/
    <dataset>.weights.h5 and <dataset>.json (the weights' SHA-256, how they were trained)."""
    return SHIPPED_FEATURE_NETS / f"{dataset}.weights.h5", SHIPPED_FEATURE_NETS / f"{dataset}.json"


def shipped_feature_net_problem(dataset):
    """None if the kit ships a feature network for `dataset` and its weights match the SHA-256 its
    card records, else why not: a missing, unreadable or damaged file."""
    weights, card = shipped_feature_net_paths(dataset)
    if not _lexists(card):
        return (f"the kit ships no feature network for {dataset}; pass --feature-net own to train one "
                f"on this machine, or --fd-images 0")
    restore = "restore kit/feature_nets/ from the repository (git checkout -- kit/feature_nets)"
    try:
        info = json.loads(card.read_text())
        expected = info["weights_sha256"]
        actual = file_sha256(weights)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"the shipped feature network of {dataset} cannot be read ({err}); {restore}"
    if actual != expected:
        return (f"the shipped feature network {weights} is damaged: its SHA-256 is {actual[:12]}..., "
                f"{card.name} records {str(expected)[:12]}...; {restore}")
    return None


# --- will the model fit in memory ---------------------------------------------------------------

def conv_output_size(size, stride=2):
    """Spatial size after a 'same'-padded convolution: ceil(size / stride)."""
    return -(-size // stride)


def vae_parameter_count(image_shape, latent_dim, encoder_filters, encoder_dense, decoder_filters,
                        decoder_dense, decoder_output_channels=None):
    """Trainable weights of common.build_vae's architecture, counted from its layer shapes.

    Encoder: strided 3x3 Conv2D stack -> Dense stack -> z_mean and z_log_var heads.
    Decoder: Dense stack -> Dense to the base grid -> Conv2DTranspose stack -> 3x3 output conv.
    A layer has (inputs x outputs) kernel weights (x 9 for a 3x3 kernel) plus one bias per output.
    """
    return sum(n for _, n, _ in _layer_table(image_shape, latent_dim, encoder_filters, encoder_dense,
                                             decoder_filters, decoder_dense, decoder_output_channels))


def _layer_table(image_shape, latent_dim, encoder_filters, encoder_dense, decoder_filters,
                 decoder_dense, decoder_output_channels=None):
    """(layer name, trainable weights, output values per image) for every layer, in order."""
    height, width, channels = image_shape
    out_channels = decoder_output_channels or channels
    k2 = KERNEL_SIZE * KERNEL_SIZE
    rows = [("image", 0, height * width * channels)]
    h, w, c = height, width, channels
    for i, filters in enumerate(encoder_filters):
        h, w = conv_output_size(h), conv_output_size(w)
        rows.append((f"encoder conv {i + 1}", k2 * c * filters + filters, h * w * filters))
        c = filters
    units = h * w * c  # Flatten
    for i, n in enumerate(encoder_dense):
        rows.append((f"encoder dense {i + 1}", units * n + n, n))
        units = n
    for head in ("z_mean", "z_log_var"):
        rows.append((head, units * latent_dim + latent_dim, latent_dim))
    rows.append(("z", 0, latent_dim))
    units = latent_dim
    for i, n in enumerate(decoder_dense):
        rows.append((f"decoder dense {i + 1}", units * n + n, n))
        units = n
    scale = 2 ** len(decoder_filters)
    h, w = height // scale, width // scale
    c = decoder_filters[0] if decoder_filters else out_channels
    rows.append(("decoder base", units * h * w * c + h * w * c, h * w * c))
    for i, filters in enumerate(decoder_filters):
        h, w = 2 * h, 2 * w
        rows.append((f"decoder conv {i + 1}", k2 * c * filters + filters, h * w * filters))
        c = filters
    rows.append(("logits", k2 * c * out_channels + out_channels, h * w * out_channels))
    return rows


@dataclass(frozen=True)
class MemoryEstimate:
    """What training needs, in bytes, and the two numbers that explain it."""
    total_bytes: int
    parameters: int
    largest_activation: int        # values per image of the biggest layer output
    largest_activation_layer: str
    batch_size: int

    @property
    def model_file_bytes(self):
        """About the size of a saved .keras file: the float32 weights."""
        return self.parameters * BYTES_PER_VALUE

    def __int__(self):
        return self.total_bytes


def estimate_memory_bytes(image_shape, latent_dim, encoder_filters, encoder_dense, decoder_filters,
                          decoder_dense, batch_size, decoder_output_channels=None, ema=False):
    """Training memory of the model before it is built: float32 weights, Adam's two moments and
    the gradients (and the weights' average with `ema`), plus every layer's activations for a
    batch, kept for the backward pass."""
    rows = _layer_table(image_shape, latent_dim, encoder_filters, encoder_dense, decoder_filters,
                        decoder_dense, decoder_output_channels)
    parameters = sum(n for _, n, _ in rows)
    activations_per_image = sum(size for _, _, size in rows)
    largest_layer, _, largest = max(rows, key=lambda row: row[2])
    total = BYTES_PER_VALUE * ((COPIES_PER_WEIGHT + bool(ema)) * parameters
                               + COPIES_PER_ACTIVATION * activations_per_image * batch_size)
    return MemoryEstimate(total, parameters, largest, largest_layer, batch_size)


def estimate_for(config, image_shape):
    """estimate_memory_bytes for a kit.config.Config's model and batch size (a resnet's blocks
    counted as that many more activations per resolution; the hierarchical VAE's by
    estimate_hierarchical_memory_bytes)."""
    out_channels = decoder_output_channels(config.likelihood, image_shape[-1], config.mixture_components)
    if config.arch == "hierarchical":
        return estimate_hierarchical_memory_bytes(image_shape, config.hvae_widths, config.hvae_blocks,
                                                  config.latent_channels, config.latent_resolutions,
                                                  config.batch_size, out_channels, ema=config.ema > 0)
    estimate = estimate_memory_bytes(image_shape, config.latent_dim, config.encoder_filters,
                                     config.encoder_dense, config.decoder_filters,
                                     config.decoder_dense, config.batch_size, out_channels, ema=config.ema > 0)
    if config.arch == "resnet":  # each block: two convolutions and two norms of the same size
        estimate = replace(estimate, total_bytes=estimate.total_bytes * (1 + 4 * config.blocks_per_resolution))
    return estimate


# The hierarchical VAE (kit/hierarchical_vae.py): its blocks' middle width over their width.
BOTTLENECK_RATIO = 0.25
# Per latent variable: q and p's means and log-stds, their exps, z, the KL's terms.
VALUES_PER_LATENT = 10
# The likelihood's temporaries, in copies of the decoder's output (the mixture's per-component
# logistic terms, log-sum-exps and their gradients).
LIKELIHOOD_COPIES = 8
# Copies of every value hierarchical_layer_table counts. Measured on the CIFAR-10 defaults (one
# training step in a fresh process, peak RSS growth): 1,079 MB at batch 32 and 2,289 MB at batch
# 128, i.e. 12.6 MB per image, 1.15 copies of the 2.73 million values counted per image; 1.5 leaves
# a margin. (The seed VAE's COPIES_PER_ACTIVATION = 3 counts layer outputs only, not a block's
# inner values.)
HIERARCHICAL_COPIES_PER_VALUE = 1.5


def _per_resolution_list(values, chain):
    """One value (a list of one) for every resolution, or one per resolution of the chain."""
    values = list(values)
    return dict(zip(chain, values if len(values) == len(chain) else values[:1] * len(chain)))


def _bottleneck_row(name, side, in_width, middle, out_width, residual):
    """A BottleneckBlock (1x1, 3x3, 3x3, 1x1 after GELUs; 1x1 for all at sides <= 2): its weights
    and the values per image it keeps for the backward pass (each conv's input before and after
    its GELU, the output, and the residual sum)."""
    k2 = KERNEL_SIZE * KERNEL_SIZE if side > 2 else 1
    weights = (in_width * middle + middle) + 2 * (k2 * middle * middle + middle) + (middle * out_width + out_width)
    values = side * side * (2 * in_width + 6 * middle + out_width + (out_width if residual else 0))
    return (name, weights, values)


def hierarchical_layer_table(image_shape, widths, blocks, latent_channels, latent_resolutions,
                             decoder_output_channels=None, bottleneck_ratio=BOTTLENECK_RATIO):
    """(stage name, trainable weights, values per image kept for the backward pass) for every
    stage of kit.hierarchical_vae.HierarchicalVAE, counted from its layer shapes: the bottom-up
    stem, projections and residual blocks; per resolution of the top-down pass the learned bias,
    the upsampled state, its projection, the latent groups (prior, posterior and residual block,
    z's projection, the latent statistics) and the plain blocks where no group is; the output."""
    side, channels = image_shape[0], image_shape[-1]
    out_channels = decoder_output_channels or channels
    chain = resolution_chain(side)
    width = _per_resolution_list(widths, chain)
    encoder_blocks = _per_resolution_list(blocks, chain)
    groups = {r: list(latent_resolutions).count(r) for r in chain}
    c = latent_channels

    def middle(r):
        return max(1, int(round(width[r] * bottleneck_ratio)))

    rows = [("image", 0, side * side * channels),
            ("stem", KERNEL_SIZE * KERNEL_SIZE * channels * width[side] + width[side], side * side * width[side])]
    previous = None
    for r in chain:
        w, area = width[r], r * r
        if previous is not None:
            rows.append((f"pool to {r}x{r}", 0, area * width[previous]))
            if width[previous] != w:
                rows.append((f"encoder projection {r}x{r}", width[previous] * w + w, area * w))
        rows += [_bottleneck_row(f"encoder block {r}x{r} #{b + 1}", r, w, middle(r), w, True)
                 for b in range(encoder_blocks[r])]
        previous = r
    previous = None
    for r in reversed(chain):
        w, m, area = width[r], middle(r), r * r
        rows.append((f"top-down bias {r}x{r}", area * w, area * w))
        if previous is not None:
            rows.append((f"upsample to {r}x{r}", 0, area * width[previous]))
            if width[previous] != w:
                rows.append((f"decoder projection {r}x{r}", width[previous] * w + w, area * w))
        for g in range(groups[r]):
            name = f"latent group {r}x{r} #{g + 1}"
            rows += [_bottleneck_row(f"{name} prior", r, w, m, 2 * c + w, False),
                     _bottleneck_row(f"{name} posterior", r, 2 * w, m, 2 * c, False),
                     (f"{name} z", 0, area * (VALUES_PER_LATENT * c + 2 * w)),
                     (f"{name} z projection", c * w + w, area * 2 * w),
                     _bottleneck_row(f"{name} residual block", r, w, m, w, True)]
        if not groups[r]:  # plain blocks where no group updates the state (the model's default)
            rows += [_bottleneck_row(f"decoder block {r}x{r} #{b + 1}", r, w, m, w, True)
                     for b in range(encoder_blocks[r])]
        previous = r
    top, area = width[side], side * side
    rows += [("output gain and bias", 2 * top, 2 * area * top),
             ("outputs", top * out_channels + out_channels, area * out_channels),
             ("likelihood", 0, LIKELIHOOD_COPIES * area * out_channels)]
    return rows


def estimate_hierarchical_memory_bytes(image_shape, widths, blocks, latent_channels, latent_resolutions,
                                       batch_size, decoder_output_channels=None, ema=False):
    """Training memory of the hierarchical VAE before it is built, as estimate_memory_bytes: its
    float32 weights with Adam's moments and the gradients (4 copies, 5 with `ema`), plus every
    stage's values for a batch (hierarchical_layer_table) in HIERARCHICAL_COPIES_PER_VALUE copies."""
    rows = hierarchical_layer_table(image_shape, widths, blocks, latent_channels, latent_resolutions,
                                    decoder_output_channels)
    parameters = sum(n for _, n, _ in rows)
    activations_per_image = sum(size for _, _, size in rows)
    largest_layer, _, largest = max(rows, key=lambda row: row[2])
    total = BYTES_PER_VALUE * ((COPIES_PER_WEIGHT + bool(ema)) * parameters
                               + HIERARCHICAL_COPIES_PER_VALUE * activations_per_image * batch_size)
    return MemoryEstimate(int(total), parameters, largest, largest_layer, batch_size)


def physical_memory_bytes():
    """This machine's RAM: page size x number of physical pages."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


SMALLER_MODEL = "use smaller --latent-dim, filter or dense widths, or --batch-size"
SMALLER_HIERARCHICAL_MODEL = "use smaller --hvae-widths, fewer --hvae-blocks or latent groups, or a smaller --batch-size"


def memory_problem(estimate_bytes, fraction=0.5, physical_bytes=None, advice=SMALLER_MODEL):
    """None, or one line saying the model needs more than `fraction` of this machine's memory.

    estimate_bytes: a MemoryEstimate (the message then explains the size) or a plain byte count.
    """
    physical = physical_memory_bytes() if physical_bytes is None else physical_bytes
    needed = int(estimate_bytes)
    if needed <= fraction * physical:
        return None
    share = "half" if fraction == 0.5 else f"{fraction:.0%}"
    why = ""
    if isinstance(estimate_bytes, MemoryEstimate):
        e = estimate_bytes
        why = (f" ({e.parameters:,} parameters, largest activation {e.largest_activation:,} values "
               f"per image in {e.largest_activation_layer} x batch {e.batch_size})")
    return (f"the model needs about {needed / GB:.1f} GB{why}, more than {share} of this machine's "
            f"{physical / GB:.1f} GB of memory; {advice}")


def free_space_warning(outdir, model_bytes):
    """None, or a warning when outdir's disk has less free space than the run will write."""
    wanted = MODEL_FILES_ON_DISK * int(model_bytes) + FREE_SPACE_MARGIN_BYTES
    free = shutil.disk_usage(outdir).free
    if free >= wanted:
        return None
    return (f"only {free / GB:.2f} GB free on the disk of {outdir}; checkpoints and model.keras "
            f"need about {wanted / GB:.2f} GB ({MODEL_FILES_ON_DISK} copies of a "
            f"{int(model_bytes) / GB:.2f} GB model), so saving may fail")


# --- a checkpoint that can be trusted -----------------------------------------------------------

def read_json_object(path, what):
    """The dict in a JSON file; DamagedRunError (one line naming `what` and path) otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DamagedRunError(f"{what} {path} is missing") from None
    except UnicodeDecodeError:
        raise DamagedRunError(f"{what} {path} is not text (not UTF-8)") from None
    except OSError as err:
        raise DamagedRunError(f"{what} {path} cannot be read: {err.strerror or err}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DamagedRunError(f"{what} {path} is not valid JSON (line {err.lineno}, column "
                              f"{err.colno}: {err.msg})") from None
    except RecursionError:
        raise DamagedRunError(f"{what} {path} is not valid JSON (nested too deeply)") from None
    if not isinstance(value, dict):
        raise DamagedRunError(f"{what} {path} holds a JSON {type(value).__name__}, not an object")
    return value


def is_int(value):
    """A JSON integer: int but not bool (True is an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    """A JSON number: int or float but not bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def state_problem(state, checkpoint_dir):
    """What is wrong with a checkpoint's state.json dict, or None."""
    if not isinstance(state, dict):
        return f"state.json holds a {type(state).__name__}, not an object"
    for key in ("epoch", "model", "history", "sampling_seed_state"):
        if key not in state:
            return f"state.json has no {key!r}"
    epoch, history, name, seeds = (state["epoch"], state["history"], state["model"],
                                   state["sampling_seed_state"])
    if not is_int(epoch) or epoch < 0:
        return f"epoch must be a whole number >= 0, got {epoch!r}"
    if not isinstance(history, list) or len(history) != epoch:
        length = len(history) if isinstance(history, list) else type(history).__name__
        return f"history must list {epoch} epoch(s), got {length}"
    for i, row in enumerate(history):
        if not isinstance(row, dict):
            return f"history row {i + 1} is a {type(row).__name__}, not an object"
        if row.get("epoch") != i + 1 or not is_int(row["epoch"]):
            return f"history row {i + 1} has epoch {row.get('epoch')!r}"
        for key, value in row.items():
            if value is not None and not is_number(value):
                return f"history row {i + 1}: {key} is {value!r}, not a number"
    if not isinstance(name, str) or not name.endswith(".keras") or name.startswith(".") \
            or "/" in name or "\\" in name or "\0" in name:
        return f"model must be a .keras file name inside the checkpoint folder, got {name!r}"
    path = Path(checkpoint_dir) / name
    if path.is_symlink() or not path.is_file():
        return f"model file {name} is missing"
    if path.stat().st_size == 0:
        return f"model file {name} is empty"
    if not zipfile.is_zipfile(path):
        return f"model file {name} is not a .keras archive (cut short or overwritten)"
    problem = digest_problem(path, state.get("model_sha256"), "state.json")
    if problem:
        return problem
    if not isinstance(seeds, list) or not seeds or not all(map(is_int, seeds)):
        return f"sampling_seed_state must be a list of integers, got {seeds!r}"
    return inside_epoch_problem(state)


def inside_epoch_problem(state):
    """What is wrong with the fields of a checkpoint taken inside an epoch (batch, metric_states,
    epoch_seconds), or None; an epoch's-end checkpoint has none of them."""
    if "batch" not in state:
        return None
    batch, metrics, seconds = state["batch"], state.get("metric_states"), state.get("epoch_seconds")
    if not is_int(batch) or batch < 1:
        return f"batch must be a whole number >= 1, got {batch!r}"
    if not isinstance(metrics, dict) or not all(
            isinstance(values, list) and all(is_number(v) for v in values) for values in metrics.values()):
        return f"metric_states must map metric names to lists of numbers, got {metrics!r}"[:300]
    if seconds is not None and not is_number(seconds):
        return f"epoch_seconds must be a number, got {seconds!r}"
    return None



def is_sha256(value):
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def digest_problem(path, recorded, where):
    """None if the file at `path` has the SHA-256 `recorded` (in `where`) when it was written, else
    what is wrong: damage that still parses (bytes changed inside the weights) must not be trained
    on or evaluated. A file from before digests were recorded (`recorded` None) passes."""
    if recorded is None:
        return None
    if not is_sha256(recorded):
        return f"{where} records the SHA-256 of {Path(path).name} as {recorded!r}, not 64 hex digits"
    if file_sha256(path) != recorded:
        return (f"{Path(path).name} has changed since it was written: its SHA-256 differs from the one "
                f"{where} recorded")
    return None


def validate_state(state, checkpoint_dir):
    """The checkpoint's model path if state.json's dict is sound; DamagedRunError otherwise."""
    problem = state_problem(state, checkpoint_dir)
    if problem:
        raise DamagedRunError(f"the checkpoint in {checkpoint_dir} is damaged: {problem}")
    return Path(checkpoint_dir) / state["model"]
