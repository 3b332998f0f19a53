"""SRe2L's teacher on clean vs DSA-augmented test images (docs/results.md, SRe2L per-crop row).

    .venv/bin/python docs/sweeps/sre2l_teacher_dsa.py [RUN_DIR]   # runs/dd_digits/sre2l_ipc10

Reads the teacher an SRe2L digits run trained (RUN_DIR/teacher) and prints its test accuracy and
mean confidence on the clean test images and on 20 draws of the evaluation's DSA (one op per
batch, as the evaluation networks see their batches), then the same for each op alone.
"""
import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs.dataset_distill import sre2l_digits
from jaxkd.dataset_distill import sre2l as S
from jaxkd.dataset_distill import train as T
from jaxkd.dataset_distill.augment import dsa, parse_strategy
from jaxkd.models import registry

run = sys.argv[1] if len(sys.argv) > 1 else "runs/dd_digits/sre2l_ipc10"
c = sre2l_digits.get_config("ipc=10")
data = T.load_real(c.data.name)
tc = c.sre2l.teacher
teacher = registry.build(tc.name, num_classes=data.num_classes, **tc.kwargs.to_dict())
tdsa = T._dsa(c.experts.dsa)
variables, _ = S.train_teacher(
    f"{run}/teacher", teacher, data.x, data.y, data.x_test, data.y_test,
    num_classes=data.num_classes, epochs=tc.epochs, lr=tc.lr, batch_size=tc.batch_size,
    seed=tc.seed, augment=lambda xb, k: dsa(xb, k, tdsa),
    description={"data": c.data.name, "model": tc.name, "model_kwargs": tc.kwargs.to_dict()})
edsa = T._dsa(c.eval.dsa)
probs = jax.jit(lambda x: jax.nn.softmax(teacher.apply(variables, x, train=False), -1))
def draws(cfg, n=20):
    """The teacher's test accuracy and mean confidence on ``n`` batches augmented by ``cfg``."""
    augment = jax.jit(lambda x, k: dsa(x, k, cfg))
    accs, confs = [], []
    for i in range(n):
        p = probs(augment(data.x_test, jax.random.key(i)))
        accs.append(float(jnp.mean(jnp.argmax(p, -1) == data.y_test)))
        confs.append(float(jnp.mean(jnp.max(p, -1))))
    return np.array(accs), np.array(confs)


p0 = probs(data.x_test)
print(f"clean: accuracy {float(jnp.mean(jnp.argmax(p0, -1) == data.y_test)):.4f}, "
      f"confidence {float(jnp.mean(jnp.max(p0, -1))):.3f}")
for name, cfg in [("DSA, 20 draws", edsa)] + [
        (op, dataclasses.replace(edsa, strategy=op)) for op in parse_strategy(edsa.strategy)]:
    accs, confs = draws(cfg)
    print(f"{name}: accuracy {accs.mean():.4f} +- {accs.std():.4f} (min {accs.min():.3f}), "
          f"confidence {confs.mean():.3f}")
