"""The ground-station runtime: TFLite image hashing with no TensorFlow, Keras or absl."""
