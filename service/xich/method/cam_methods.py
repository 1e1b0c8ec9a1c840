"""The attribution methods an audit can use (eq. 3–4 of the XICH paper with another map than Grad-CAM's).

Names only, no torch: the settings check (``config.py``) reads them without loading a model.
"""

from __future__ import annotations

# --method name → pytorch-grad-cam 1.5.7 class (the names of the library's own cam.py example).
# Left out: RandomCAM (random weights by design), and FinerCAM, RefineCAM, SESS and SegEigenCAM, which wrap
# another method or take other targets.
CAM_METHODS = {
    "gradcam": "GradCAM", "hirescam": "HiResCAM", "gradcamelementwise": "GradCAMElementWise",
    "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM", "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM", "kpcacam": "KPCA_CAM", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM",
    "fullgrad": "FullGrad", "shapleycam": "ShapleyCAM", "fem": "FEM",
}
FAST_METHODS = ("gradcam", "hirescam")  # equal to gap_linear_cam for a GAP → Linear head (tests/method/test_gradcam.py)
# Not tried on a probe mosaic before the audit (engine/runtime.py): Grad-CAM, whose gradient the target layer
# search already follows, and the two whose one call costs a forward pass per channel of the target layer
# (minutes for a torchvision ViT on a CPU), which ran on every model tried here.
UNPROBED_METHODS = ("gradcam", "scorecam", "ablationcam")
