"""The machine's float32 GEMM rate, the ceiling that the other benchmarks compare against."""

import statistics
import time

import tensorflow as tf


def gflops(size=2048, reps=10, windows=7):
  """GFLOP/s of float32 [size, size] x [size, size] products: the median of `windows` timed
  calls of `reps` products each, after two untimed calls."""
  # Variables, so that grappler cannot fold the products into constants at trace time.
  a = tf.Variable(tf.random.stateless_normal([size, size], seed=[1, 2]))
  b = tf.Variable(tf.random.stateless_normal([size, size], seed=[3, 4]))

  @tf.function
  def products():
    return tf.add_n([tf.matmul(a, b)[0, 0] for _ in range(reps)])

  for _ in range(2):
    products().numpy()
  seconds = []
  for _ in range(windows):
    start = time.perf_counter()
    products().numpy()
    seconds.append(time.perf_counter() - start)
  return reps * 2 * size ** 3 / statistics.median(seconds) / 1e9
