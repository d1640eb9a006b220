"""The choices the data fields of a config may take, in a module that imports nothing.

The config check (core/config.py) refuses a value outside these before anything runs, and the
tools that never read a dataset (bench, plan, calibrate) import that check: keeping the choices
here, rather than beside the TensorFlow code that acts on them, lets those tools run where
TensorFlow and tensorflow-datasets are not installed. spec.py and resized_dataset.py
import them from here, so each list is defined once.
"""

EVAL_CROPS = ('center', 'ten')
TRAIN_CROPS = ('random_crop', 'random_resized_crop')
MEAN_SUBTRACTIONS = ('constant', 'channel', 'image')
PCA_EIGENS = ('published', 'dataset')
# How resized_dataset.py stores the squares it writes once (config.resized; '' reads the source).
STORAGES = ('jpeg', 'raw')
