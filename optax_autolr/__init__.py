"""optax_autolr: automated learning-rate schedules for Optax.

* :func:`autowu`: AutoWU (Kim et al. 2021), an LR warmup that ends when a
  Gaussian-process-smoothed loss curve has confidently passed its minimum,
  followed by a decay to zero; a stateful, jit-compiled Optax transformation.
* :func:`adamp`: AdamP (Heo et al. 2021) as an Optax transformation, and
  :func:`autowu_adamp`, the AutoWU authors' optimizer setup.
* :mod:`optax_autolr.gp`: the closed-form GP used by its minimum test.
* :mod:`optax_autolr.scaling`: batch-size-aware LR scaling (Li et al. 2024,
  McCandlish et al. 2018) and an in-step gradient-noise-scale estimator.
"""

from optax_autolr import gp
from optax_autolr._adamp import adamp
from optax_autolr._adamp import scale_by_adamp
from optax_autolr._adamp import scale_invariance_report
from optax_autolr._adamp import ScaleByAdamPState
from optax_autolr import scaling
from optax_autolr import window
from optax_autolr._autowu import AUTHORS
from optax_autolr._autowu import AutoWUState
from optax_autolr._autowu import autowu
from optax_autolr._autowu import autowu_adamp
from optax_autolr._autowu import autowu_adamw
from optax_autolr._autowu import autowu_lamb
from optax_autolr._autowu import check_restored
from optax_autolr._autowu import CONFIDENT_MINIMUM
from optax_autolr._autowu import DECAY
from optax_autolr._autowu import DEFAULTS
from optax_autolr._autowu import default_test_every
from optax_autolr._autowu import DIVERGED
from optax_autolr._autowu import find_autowu_state
from optax_autolr._autowu import FLOAT_CONSTANTS
from optax_autolr._autowu import find_autowu_states
from optax_autolr._autowu import get_lr
from optax_autolr._autowu import get_metrics
from optax_autolr._autowu import get_phase
from optax_autolr._autowu import get_probability
from optax_autolr._autowu import get_switch
from optax_autolr._autowu import loss_curve_posterior
from optax_autolr._autowu import lr_hyperparams
from optax_autolr._autowu import knee_outcome
from optax_autolr._autowu import INT_CONSTANTS
from optax_autolr._autowu import KNEE_PASSED
from optax_autolr._autowu import MAX_WARMUP
from optax_autolr._autowu import NON_FINITE
from optax_autolr._autowu import NOT_SWITCHED
from optax_autolr._autowu import STATS
from optax_autolr._autowu import SWITCH_REASONS
from optax_autolr._autowu import minimum_test_outcome
from optax_autolr._autowu import WARMUP
from optax_autolr.scaling import adam_optimal_lr
from optax_autolr.scaling import b_noise_from_steps
from optax_autolr.scaling import b_simple
from optax_autolr.scaling import fit_sgd_form
from optax_autolr.scaling import fit_surge
from optax_autolr.scaling import noise_scale_init
from optax_autolr.scaling import noise_scale_update
from optax_autolr.scaling import noise_scale_value_and_grad
from optax_autolr.scaling import NoiseScaleState
from optax_autolr.scaling import NoiseStats
from optax_autolr.scaling import ScalingFit
from optax_autolr.scaling import sgd_optimal_lr
from optax_autolr.scaling import StepsFit
from optax_autolr.scaling import track_noise_scale
from optax_autolr.scaling import transfer_lr
from optax_autolr.window import LossWindow

__version__ = '0.3.0'

__all__ = [
    'AUTHORS', 'AutoWUState', 'CONFIDENT_MINIMUM', 'DECAY', 'DEFAULTS', 'DIVERGED', 'FLOAT_CONSTANTS',
    'INT_CONSTANTS', 'LossWindow', 'KNEE_PASSED', 'MAX_WARMUP', 'NON_FINITE', 'NOT_SWITCHED', 'STATS', 'SWITCH_REASONS', 'WARMUP',
    'adamp', 'autowu', 'autowu_adamp', 'autowu_adamw', 'autowu_lamb', 'check_restored',
    'default_test_every', 'find_autowu_states', 'get_metrics', 'knee_outcome',
    'minimum_test_outcome', 'scale_by_adamp',
    'scale_invariance_report', 'ScaleByAdamPState', 'find_autowu_state', 'get_lr', 'get_phase',
    'get_probability', 'get_switch', 'gp', 'loss_curve_posterior',
    'lr_hyperparams', 'window',
    'adam_optimal_lr', 'b_noise_from_steps', 'b_simple', 'fit_sgd_form',
    'fit_surge', 'noise_scale_init', 'noise_scale_update',
    'noise_scale_value_and_grad', 'NoiseScaleState', 'NoiseStats',
    'ScalingFit', 'scaling', 'sgd_optimal_lr', 'StepsFit',
    'track_noise_scale', 'transfer_lr',
]
