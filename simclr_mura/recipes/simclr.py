"""SimCLR: contrastive pretraining, fine-tuning, and linear evaluation (fine-tuning with
`fine_tune_after_block=4`), as google-research/simclr `tf2/run.py` trains them.

Pretraining: two augmented views per image (`data_util.preprocess_view` with colour jitter and
blur), the NT-Xent loss of `objective.add_contrastive_loss` on the projections (temperature,
hidden_norm, negatives gathered across replicas) plus, with `lineareval_while_pretraining`, the
supervised head's cross-entropy on both views (on stopped gradients). Fine-tuning: one view, the
supervised cross-entropy (per-example class weights with `--class_weighting=mura`). Both: the
weight-decay term of `model.add_weight_decay`, LARS / momentum / Adam (`model.build_optimizer`),
warm-up and cosine decay (`schedule.WarmUpAndCosineDecay`), initial weights from `--checkpoint`.
"""
from typing import Dict, List

import tensorflow as tf
from absl import logging

from simclr_mura import checkpoints
from simclr_mura import model as model_lib
from simclr_mura import objective
from simclr_mura import schedule
from simclr_mura.recipes import base


class SimCLR(base.Recipe):
    """--train_mode=pretrain or finetune: the original's ResNet + heads and its training."""

    @property
    def pretraining(self) -> bool:
        return self.config.train_mode == 'pretrain'

    @property
    def uses_blur_seed(self) -> bool:  # The blur of the two pretraining views.
        return self.pretraining

    def architecture(self) -> str:
        c = self.config
        return (f'resnet_depth={c.resnet_depth}, width_multiplier={c.width_multiplier}, '
                f'sk_ratio={c.sk_ratio}, se_ratio={c.se_ratio}, '
                f'proj_head_mode={c.proj_head_mode}, num_proj_layers={c.num_proj_layers}')

    def build_model(self, num_classes: int):
        c = self.config
        model = model_lib.Model(
            num_classes, train_mode=c.train_mode,
            lineareval_while_pretraining=c.lineareval_while_pretraining,
            resnet_depth=c.resnet_depth, width_multiplier=c.width_multiplier,
            sk_ratio=c.sk_ratio, se_ratio=c.se_ratio, image_size=c.image_size,
            global_bn=c.global_bn, batch_norm_decay=c.batch_norm_decay,
            proj_head_mode=c.proj_head_mode, proj_out_dim=c.proj_out_dim,
            num_proj_layers=c.num_proj_layers, ft_proj_selector=c.ft_proj_selector,
            fine_tune_after_block=c.fine_tune_after_block, use_blur=c.use_blur,
            zero_init_logits_layer=c.zero_init_logits_layer)
        # Build now, in cross-replica context, so checkpoints can be checked against the variables.
        model(tf.zeros([1, c.image_size, c.image_size, 3]), training=False)
        return model

    def train_input(self) -> base.TrainInput:
        return base.TrainInput(is_pretrain=self.pretraining,
                               color_jitter_strength=self.config.color_jitter_strength,
                               crop_min_area=self.config.crop_min_area,
                               positive_pairs=self.config.positive_pairs)

    def learning_rate(self, num_train_examples: int):
        c = self.config
        return schedule.WarmUpAndCosineDecay(
            c.learning_rate, num_train_examples, c.train_batch_size, c.learning_rate_scaling,
            c.warmup_epochs, c.train_epochs, c.train_steps)

    def metric_names(self) -> List[str]:
        names = ['train/weight_decay', 'train/total_loss']
        if self.pretraining:
            names += ['train/contrast_loss', 'train/contrast_acc', 'train/contrast_entropy']
        if self.config.has_supervised_head:
            names += ['train/supervised_loss', 'train/supervised_acc']
        return names

    def _supervised_loss(self, labels, weights, logits):
        if self.config.class_weighting_in_use == 'none':
            return objective.add_supervised_loss(labels, logits)
        per_example = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        return tf.reduce_mean(weights * per_example)

    def compute_loss(self, model, images, targets, *, strategy, blur_seed=None):
        c = self.config
        stats = {}
        if blur_seed is None:
            proj, logits = model(images, training=True)
        else:
            proj, logits = model(images, training=True, blur_seed=blur_seed)
        loss = tf.constant(0.0)
        if proj is not None:
            con_loss, logits_con, labels_con = objective.add_contrastive_loss(
                tf.cast(proj, tf.float32), hidden_norm=c.hidden_norm, temperature=c.temperature,
                strategy=strategy)
            loss += con_loss
            stats['train/contrast_loss'] = con_loss
            stats['train/contrast_acc'] = objective.contrastive_accuracy(labels_con, logits_con)
            stats['train/contrast_entropy'] = objective.contrastive_entropy(logits_con)
        if logits is not None:
            labels, weights = targets['label'], targets['weight']
            if self.pretraining:
                # The linear-eval head sees both views.
                labels, weights = tf.concat([labels, labels], 0), tf.concat([weights, weights], 0)
            logits = tf.cast(logits, tf.float32)
            sup_loss = self._supervised_loss(labels, weights, logits)
            loss += sup_loss
            stats['train/supervised_loss'] = sup_loss
            stats['train/supervised_acc'] = objective.supervised_accuracy(labels, logits)
        return base.add_weight_decay(model, c, loss, stats)

    def reference_scalars(self, global_batch: int) -> Dict[str, float]:
        return objective.contrastive_chance_levels(global_batch) if self.pretraining else {}

    def initialize(self, model) -> None:
        c = self.config
        if c.checkpoint:
            checkpoints.initialize_from_checkpoint(model, c.checkpoint, c.zero_init_logits_layer,
                                                   self.architecture())
        elif not self.pretraining:
            logging.warning('Fine-tuning from random initialisation (--allow_random_init).')
