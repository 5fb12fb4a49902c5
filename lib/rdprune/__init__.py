"""rdprune: layer-adaptive neural-network pruning — rate–distortion allocation (Xu et al. 2023),
JointPruning (Liu et al. 2021) and HBGS/HBGTS (Purohit et al. 2024) — as a notebook lab.

    import rdprune as rp
    model = rp.train.pretrained("resnet20", "fashion_mnist")
    calib = rp.data.calibration("fashion_mnist", n=1024)
    curves = rp.rd.curves(model, calib)
    rp.masks.apply(model, rp.allocate("rd", model, 0.9, curves=curves))
"""
from . import allocation, data, masks, models, pipeline, rd, train
from . import filters, hbgs, jointpruning, structured  # JointPruning, HBGS/HBGTS
from . import plots, reproduce, widgets  # notebook lab: figures, CLI runner, explorer
from .allocation import allocate

__all__ = ["allocate", "allocation", "data", "filters", "hbgs", "jointpruning", "masks", "models",
           "pipeline", "plots", "rd", "reproduce", "structured", "train", "widgets"]
__version__ = "0.1.0"
