"""The one tf.data pipeline of shuffled batches, for the VAE's training and the feature classifier."""
import tensorflow as tf


def shuffled_batches(arrays, batch_size, seed, first_epoch, epochs, done_batches=0, drop_remainder=False):
    """Batches of `arrays` (a tuple of arrays with the same first axis; batches are tuples, or the
    array itself for one) for epochs [first_epoch, epochs), without the first `done_batches` of
    first_epoch (trained before a mid-epoch checkpoint), and with drop_remainder without each
    epoch's last, smaller batch. Each epoch is a permutation keyed by (seed, epoch), so a resumed
    run sees the batches an uninterrupted one would."""
    tensors = tuple(tf.constant(a) for a in arrays)
    n = len(arrays[0])

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=drop_remainder)
        return batches.skip(tf.where(epoch == first_epoch, tf.cast(done_batches, tf.int64), 0))

    def gather(idx):  # whole batches from one tensor: far cheaper than slicing images one by one
        batch = tuple(tf.gather(t, idx) for t in tensors)
        return batch if len(batch) > 1 else batch[0]

    ds = tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch_batches)
    return ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
