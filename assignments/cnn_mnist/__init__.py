"""CNN on MNIST (TensorFlow's convolutional network tutorial): the first assignment."""
