"""How near the GPU's limit the reference U-Net trains under JAX: the train step as Keras's fit runs it
against one jax.jit of the whole step (forward, loss, gradients, Adam) with its state donated and the batch
held on the GPU, in float32 and mixed_bfloat16 at several batch sizes; the FLOPs of a step as XLA counts
them, the share of the card's bfloat16 peak, the memory XLA plans for the step, prediction slices/s, and a
profiler trace of the fastest configuration (open it with TensorBoard's profile plugin or xprof).

    KERAS_BACKEND=jax python benchmarks/gpu_step.py --out $OUT          # on the GPU machine (gpu_session.sh)
    KERAS_BACKEND=jax python benchmarks/gpu_step.py --quick --out /tmp/s # a dry run: tiny model, any machine

The model, loss and optimizer are the train stage's (tumorseg.model.build, Adam), on random slices.
"""

import argparse
import json
import os
import platform
import shutil
import tarfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
REPO = Path(__file__).resolve().parents[1]

import jax
import keras
import numpy as np

from tumorseg.config import load_params
from tumorseg.experiments.recipe import load_recipe
from tumorseg.model.build import build_model, make_loss

PEAK_BF16_TFLOPS = {"H200": 790.0, "H100": 790.0}  # dense bfloat16 matrix peak (the H100 SXM's is the same chip's)


def reference_params(quick: bool):
    overrides = load_recipe("reference", REPO / "recipes", REPO / "params.yaml")
    if quick:
        overrides.update({"data.image_size": 32, "model.filters": 4, "model.depth": 2})
    return load_params(REPO / "params.yaml").replaced(overrides)


def random_batch(batch: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.random((batch, size, size, 1), dtype=np.float32)
    masks = (rng.random((batch, size, size, 1)) > 0.9).astype(np.float32)
    return images, masks


def jit_step(params, batch: int, steps: int, trace_dir: Path | None = None) -> dict:
    """One jax.jit of the whole train step, state donated, batch on the device."""
    model = build_model(params)
    loss_fn = make_loss(params.train.loss)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)

    def compute_loss(trainable, non_trainable, x, y):
        y_pred, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, y_pred), non_trainable

    gradients = jax.value_and_grad(compute_loss, has_aux=True)

    def step(state, x, y):
        trainable, non_trainable, optimizer_vars = state
        (loss, non_trainable), grads = gradients(trainable, non_trainable, x, y)
        trainable, optimizer_vars = optimizer.stateless_apply(optimizer_vars, grads, trainable)
        return (trainable, non_trainable, optimizer_vars), loss

    state = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
             [v.value for v in optimizer.variables])
    x, y = (jax.device_put(array) for array in random_batch(batch, params.data.image_size))
    started = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, x, y).compile()
    compile_s = time.perf_counter() - started
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float((cost or {}).get("flops", float("nan")))
    memory = compiled.memory_analysis()
    planned = sum(getattr(memory, name, 0) for name in ("temp_size_in_bytes", "argument_size_in_bytes",
                                                        "output_size_in_bytes")) if memory else 0
    for _ in range(3):
        state, loss = compiled(state, x, y)
    loss.block_until_ready()
    started = time.perf_counter()
    for _ in range(steps):
        state, loss = compiled(state, x, y)
    loss.block_until_ready()
    seconds = time.perf_counter() - started
    if trace_dir is not None:
        with jax.profiler.trace(str(trace_dir)):
            for _ in range(5):
                state, loss = compiled(state, x, y)
            loss.block_until_ready()
    tflops = flops * steps / seconds / 1e12
    return {"train_slices_per_s": round(batch * steps / seconds, 1), "compile_s": round(compile_s, 1),
            "gflop_per_slice": round(flops / batch / 1e9, 3), "tflop_per_s": round(tflops, 3),
            "planned_memory_mib": round(planned / 2**20), "loss": float(loss)}


def keras_fit(params, batch: int, steps: int) -> dict:
    """model.fit on arrays in host memory, as the train stage runs it (jit-compiled by Keras)."""
    model = build_model(params)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss(params.train.loss))
    images, masks = random_batch(batch, params.data.image_size)
    model.fit(images, masks, batch_size=batch, epochs=1, verbose=0)  # compiles
    images, masks = np.repeat(images, steps, axis=0), np.repeat(masks, steps, axis=0)
    started = time.perf_counter()
    model.fit(images, masks, batch_size=batch, epochs=1, verbose=0, shuffle=False)
    return {"train_slices_per_s": round(len(images) / (time.perf_counter() - started), 1)}


def predict_speed(params, batch: int, steps: int) -> dict:
    model = build_model(params)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    forward = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=False)[0])
    x = jax.device_put(random_batch(batch, params.data.image_size)[0])
    forward(trainable, non_trainable, x).block_until_ready()
    started = time.perf_counter()
    for _ in range(steps):
        out = forward(trainable, non_trainable, x)
    out.block_until_ready()
    return {"predict_slices_per_s": round(batch * steps / (time.perf_counter() - started), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_step_out"))
    parser.add_argument("--batches", type=int, nargs="*", default=[32, 128, 256])
    parser.add_argument("--slices", type=int, default=3200, help="slices timed per configuration")
    parser.add_argument("--quick", action="store_true", help="a tiny model and few steps, to check the script")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = reference_params(args.quick)
    batches = [4, 8] if args.quick else args.batches
    slices = 32 if args.quick else args.slices
    device = jax.devices()[0]
    peak = next((value for name, value in PEAK_BF16_TFLOPS.items() if name in device.device_kind), None)
    print(f"command: KERAS_BACKEND=jax python benchmarks/gpu_step.py{' --quick' if args.quick else ''}\n"
          f"machine: {platform.node()}, {os.cpu_count()} cores; device {device.device_kind}; jax {jax.__version__}, "
          f"keras {keras.__version__}; model: {base.model.filters} filters, depth {base.model.depth}, "
          f"{base.data.image_size}x{base.data.image_size}", flush=True)
    # the most telling first: the command may be cut off by the device's time limit (each row is saved at once)
    configurations = [("mixed_bfloat16", batch) for batch in (batches[1], batches[-1], batches[0])] + \
                     [("float32", batch) for batch in (batches[1], batches[0])]
    results = []
    for precision, batch in dict.fromkeys(configurations):
        keras.mixed_precision.set_global_policy(precision)
        params = base.replaced({"train.precision": precision})
        steps = max(5, slices // batch)
        traced = precision == "mixed_bfloat16" and batch == batches[-1]
        row = {"precision": precision, "batch": batch,
               **jit_step(params, batch, steps, out / "trace" if traced else None),
               **predict_speed(params, batch, steps)}
        if peak and precision == "mixed_bfloat16":
            row["share_of_bf16_peak"] = round(row["tflop_per_s"] / peak, 3)
        if batch == batches[1]:
            row["keras_fit_slices_per_s"] = keras_fit(params, batch, steps)["train_slices_per_s"]
        results.append(row)
        print(json.dumps(row), flush=True)
        (out / "gpu_step.json").write_text(json.dumps({"device": device.device_kind, "rows": results}, indent=1))
    if (out / "trace").is_dir():
        with tarfile.open(out / "trace.tar.gz", "w:gz") as archive:
            archive.add(out / "trace", arcname="trace")
        shutil.rmtree(out / "trace")


if __name__ == "__main__":
    main()
