"""(being written)"""

# -- discriminator guidance and rejection (issue 5: finetune/discriminator.py, finetune/rejection.py) -------------
from . import discriminator as _dg  # noqa: E402
from . import rejection as _rj  # noqa: E402

DiscriminatorConfig = _dg.DiscriminatorConfig
MixtureLogRatio = _dg.MixtureLogRatio
TrainDiscriminatorCLIConfig = _dg.TrainDiscriminatorCLIConfig
discriminator_loss = _dg.discriminator_loss
generate_samples = _dg.generate_samples
gradient_error = _dg.gradient_error
load_discriminator = _dg.load_discriminator
make_discriminator = _dg.make_discriminator
save_discriminator = _dg.save_discriminator
train_discriminator = _dg.train_discriminator
train_discriminator_cli = _dg.train_discriminator_cli
RejectConfig = _rj.RejectConfig
calibrate = _rj.calibrate
reject_cli = _rj.reject_cli
rejection_sample = _rj.rejection_sample
sample_with_rejection = _rj.sample_with_rejection
# -- end of the discriminator guidance block ----------------------------------------------------------------------

# -- SFT-PG (issue 7: finetune/sft_pg.py) -------------------------------------------------------------------------
from . import sft_pg as _sft  # noqa: E402

SFTPGConfig = _sft.SFTPGConfig
SFTPGResult = _sft.SFTPGResult
finetune_sft_pg = _sft.finetune_sft_pg
make_policy_grid = _sft.make_policy_grid
pg_surrogate = _sft.pg_surrogate
pg_variance = _sft.pg_variance
rollout = _sft.rollout
run_sft_pg = _sft.sft_pg  # the function; ``finetune.sft_pg`` stays the module
# -- end of the SFT-PG block ---------------------------------------------------------------------------------------
