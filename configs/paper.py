"""The paper's recipe on ImageNet (ILSVRC-2012), as in section 5.

    python -m alexnet_jax.main --config=configs/paper.py --workdir=/path/to/workdir \
        --config.data_dir=/path/to/tensorflow_datasets \
        --config.manual_dir=/path/holding/ILSVRC2012_img_train.tar+ILSVRC2012_img_val.tar

Batch 128, SGD with momentum 0.9 and weight decay 0.0005 in the paper's form, learning rate
0.01, about 90 epochs, two towers on two devices. The paper reports 40.7% top-1 / 18.2% top-5
error on the ILSVRC-2012 validation set for one network (37.5% / 17.0% on ILSVRC-2010 test with
10-patch testing); Caffe's reproduction reaches 42.9% / 19.8% with a centre crop.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.dataset = 'imagenet2012'
  # Section 2 and 4.1: the mean image and the RGB PCA of the whole training set (computed once,
  # cached beside the dataset), colour noise with std 0.1, random 224 crops and their mirrors;
  # centre-crop evaluation during training, the ten patches for the final evaluation.
  c.mean_subtraction = 'image'
  c.pca_lighting_std = 0.1
  c.pca_eigen = 'dataset'
  c.stats_num_images = -1
  c.train_crop = 'random_crop'
  c.eval_crops = 'center'
  c.final_eval_crops = 'ten'
  c.model.num_classes = 1000
  c.batch_size = 128
  c.eval_batch_size = 250
  c.learning_rate = 0.01
  # Divide by 10 when the validation error stops improving (evaluated once per epoch), 3 times.
  c.lr_schedule.kind = 'plateau'
  c.lr_schedule.factor = 0.1
  c.lr_schedule.max_drops = 3
  c.num_epochs = 90.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  return c
