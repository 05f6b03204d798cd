"""A four-stage DVC pipeline that trains a NumPy neural network on MNIST."""
