"""Reading HDF5 files from elsewhere (figshare slices, cvind.mat, a model's weights): only what is stored in
the file itself."""

import h5py

from tumorseg.errors import ProjectError


def stored_here(path, parent: h5py.Group, name: str, error: type[ProjectError], what: str = "a figshare slice"):
    """The object `name` of `parent`; `error` unless it is stored in this file itself: no external or soft
    link, and for a dataset no external storage and no virtual (mapped) data, any of which could copy another
    local file into the outputs. `what` names the kind of file expected."""
    link = parent.get(name, getlink=True)
    if not isinstance(link, h5py.HardLink):
        raise error(f"{path}: field '{name}' is a {type(link).__name__} to data elsewhere; {what} holds its "
                    "data itself: refusing to follow it (use the original file).")
    item = parent[name]
    if isinstance(item, h5py.Dataset) and (item.external or item.is_virtual):
        kind = "external storage" if item.external else "a virtual dataset"
        raise error(f"{path}: field '{name}' uses {kind} (data in other files); {what} holds its data itself: "
                    "refusing to read it (use the original file).")
    return item
