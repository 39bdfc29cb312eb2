"""SimCLR losses and their training metrics (behaviour of google-research/simclr `tf2/objective.py`
and the pretraining/supervised parts of `tf2/metrics.py`).

The contrastive loss is NT-Xent summed over both directions: for every local image the
cross-entropy of its view-1 embedding against [all view-2, all other view-1] plus the same
with the views swapped, averaged over the local batch. With a `tf.distribute` strategy the
negatives come from every replica.
"""
import math
from typing import Dict, Optional, Tuple

import tensorflow as tf

LARGE_NUM = 1e9  # Subtracted from self-similarity logits so an embedding is never its own negative.


def add_supervised_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean over the local batch of softmax cross-entropy with one-hot `labels`."""
    losses = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(losses)


def _gather_across_replicas(hidden1: tf.Tensor, hidden2: tf.Tensor, strategy
                            ) -> Tuple[tf.Tensor, tf.Tensor]:
    """Concatenates each view's (B, D) rows from every replica, in replica order -> (N, D) each.

    Must run in a replica context. The all-gather is differentiable: the gradient that
    reaches a replica's rows is the sum over replicas of the upstream gradients, so the
    negatives of other replicas contribute to this replica's gradient, as in the original
    (which builds the same concatenation with scatter_nd + all_reduce(SUM)).
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync != strategy.num_replicas_in_sync:
        raise ValueError(
            'add_contrastive_loss(strategy=...) must be called inside strategy.run '
            '(a replica context) so that negatives can be gathered across replicas.')
    if ctx.num_replicas_in_sync == 1:
        return hidden1, hidden2
    # One collective for both views: (2, B, D) gathered along the batch axis -> (2, N, D).
    gathered = ctx.all_gather(tf.stack([hidden1, hidden2]), axis=1)
    return gathered[0], gathered[1]


def contrastive_logits_and_loss(hidden1, hidden2, hidden1_large, hidden2_large,
                                replica_id, temperature):
    """The loss of the local rows given the (possibly cross-replica) gathered views.

    `hidden1`, `hidden2`: (B, D) local views; `hidden1_large`, `hidden2_large`: (N, D),
    the concatenation over replicas (N = B·R); local row i has global index
    `replica_id·B + i`. Returns (loss, logits_ab (B, N), labels (B, 2N)).
    """
    batch_size = tf.shape(hidden1)[0]
    enlarged = tf.shape(hidden1_large)[0]
    global_ids = tf.range(batch_size) + tf.cast(replica_id, tf.int32) * batch_size
    labels = tf.one_hot(global_ids, enlarged * 2)
    masks = tf.one_hot(global_ids, enlarged)

    logits_aa = tf.matmul(hidden1, hidden1_large, transpose_b=True) / temperature
    logits_aa = logits_aa - masks * LARGE_NUM
    logits_bb = tf.matmul(hidden2, hidden2_large, transpose_b=True) / temperature
    logits_bb = logits_bb - masks * LARGE_NUM
    logits_ab = tf.matmul(hidden1, hidden2_large, transpose_b=True) / temperature
    logits_ba = tf.matmul(hidden2, hidden1_large, transpose_b=True) / temperature

    loss_a = tf.nn.softmax_cross_entropy_with_logits(
        labels=labels, logits=tf.concat([logits_ab, logits_aa], 1))
    loss_b = tf.nn.softmax_cross_entropy_with_logits(
        labels=labels, logits=tf.concat([logits_ba, logits_bb], 1))
    loss = tf.reduce_mean(loss_a + loss_b)
    return loss, logits_ab, labels


def add_contrastive_loss(hidden: tf.Tensor, hidden_norm: bool = True, temperature: float = 1.0,
                         strategy: Optional[tf.distribute.Strategy] = None
                         ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """NT-Xent contrastive loss of SimCLR.

    Args:
      hidden: (2B, D) embeddings; rows [0, B) are view 1, rows [B, 2B) view 2 of the same images.
      hidden_norm: l2-normalise the rows first.
      temperature: softmax temperature.
      strategy: if given, negatives are gathered from all replicas; call inside `strategy.run`.

    Returns:
      (loss, logits_ab, labels): the scalar loss (mean over the B local rows of both
      directions' cross-entropies), the (B, N) view-1 vs global view-2 logits and the
      (B, 2N) one-hot targets, N = B x replicas.
    """
    if hidden_norm:
        hidden = tf.math.l2_normalize(hidden, -1)
    hidden1, hidden2 = tf.split(hidden, 2, 0)

    if strategy is not None:
        hidden1_large, hidden2_large = _gather_across_replicas(hidden1, hidden2, strategy)
        replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
    else:
        hidden1_large, hidden2_large, replica_id = hidden1, hidden2, 0
    return contrastive_logits_and_loss(hidden1, hidden2, hidden1_large, hidden2_large,
                                       replica_id, temperature)


def contrastive_accuracy(labels: tf.Tensor, logits_ab: tf.Tensor) -> tf.Tensor:
    """Fraction of local rows whose positive (argmax of labels) has the largest cross-view logit."""
    hits = tf.equal(tf.argmax(labels, 1), tf.argmax(logits_ab, axis=1))
    return tf.reduce_mean(tf.cast(hits, tf.float32))


def contrastive_entropy(logits_ab: tf.Tensor) -> tf.Tensor:
    """Mean over rows of -sum p log(p + 1e-8), p = softmax(logits_ab)."""
    prob = tf.nn.softmax(logits_ab)
    return -tf.reduce_mean(tf.reduce_sum(prob * tf.math.log(prob + 1e-8), -1))


def supervised_accuracy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Fraction of rows where argmax(labels) == argmax(logits)."""
    hits = tf.equal(tf.argmax(labels, 1), tf.argmax(logits, axis=1))
    return tf.reduce_mean(tf.cast(hits, tf.float32))


def contrastive_chance_levels(global_batch_size: int) -> Dict[str, float]:
    """What `add_contrastive_loss` and `contrastive_accuracy` give when the embeddings carry no
    information, for a global batch of N images. The loss picks each view's positive among 2N - 1
    candidates (the other view's N plus the own view's N - 1), summed over both directions:
    2 ln(2N - 1). The accuracy, as the original's, looks at the cross-view block only (N
    candidates): 1 / N. A pretraining run whose curves stay there is not learning the task.
    """
    if global_batch_size < 1:
        raise ValueError(f'global_batch_size must be >= 1, got {global_batch_size}')
    return {'train/contrast_loss_chance': 2.0 * math.log(2 * global_batch_size - 1),
            'train/contrast_acc_chance': 1.0 / global_batch_size}
