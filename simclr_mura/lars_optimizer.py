"""LARS, layer-wise adaptive rate scaling (behaviour of google-research/simclr
`tf2/lars_optimizer.py`).

A `tf_keras` legacy optimizer with one slot, "Momentum", so checkpoints carry the key
`<variable>/.OPTIMIZER_SLOT/optimizer/Momentum/...` exactly as the original's do.

Classic momentum (what SimCLR trains with), for a weight w with gradient g:
  g <- g + wd * w                        unless w is excluded from weight decay
  trust = eeta * |w| / |g|               if w is adapted and both norms > 0, else 1
  v <- m * v + lr * trust * g
  w <- w - v                             (Nesterov: w <- w - (m * v + lr * trust * g))
Non-classic momentum:
  v <- m * v + g;  u = v (Nesterov: m * v + g)
  trust = eeta * |w| / |u| (same conditions);  w <- w - lr * trust * u
"""
import re
from typing import Dict, Iterable, Optional, Tuple

import tensorflow as tf
import tf_keras

EETA_DEFAULT = 0.001


def _compile(patterns: Optional[Iterable[str]]):
    return [re.compile(p) for p in (patterns or [])]


class LARSOptimizer(tf_keras.optimizers.legacy.Optimizer):
    """LARS with classic or non-classic momentum, exclusions by regex on the variable name.

    Args:
      learning_rate: a float or a `tf_keras.optimizers.schedules.LearningRateSchedule`.
      momentum: momentum coefficient m.
      use_nesterov: Nesterov-style update.
      weight_decay: decoupled-into-the-gradient weight decay wd.
      exclude_from_weight_decay: regexes; a variable whose `name` (including ':0')
        matches any of them (re.search) gets no weight decay.
      exclude_from_layer_adaptation: regexes for variables that get no trust ratio;
        defaults to `exclude_from_weight_decay`.
      classic_momentum: apply the trust ratio to the gradient (True) or to the momentum
        update (False).
      eeta: LARS coefficient.
      name: optimizer name.
    """

    def __init__(self, learning_rate, momentum=0.9, use_nesterov=False, weight_decay=0.0,
                 exclude_from_weight_decay=None, exclude_from_layer_adaptation=None,
                 classic_momentum=True, eeta=EETA_DEFAULT, name='LARSOptimizer', **kwargs):
        super().__init__(name, **kwargs)
        self._set_hyper('learning_rate', learning_rate)
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.use_nesterov = use_nesterov
        self.classic_momentum = classic_momentum
        self.eeta = eeta
        self.exclude_from_weight_decay = (
            list(exclude_from_weight_decay) if exclude_from_weight_decay else None)
        # The original falls back to the weight-decay list when no list is given.
        if exclude_from_layer_adaptation:
            self.exclude_from_layer_adaptation = list(exclude_from_layer_adaptation)
        else:
            self.exclude_from_layer_adaptation = self.exclude_from_weight_decay
        self._wd_regexes = _compile(self.exclude_from_weight_decay)
        self._adapt_regexes = _compile(self.exclude_from_layer_adaptation)
        self._decisions: Dict[str, Tuple[bool, bool]] = {}

    def applies_weight_decay(self, param_name: str) -> bool:
        """True if weight decay applies to the variable named `param_name`."""
        if not self.weight_decay:
            return False
        return not any(r.search(param_name) for r in self._wd_regexes)

    def applies_layer_adaptation(self, param_name: str) -> bool:
        """True if the trust ratio applies to the variable named `param_name`."""
        return not any(r.search(param_name) for r in self._adapt_regexes)

    def _decision(self, param_name: str) -> Tuple[bool, bool]:
        # Cached so that re-tracing a large model does not repeat the regex work.
        if param_name not in self._decisions:
            self._decisions[param_name] = (self.applies_weight_decay(param_name),
                                           self.applies_layer_adaptation(param_name))
        return self._decisions[param_name]

    def _create_slots(self, var_list):
        for var in var_list:
            self.add_slot(var, 'Momentum')

    def _trust_ratio(self, w, u, dtype):
        """eeta * |w| / |u| when both norms are positive, else 1.

        Each squared norm is one L2Loss kernel (sum(x^2) / 2 in a single pass); tf.norm would
        first write x*x to a temporary as large as the variable, twice per variable and step.
        """
        w_squared = tf.raw_ops.L2Loss(t=w)
        u_squared = tf.raw_ops.L2Loss(t=u)
        both_positive = tf.logical_and(tf.greater(w_squared, 0), tf.greater(u_squared, 0))
        # The halves cancel in the quotient; where a norm is 0 the quotient is unused.
        ratio = tf.cast(self.eeta, dtype) * tf.sqrt(tf.math.divide_no_nan(w_squared, u_squared))
        return tf.where(both_positive, ratio, tf.ones([], dtype))

    def _resource_apply_dense(self, grad, var, apply_state=None):
        if grad is None or var is None:
            return tf.no_op()
        var_device, var_dtype = var.device, var.dtype.base_dtype
        coefficients = ((apply_state or {}).get((var_device, var_dtype))
                        or self._fallback_apply_state(var_device, var_dtype))
        lr = coefficients['lr_t']
        momentum_slot = self.get_slot(var, 'Momentum')
        decay, adapt = self._decision(var.name)
        momentum = tf.cast(self.momentum, var_dtype)

        if decay:
            grad = grad + tf.cast(self.weight_decay, var_dtype) * var
        if self.classic_momentum:
            scaled_lr = lr * self._trust_ratio(var, grad, var_dtype) if adapt else lr
            # One fused kernel: accum = m*accum + g'; var -= accum (Nesterov:
            # var -= g' + m*accum) with lr 1 and g' = scaled_lr*g is exactly the update above.
            return tf.raw_ops.ResourceApplyMomentum(
                var=var.handle, accum=momentum_slot.handle, lr=tf.ones([], var_dtype),
                grad=scaled_lr * grad, momentum=momentum, use_locking=False,
                use_nesterov=self.use_nesterov)

        next_v = momentum * momentum_slot + grad
        update = momentum * next_v + grad if self.use_nesterov else next_v
        scaled_lr = self._trust_ratio(var, update, var_dtype) * lr if adapt else lr
        return tf.group(var.assign_sub(scaled_lr * update, read_value=False),
                        momentum_slot.assign(next_v, read_value=False))

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        # The trust ratio needs the full gradient's norm, so sparse updates are densified.
        dense = tf.math.unsorted_segment_sum(grad, indices, tf.shape(var)[0])
        return self._resource_apply_dense(dense, var, apply_state)

    def get_config(self):
        config = super().get_config()
        config.update({
            'learning_rate': self._serialize_hyperparameter('learning_rate'),
            'momentum': self.momentum,
            'use_nesterov': self.use_nesterov,
            'weight_decay': self.weight_decay,
            'exclude_from_weight_decay': self.exclude_from_weight_decay,
            'exclude_from_layer_adaptation': self.exclude_from_layer_adaptation,
            'classic_momentum': self.classic_momentum,
            'eeta': self.eeta,
        })
        return config
