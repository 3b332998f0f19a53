"""The 2-D goal measured above the metric's noise floor: sliced Wasserstein distances of finished
2-D runs from many samples (default 100,000 against 100,000 fresh true samples, over 3
evaluation draws), where the driver's 10,000-sample evaluation sits on a floor of ~0.024
(docs/sweeps/toy_noise_floor.py) that the teacher's 64-step value is no higher than.

For each run directory (a finished ``experiments.diffusion`` student run on toy data) it
restores the teacher and the student from their checkpoints (nothing trains: a run whose
checkpoints are not final is refused), samples the teacher by Heun at ``--teacher-steps`` and
the student in one step, and prints each swd, the floor (true samples against true samples)
and the ratio the issue's goal reads (student 1-step over teacher 64-step).

    .venv/bin/python docs/sweeps/toy_large_eval.py runs/diffusion/2d/moons/scd_s{0,1}
        [--n 100000] [--draws 3] [--teacher-steps 16 64] [--student-steps 1 2] [--pairs]

``--pairs``: also compare each student sample with the teacher's sample from the same noise
(the largest ``--teacher-steps``): the median and 99th percentile of their distance, the
fraction farther apart than 0.1, and the difference of the two clouds' means (a translation
v alone costs SW2 = |v| / sqrt(2)).

On the ring, each sample set also gets ``metrics.ring_mode_w2``'s ``mode_w2`` (per-mode
Gaussian W2 against the true component; floor ~0.0018 at 10^5), ``mode_weight_tv`` and
``off_mode`` (keys ``<set>/<stat>``; ``floor/<stat>`` for true samples), which separate errors
the ring's swd floor (~0.04 at 10^5, the modes' sampled weights) hides, and the modes' shape:
``radial_std``, ``tangential_std``, ``radial_offset`` (averages over the 8 modes; true 0.0998,
0.0998, 0).

Cost on a core shared with another job: ~5 min per draw for a teacher's 64-step samples (kept
beside the teacher, reused by later calls), ~1 min per draw for each run's student.
"""

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxkd.core import checkpoint as ckpt_lib
from jaxkd.diffusion import metrics, samplers, tasks, toy, train


def _restore(run: str):
    config = ml_collections.ConfigDict(json.load(open(os.path.join(run, "config.json"))))
    task = tasks.get(config.data.name, config.data.kwargs.to_dict(), None)
    if task.num_classes:
        sys.exit(f"{run}: not a 2-D run ({config.data.name})")
    sigma_d = float(config.sigma_d) or train.estimate_sigma_d(task)
    net = train._build_net(config, task)  # pylint: disable=protected-access
    teacher_dir = (os.path.abspath(config.teacher.dir) if config.teacher.dir
                   else os.path.join(run, "teacher"))
    student_dir = os.path.join(run, "checkpoints", "student")
    for d, total in ((teacher_dir, config.teacher.steps), (student_dir, config.student.steps)):
        steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
        if not steps or max(steps) < total:  # train_* would train: refuse instead
            sys.exit(f"{run}: {d} holds steps {steps}, not a finished run of {total}")
    writer = _NoWriter()
    teacher = train.train_teacher(config, task, net, sigma_d, teacher_dir, writer, False)
    student = train.train_student(config, task, net, teacher, sigma_d, student_dir, writer,
                                  False)
    return config, task, net, sigma_d, teacher, student, teacher_dir


# metrics.ring_mode_w2's statistics reported on the ring (per-mode ones averaged over modes).
RING_STATS = ("mode_w2", "mode_weight_tv", "off_mode", "radial_std", "tangential_std",
              "radial_offset")


class _NoWriter:
    def __getattr__(self, name):
        return lambda *a, **k: None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--teacher-steps", type=int, nargs="+", default=[64])
    p.add_argument("--student-steps", type=int, nargs="+", default=[1],
                   help="consistency steps of the student (n > 1 at the config's "
                        "eval.student_times['n'])")
    p.add_argument("--pairs", action="store_true",
                   help="per-sample distances to the teacher's sample from the same noise")
    a = p.parse_args(argv)
    rows, memo = [], {}
    for run in a.runs:
        config, task, net, sigma_d, teacher, student, teacher_dir = _restore(run)
        if config.method in ("progressive", "guided"):
            sys.exit(f"{run}: {config.method} students sample by DDIM rounds: not handled here")
        t0 = samplers.t_max(sigma_d)
        out = {"run": run}
        floor = []
        for d in range(a.draws):
            key = jax.random.key(10_000 + d)
            z = sigma_d * jax.random.normal(jax.random.fold_in(key, 0), (a.n, *task.shape))
            ref = task.dist.sample(jax.random.fold_in(key, 1), a.n)
            k_proj = jax.random.fold_in(key, 2)
            swd = lambda x: float(metrics.sliced_wasserstein(x, ref, k_proj))  # noqa: E731
            ring = isinstance(task.dist, toy.Ring)

            def mode_stats(name, x_, r=None):
                # The ring: per-mode Gaussian W2 and mode-weight TV (metrics.ring_mode_w2);
                # returns them (``r``: already computed, e.g. for a shared teacher file).
                if not ring:
                    return {}
                r = metrics.ring_mode_w2(x_, task.dist) if r is None else r
                for k in RING_STATS:  # (the per-mode shape statistics: their mean over modes)
                    out.setdefault(f"{name}/{k}", []).append(float(np.nanmean(r[k])))  # noqa: B023
                return r
            # Student: one consistency step from the same noise the teacher starts from (and
            # n steps at the config's intermediate times, fresh noise at each).
            for n in a.student_steps:
                times = [t0] + train._intermediate_times(config, n)  # pylint: disable=protected-access
                if len(times) != n:
                    sys.exit(f"{run}: config.eval.student_times has no '{n}'")
                x_n = jax.jit(lambda p_, times=times: samplers.consistency_sample(  # noqa: B023
                    train._velocity(net, p_), z, times, jax.random.fold_in(key, 3),  # noqa: B023
                    sigma_d=sigma_d))(student)
                out.setdefault(f"student_{n}", []).append(swd(x_n))
                mode_stats(f"student_{n}", x_n)
                if n == min(a.student_steps):  # (--pairs compares the fewest steps)
                    x = x_n
            for n in a.teacher_steps:
                # The teacher's samples (minutes each at 10^5) are kept beside it, keyed by its
                # parameters' hash, and shared by every run of that teacher.
                path = os.path.join(teacher_dir.rstrip("/") + "_eval_cache", "large_" + (
                    ckpt_lib.params_hash(teacher)[:16]) + f"_n{a.n}_steps{n}_draw{d}.npy")
                if not os.path.exists(path):
                    x_t = np.asarray(jax.jit(lambda p_, times: samplers.ode_sample(  # noqa: B023
                        train._velocity(net, p_), z, times, sigma_d=sigma_d,  # noqa: B023
                        method="heun"))(teacher, jnp.asarray(samplers.karras_times(n, sigma_d))))
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    np.save(path + ".tmp.npy", x_t)
                    os.replace(path + ".tmp.npy", path)
                xt = np.load(path)
                # (an XLA sort of 256 x 10^5 values: ~20 s a call; the ring's statistics about
                # as long: both computed once per file and shared by the runs of a teacher.)
                if path not in memo:
                    memo[path] = swd(xt), mode_stats(f"teacher_{n}", xt)
                else:
                    mode_stats(f"teacher_{n}", xt, memo[path][1])
                out.setdefault(f"teacher_{n}", []).append(memo[path][0])
                if a.pairs and n == max(a.teacher_steps):
                    xs = np.asarray(x)
                    dist = np.linalg.norm(xs - xt, axis=-1)
                    shift = xs.mean(0) - xt.mean(0)
                    for k, v in (("pair_median", np.median(dist)),
                                 ("pair_q99", np.quantile(dist, 0.99)),
                                 ("pair_frac_over_0.1", np.mean(dist > 0.1)),
                                 ("mean_shift_norm", np.linalg.norm(shift))):
                        out.setdefault(k, []).append(float(v))
            fk = (config.data.name, json.dumps(config.data.kwargs.to_dict(), sort_keys=True), d)
            if fk not in memo:
                true = task.dist.sample(jax.random.fold_in(key, 4), a.n)
                memo[fk] = swd(true), mode_stats("floor", true)
            else:
                mode_stats("floor", None, memo[fk][1])
            floor.append(memo[fk][0])
        out["floor"] = floor
        rows.append(out)
        last = max(a.teacher_steps)
        print(f"{run}: " + ", ".join(f"{k} {np.mean(v):.4f} +- {np.std(v):.4f}"
                                     for k, v in out.items() if k != "run")
              + "".join(f"; student_{n} / teacher_{last} = "
                        f"{np.mean(out[f'student_{n}']) / np.mean(out[f'teacher_{last}']):.2f}"
                        for n in a.student_steps), flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
