"""AlexNet (Krizhevsky, Sutskever, Hinton, 2012) as a two-tower JAX/Flax training system."""
