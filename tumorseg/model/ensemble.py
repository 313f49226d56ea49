"""An ensemble of trained models as one Keras model, and a compact copy of its weights for release.

The ensemble's outputs are the mean of its members' (mask and, with the type head, type probabilities), so
everything that runs one model runs it unchanged: tumorseg.model.probabilities.predict (its flips then
average each member's TTA too: the mean commutes with them), the segmenter, predict and the ONNX export.
"""

import io
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np

from tumorseg.atomic import atomic_file
from tumorseg.errors import InputError
from tumorseg.model.outputs import MASK_OUTPUT, TYPE_OUTPUT, has_type_head

WEIGHTS_MEMBER = "model.weights.h5"  # the weights inside a .keras archive


def ensemble(members: list[keras.Model]) -> keras.Model:
    """One model whose outputs are the mean of the members' (each of the same input size and outputs)."""
    if len(members) < 2:
        raise InputError(f"an ensemble needs at least two models, got {len(members)}.")
    shapes = {member.input_shape for member in members}
    typed = {has_type_head(member) for member in members}
    if len(shapes) > 1 or len(typed) > 1:
        raise InputError(f"the members differ in input ({sorted(map(str, shapes))}) or in the type head: an "
                         "ensemble averages models of one recipe.")
    image = keras.Input(members[0].input_shape[1:], name="image")
    found = []
    for number, member in enumerate(members, start=1):
        member.name = f"member_{number}"  # nested models need distinct names
        outputs = member(image)
        found.append(outputs if isinstance(outputs, dict) else {MASK_OUTPUT: outputs})
    averaged = {name: keras.layers.Average(name=name)([outputs[name] for outputs in found])
                for name in found[0]}
    outputs = averaged if typed == {True} else averaged[MASK_OUTPUT]
    return keras.Model(image, outputs, name=f"ensemble_of_{len(members)}")


def save_half_precision(model: keras.Model, path: str | Path) -> None:
    """Save `model` as a .keras archive whose float32 weights are stored as float16 (half the bytes; Keras
    loads them back into float32 variables). Written atomically."""
    buffer = io.BytesIO()
    with atomic_file(path) as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        with h5py.File(io.BytesIO(members[WEIGHTS_MEMBER]), "r") as full, h5py.File(buffer, "w") as half:
            for key, value in full.attrs.items():
                half.attrs[key] = value

            def copy(name, item):
                if isinstance(item, h5py.Group):
                    group = half.require_group(name)
                    for key, value in item.attrs.items():
                        group.attrs[key] = value
                    return
                data = item[()]
                half.create_dataset(name, data=data.astype(np.float16) if data.dtype == np.float32 else data)

            full.visititems(copy)
        members[WEIGHTS_MEMBER] = buffer.getvalue()
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
