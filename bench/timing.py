"""Timing shared by the benchmarks: timed windows, and the machine's float32 GEMM rate (the
ceiling that the other figures are compared against)."""

import statistics
import time

import tensorflow as tf


def window_seconds(run_window, warmup, windows):
  """Seconds of each of `windows` calls of run_window, after `warmup` untimed calls.

  run_window must wait for its own results (e.g. call .numpy()), so that each window ends
  when its work does.
  """
  for _ in range(warmup):
    run_window()
  seconds = []
  for _ in range(windows):
    start = time.perf_counter()
    run_window()
    seconds.append(time.perf_counter() - start)
  return seconds


def gemm_gflops(size=2048, reps=10, windows=7):
  """GFLOP/s of float32 [size, size] x [size, size] products: the median of `windows` timed
  calls of `reps` products each, after two untimed calls."""
  # Variables, so that grappler cannot fold the products into constants at trace time.
  a = tf.Variable(tf.random.stateless_normal([size, size], seed=[1, 2]))
  b = tf.Variable(tf.random.stateless_normal([size, size], seed=[3, 4]))

  @tf.function
  def products():
    return tf.add_n([tf.matmul(a, b)[0, 0] for _ in range(reps)])

  seconds = window_seconds(lambda: products().numpy(), warmup=2, windows=windows)
  return reps * 2 * size ** 3 / statistics.median(seconds) / 1e9
