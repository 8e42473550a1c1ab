"""The hierarchical VAE trained on one device and on two logical CPU devices (MirroredStrategy)
from the same weights on the same batches: compare_steps, which tests/distributed_step.py runs in
its process (with `hierarchical:NAME` arguments; logical devices must be configured before
TensorFlow starts, and oneDNN is off there). The batches of distributed_step.py and one of 64:
128 (64 + 64), 129 (65 + 64), 1 image (one replica empty), and a damaged batch of 64 whose update
is skipped. z is sampled: each replica takes its
own images' rows of the global batch's noise, so the steps match one device's only if every
replica draws fresh noise, the same per image as one device (replica_noise checks that directly).
The validation during fit draws its own fixed noise, and the EMA of the weights is kept and swapped
in for validation as the scripts do (Keras' use_ema and SwapEMAWeights).

Gradient clipping is set low enough to act on every step, and the skip threshold so that some
steps are skipped: both must use the global batch's gradient norm, not a replica's. Then both
trained models are evaluated as the scripts do, outside the strategy's scope: the mirrored one's
numbers must be the single device's."""
import keras
import numpy as np
import tensorflow as tf

from kit.evaluate import compute_metrics
from kit.hierarchical_vae import build_hierarchical_vae

IMAGE_SHAPE = (8, 8, 3)
# compute_metrics' numbers compared between the two trained models.
METRICS = ("test_neg_elbo", "test_kl", "test_iwae_nll", "test_mse", "bits_per_dim_8bit", "iwae_bits_per_dim_8bit")


def tiny_model(likelihood, grad_clip, skip_threshold):
    return build_hierarchical_vae(IMAGE_SHAPE, 8, 1, 2, (1, 4), likelihood=likelihood, mixture_components=2,
                                  beta=0.7, seed=0, grad_clip=grad_clip, skip_threshold=skip_threshold)


def train(strategy, likelihood, initial_weights, x, grad_clip, skip_threshold):
    with strategy.scope():
        model = tiny_model(likelihood, grad_clip, skip_threshold)
        model.set_weights(initial_weights)
        # SGD: a mis-scaled gradient shows up; a short EMA, so that it differs from the weights.
        model.compile(optimizer=keras.optimizers.SGD(0.01, use_ema=True, ema_momentum=0.5))
    batches = [tf.data.Dataset.from_tensor_slices(images).batch(len(images))
               for images in (x[:128], x, x[:1], x[:64], x[:64] * 20.0)]  # the last: a damaged batch
    data = batches[0]
    for batch in batches[1:]:
        data = data.concatenate(batch)
    validation = tf.data.Dataset.from_tensor_slices(x[:64]).batch(32)
    logs = model.fit(data, epochs=1, verbose=0, validation_data=validation,
                     callbacks=[keras.callbacks.SwapEMAWeights()]).history
    metrics = compute_metrics(model, x[:32], iw_samples=2, iwae_images=8, seed=0, lossless_codecs=False)
    return ([w.numpy() for w in model.trainable_weights], logs["loss"][0], float(model.skipped_updates.numpy()),
            int(model.optimizer.iterations.numpy()), {key: metrics[key] for key in METRICS},
            logs["val_loss"][0])


def replica_noise(mirrored):
    """Training's noise for a batch of 5 images (3 + 2 per replica) from the same generator state:
    on one device, and per replica under `mirrored`."""
    model = tiny_model("gaussian", None, None)
    single = model._noise((5, 2, 2, 3)).numpy()
    with mirrored.scope():
        model = tiny_model("gaussian", None, None)
    x = mirrored.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(np.zeros((5, 1))).batch(5))
    shares = mirrored.run(lambda batch: model._noise((tf.shape(batch)[0], 2, 2, 3)), args=(next(iter(x)),))
    return single, [share.numpy() for share in mirrored.experimental_local_results(shares)]


def compare_steps(mirrored, x, likelihoods):
    """{likelihood: the single-device and mirrored runs' weight differences and counts}."""
    results = {}
    for likelihood in likelihoods:
        keras.utils.set_random_seed(0)
        probe = tiny_model(likelihood, None, None)
        initial = probe.get_weights()
        initial_trainable = [w.numpy() for w in probe.trainable_weights]
        # Thresholds from the first batch's gradient norm: clip at half of it, skip above 10 times
        # it: the damaged batch, whose pixel values are 20 times too large.
        with tf.GradientTape() as tape:  # the noise of the trained models' first step
            reconstruction, kl = probe.per_image_losses(x[:128], training=True)
            loss = keras.ops.mean(reconstruction + probe.beta * kl)
        norm = float(tf.linalg.global_norm(tape.gradient(loss, probe.trainable_weights)))
        clip, skip = 0.5 * norm, 10.0 * norm
        single = train(tf.distribute.get_strategy(), likelihood, initial, x, clip, skip)
        multi = train(mirrored, likelihood, initial, x, clip, skip)
        change = max(float(np.abs(a - b).max()) for a, b in zip(single[0], initial_trainable))
        difference = max(float(np.abs(a - b).max()) for a, b in zip(single[0], multi[0]))
        relative = difference / max(float(np.abs(a).max()) for a in single[0])
        results[likelihood] = {"replicas": mirrored.num_replicas_in_sync, "first_grad_norm": norm,
                               "max_weight_change": change, "max_weight_difference": difference,
                               "max_relative_difference": relative,
                               "single_loss": single[1], "mirrored_loss": multi[1],
                               "single_skipped": single[2], "mirrored_skipped": multi[2],
                               "single_iterations": single[3], "mirrored_iterations": multi[3],
                               "single_metrics": single[4], "mirrored_metrics": multi[4],
                               "single_val_loss": single[5], "mirrored_val_loss": multi[5]}
    single, shares = replica_noise(mirrored)
    results["noise"] = {"single": single.tolist(), "replicas": [share.tolist() for share in shares]}
    return results

