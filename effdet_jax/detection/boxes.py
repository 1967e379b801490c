"""Box geometry on `[ymin, xmin, ymax, xmax]` boxes."""
import jax.numpy as jnp


def area(boxes: jnp.ndarray) -> jnp.ndarray:
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou(boxes1: jnp.ndarray, boxes2: jnp.ndarray) -> jnp.ndarray:
  """`[N, 4]` x `[M, 4]` -> `[N, M]` IoU, 0 where boxes do not intersect."""
  b1 = boxes1[:, None, :]
  b2 = boxes2[None, :, :]
  height = jnp.maximum(jnp.minimum(b1[..., 2], b2[..., 2]) - jnp.maximum(b1[..., 0], b2[..., 0]), 0)
  width = jnp.maximum(jnp.minimum(b1[..., 3], b2[..., 3]) - jnp.maximum(b1[..., 1], b2[..., 1]), 0)
  intersection = height * width
  union = area(boxes1)[:, None] + area(boxes2)[None, :] - intersection
  return jnp.where(intersection > 0, intersection / jnp.where(union > 0, union, 1), 0.0)
